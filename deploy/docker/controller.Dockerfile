# EdgeFleet controller: devices' gRPC (50051), operator API (50052), Prometheus /metrics (9465).
# Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t edgefleet/controller .
# The wheel is built from this checkout in a first stage; the runtime image holds only it.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY controller ./controller
COPY proto ./proto
RUN pip install --no-cache-dir build==1.2.2 && python -m build --wheel --outdir /dist

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    EDGEFLEET_LOG_JSON=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=wheel /dist/*.whl /tmp/
RUN pip install /tmp/*.whl && rm /tmp/*.whl \
    && useradd --system --uid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet \
    && install -d -o edgefleet /keys  # keys init writes trusted.pem here (a shared volume)
USER edgefleet
WORKDIR /var/lib/edgefleet
EXPOSE 50051 50052 9465
# Alive = /metrics answers (it is served by the controller process itself).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/metrics', timeout=2)"]
ENTRYPOINT ["edge-controller", "run"]
CMD ["--data-dir", "/var/lib/edgefleet", "--grpc", "0.0.0.0:50051", "--api", "0.0.0.0:50052", \
     "--metrics-port", "9465", "--metrics-host", "0.0.0.0"]
