# The compose stack's Python: a venv at /opt/edgefleet with EdgeFleet's dependencies, installed
# from wheels downloaded beforehand (nothing is fetched at build time). Built by
# deploy/docker/stack-images.sh; the context holds requirements.txt and wheels/. Two stages, so
# the wheels themselves are in no layer of the image.
FROM edgefleet/base:bookworm AS install
LABEL dev.edgefleet.stage=install
COPY requirements.txt /tmp/requirements.txt
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install -q --no-cache-dir --no-compile --no-index --no-deps \
       --find-links /tmp/wheels -r /tmp/requirements.txt \
    && /opt/edgefleet/bin/pip uninstall -q -y pip

FROM edgefleet/base:bookworm
COPY --from=install /opt/edgefleet /opt/edgefleet
