# The compose stack's third-party services, from Debian bookworm's own packages: Mosquitto (the
# broker), Prometheus and docker-registry (the OCI registry container releases are pulled
# from). Built by deploy/docker/stack-images.sh on the runtime's base (a debootstrap root
# filesystem, deploy/docker/runtime-image.sh); compose picks the program per service.
FROM edgefleet/base:bookworm
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       mosquitto prometheus docker-registry \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# one unprivileged user owns every service's data (named volumes start with these owners)
RUN useradd --system --uid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet \
    && install -d -o edgefleet /mosquitto/data /prometheus /var/lib/registry
USER edgefleet
