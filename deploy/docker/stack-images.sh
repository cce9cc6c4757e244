#!/usr/bin/env bash
# Build the images of the compose stack (deploy/compose.yaml) from local files only, no pull:
#   edgefleet/services:dev      edgefleet/base:bookworm + Debian's mosquitto, prometheus and
#                               docker-registry (apt from the Debian mirror the base came from)
#   edgefleet/stack-deps:PINS   + a venv at /opt/edgefleet with EdgeFleet's dependencies, from
#                               wheels downloaded beforehand (cached like the runtime's)
#   edgefleet/controller:dev    + EdgeFleet's code from this checkout: edge-controller, edgectl
#   edgefleet/agent:dev         + the same code: edge-agent (a simulated device)
# edgefleet/base:bookworm is the runtime's base (deploy/docker/runtime-image.sh, run first).
# Every slow part is cached ($EDGEFLEET_CACHE, default /var/cache/edgefleet, and dockerd's layer
# cache), so a second run with unchanged code takes seconds.
#   usage: deploy/docker/stack-images.sh [PYTHON]   (PYTHON: the venv whose pins the images use)
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${1:-.venv/bin/python}"
cache="${EDGEFLEET_CACHE:-/var/cache/edgefleet}"
mkdir -p "$cache"
started=$(date +%s)
build() {
  DOCKER_BUILDKIT=0 docker build -q "$@" >/dev/null \
    2> >(grep -v -e DEPRECATED -e BuildKit -e buildx -e environment-variable -e '^ *$' >&2)
}

bash deploy/docker/runtime-image.sh "$py"  # edgefleet/base:bookworm (cached)

# 1. the broker, Prometheus and the registry, from Debian's packages
build -t edgefleet/services:dev -f deploy/docker/services.Dockerfile deploy/docker

# 2. the dependencies, pinned to what this checkout's venv runs: the closure of edgefleet with
#    the extras the controller and the (in-process) agents need
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
"$py" - >"$ctx/requirements.txt" <<'PY'
from importlib.metadata import distribution
from packaging.requirements import Requirement
EXTRAS = ("controller", "cli", "cpu")
seen, todo = {}, ["edgefleet"]
while todo:
    top = todo[-1] == "edgefleet"
    dist = distribution(todo.pop())
    for spec in dist.requires or []:
        req = Requirement(spec)
        extras = EXTRAS if top else ("",)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = req.name.lower().replace("_", "-")
        if name != "edgefleet" and name not in seen:
            seen[name] = distribution(name).version
            todo.append(name)
for name in sorted(seen):
    print(f"{name}=={seen[name]}")
PY
pins=$(sha256sum "$ctx/requirements.txt" | cut -c1-12)
if ! docker image inspect "edgefleet/stack-deps:$pins" >/dev/null 2>&1; then
  wheels="$cache/stack-wheels-$pins"
  if [ ! -f "$wheels/.complete" ]; then
    echo "stack-images: downloading $(wc -l <"$ctx/requirements.txt") wheels"
    mkdir -p "$wheels"
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
      -d "$wheels" -r "$ctx/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    touch "$wheels/.complete"
  fi
  cp -r "$wheels" "$ctx/wheels"
  echo "stack-images: building edgefleet/stack-deps:$pins"
  build -t "edgefleet/stack-deps:$pins" -f deploy/docker/stack-deps.Dockerfile "$ctx"
  rm -rf "$ctx/wheels"
  docker image prune -f --filter label=dev.edgefleet.stage=install >/dev/null
fi

# 3. EdgeFleet's code (rebuilt each run; the same code gives the same layer)
mkdir -p "$ctx/src/edgefleet"
cp -r agent/edgefleet/agent controller/edgefleet/controller controller/edgefleet/edgectl \
  controller/edgefleet/demo proto/edgefleet/common proto/edgefleet/v1 "$ctx/src/edgefleet/"
find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.proto' -exec rm -f {} +
find "$ctx/src" -exec touch -h -d @0 {} +
build -t edgefleet/controller:dev --build-arg "DEPS=edgefleet/stack-deps:$pins" \
  -f deploy/docker/controller.Dockerfile "$ctx"
build -t edgefleet/agent:dev --build-arg "DEPS=edgefleet/stack-deps:$pins" \
  -f deploy/docker/agent.Dockerfile "$ctx"
echo "stack-images: edgefleet/{services,controller,agent}:dev ready ($(( $(date +%s) - started ))s)"
