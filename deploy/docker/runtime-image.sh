#!/usr/bin/env bash
# Build the container runtime's images from local files only (no registry is reachable):
#   edgefleet/base:bookworm    Debian bookworm minbase + python3 (debootstrap, `docker import`)
#   edgefleet/runtime-deps:VER  + a venv at /opt/edgefleet with the model server's wheels
#   edgefleet/runtime:latest    + EdgeFleet's model server code (`python -m edgefleet.agent.modelserver`)
# A container release is edgefleet/runtime:latest plus one layer with the model and golden data,
# so two releases share every layer but the last.
#
# Slow parts are cached where the machine keeps them ($EDGEFLEET_CACHE, default
# /var/cache/edgefleet): the debootstrap root filesystem tarball and the wheels; the images stay
# in dockerd. Each is made only when missing; the code layer is rebuilt each run (Docker's own
# layer cache makes that instant when the code did not change).
#   usage: deploy/docker/runtime-image.sh [PYTHON]   (PYTHON: the venv whose pins the image uses)
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${1:-.venv/bin/python}"
cache="${EDGEFLEET_CACHE:-/var/cache/edgefleet}"
mirror="${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$cache"
started=$(date +%s)
# the classic builder: it builds from local images only (BuildKit is not installed)
build() {
  DOCKER_BUILDKIT=0 docker build -q "$@" >/dev/null \
    2> >(grep -v -e DEPRECATED -e BuildKit -e buildx -e environment-variable -e '^ *$' >&2)
}

# 1. the Debian root filesystem -> edgefleet/base:bookworm
if ! docker image inspect edgefleet/base:bookworm >/dev/null 2>&1; then
  rootfs="$cache/bookworm-minbase-python3.tar"
  if [ ! -s "$rootfs" ]; then
    echo "runtime-image: debootstrap bookworm (minbase + python3) from $mirror"
    dir=$(mktemp -d "$cache/rootfs.XXXXXX")
    # never rm -rf a tree with the host's /proc or /sys still mounted in it
    cleanup() { umount -R "$dir/proc" "$dir/sys" 2>/dev/null || true; rm -rf --one-file-system "$dir"; }
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$dir" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; cleanup; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -c . >"$rootfs.tmp"
    mv "$rootfs.tmp" "$rootfs"
    cleanup
  fi
  echo "runtime-image: docker import -> edgefleet/base:bookworm"
  docker import "$rootfs" edgefleet/base:bookworm >/dev/null
fi

# 2. the wheels, pinned to what this checkout's venv runs -> edgefleet/runtime-deps:<pins hash>
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
pkgs="onnxruntime numpy grpcio grpcio-health-checking protobuf onnx cryptography semver prometheus-client"
"$py" - $pkgs >"$ctx/requirements.txt" <<'EOF'
import sys
from importlib.metadata import version
for name in sys.argv[1:]:
    print(f"{name}=={version(name)}")
EOF
pins=$(sha256sum "$ctx/requirements.txt" | cut -c1-12)
if ! docker image inspect "edgefleet/runtime-deps:$pins" >/dev/null 2>&1; then
  wheels="$cache/wheels-$pins"
  if [ ! -f "$wheels/.complete" ]; then
    echo "runtime-image: downloading wheels for $(tr '\n' ' ' <"$ctx/requirements.txt")"
    mkdir -p "$wheels"
    "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
      -d "$wheels" -r "$ctx/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    touch "$wheels/.complete"
  fi
  cp -r "$wheels" "$ctx/wheels"
  echo "runtime-image: building edgefleet/runtime-deps:$pins"
  build -t "edgefleet/runtime-deps:$pins" -f deploy/docker/runtime-deps.Dockerfile "$ctx"
  rm -rf "$ctx/wheels"
  docker image prune -f --filter label=dev.edgefleet.stage=install >/dev/null  # the install stage
fi

# 3. the model server code -> edgefleet/runtime:latest (rebuilt each run; cached by Docker)
mkdir -p "$ctx/src/edgefleet"
cp -r agent/edgefleet/agent proto/edgefleet/common proto/edgefleet/v1 "$ctx/src/edgefleet/"
find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.proto' -exec rm -f {} +
find "$ctx/src" -exec touch -h -d @0 {} +  # same code, same layer
build -t edgefleet/runtime:latest --build-arg "DEPS=edgefleet/runtime-deps:$pins" \
  -f deploy/docker/runtime.Dockerfile "$ctx"
echo "runtime-image: edgefleet/runtime:latest ready ($(( $(date +%s) - started ))s)"
