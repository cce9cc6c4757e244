# EdgeFleet agent (a simulated device, or a device that runs containers): Predict gRPC (50061),
# Prometheus /metrics (9464, bound on the Predict host).
# Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t edgefleet/agent .
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
    && useradd --system --uid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet
USER edgefleet
WORKDIR /var/lib/edgefleet
EXPOSE 50061 9464
# Alive = /metrics answers. (grpc.health.v1 on 50061 says SERVING only once a model is
# active, which is readiness, not liveness: a device waiting for its first release is fine.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=2)"]
ENTRYPOINT ["edge-agent", "run"]
CMD ["--data-dir", "/var/lib/edgefleet", "--predict-listen", "0.0.0.0:50061", \
     "--metrics-port", "9464"]
