# EdgeFleet agent (a simulated device): Predict gRPC (50061), Prometheus /metrics (9464, bound
# on the Predict host). Built from local files only, nothing pulled, by
# deploy/docker/stack-images.sh: the context is EdgeFleet's code (src/edgefleet, copied from
# this checkout), DEPS the dependencies' image (edgefleet/stack-deps). The first layers are the
# controller image's own, so the two share them.
ARG DEPS=edgefleet/stack-deps:latest
FROM ${DEPS}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEFLEET_LOG_JSON=1 \
    PATH=/opt/edgefleet/bin:/usr/local/bin:/usr/bin:/bin
COPY src /opt/edgefleet/src
RUN echo /opt/edgefleet/src > /opt/edgefleet/lib/python3.11/site-packages/edgefleet.pth \
    && for cmd in edgectl=edgefleet.edgectl.app edge-controller=edgefleet.controller.cli \
                  edge-agent=edgefleet.agent.cli; do \
         printf '#!/opt/edgefleet/bin/python\nimport sys\nfrom %s import main\nif __name__ == "__main__":\n    sys.exit(main())\n' \
           "${cmd#*=}" >"/opt/edgefleet/bin/${cmd%%=*}" && chmod 755 "/opt/edgefleet/bin/${cmd%%=*}"; \
       done \
    && echo "edgefleet:x:10001:10001::/var/lib/edgefleet:/usr/sbin/nologin" >>/etc/passwd \
    && echo "edgefleet:x:10001:" >>/etc/group \
    && install -d -o 10001 -g 10001 /var/lib/edgefleet /keys
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
