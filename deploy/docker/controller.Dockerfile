# EdgeFleet controller: devices' gRPC (50051), operator API (50052), Prometheus /metrics (9465).
# Built from local files only, nothing pulled, by deploy/docker/stack-images.sh: the context is
# EdgeFleet's code (src/edgefleet, copied from this checkout), DEPS the dependencies' image
# (edgefleet/stack-deps: the runtime's Debian base + a venv from cached wheels).
ARG DEPS=edgefleet/stack-deps:latest
FROM ${DEPS}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEFLEET_LOG_JSON=1 \
    PATH=/opt/edgefleet/bin:/usr/local/bin:/usr/bin:/bin
COPY src /opt/edgefleet/src
# the code on the venv's path, the three commands pyproject.toml names as pip writes them (the
# __main__ guard: the sandbox's forkserver imports the main module again; no wheel to build), an
# unprivileged user (minbase has no useradd), /keys for keys init's trusted.pem (a shared volume)
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
EXPOSE 50051 50052 9465
# Alive = /metrics answers (it is served by the controller process itself).
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/metrics', timeout=2)"]
ENTRYPOINT ["edge-controller", "run"]
CMD ["--data-dir", "/var/lib/edgefleet", "--grpc", "0.0.0.0:50051", "--api", "0.0.0.0:50052", \
     "--metrics-port", "9465", "--metrics-host", "0.0.0.0"]
