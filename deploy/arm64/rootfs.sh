#!/usr/bin/env bash
# Build a Debian bookworm arm64 root filesystem with the agent's dependencies, for running the
# agent under emulation (qemu-user-static through binfmt_misc) on an x86-64 machine:
#   /            debootstrap --arch arm64 --variant=minbase + python3, python3-venv, ca-certificates
#   /opt/edgefleet   a venv with the aarch64 wheels of the project's dependencies (no extras), each
#                pinned to the version the given venv runs (deploy/arm64/pins.py), so the emulated
#                agent runs the same ONNX Runtime and NumPy as the host it is compared to
# The project's own wheel is not in it: whoever runs the agent installs the wheel of the code
# under test on top (deploy/arm64/enter.sh mounts the tree read-only under an overlay).
#
# Cached where the machine keeps it ($EDGEFLEET_CACHE, default /var/cache/edgefleet):
# arm64-rootfs-<key>, key = a hash of the Debian package list and the pinned requirements; the
# aarch64 wheels in arm64-wheels-<pins hash>. Made only when missing; prints the tree's path as
# its last line. Needs root, debootstrap and qemu-user-static with binfmt_misc; exits 3 naming
# what the kernel refused where aarch64 binaries cannot be run.
#   usage: deploy/arm64/rootfs.sh [PYTHON]   (PYTHON: the venv whose pins the tree uses)
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${1:-.venv/bin/python}"
cache="${EDGEFLEET_CACHE:-/var/cache/edgefleet}"
mirror="${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
include=python3,python3-venv,ca-certificates
started=$(date +%s)
log() { echo "arm64-rootfs: $*" >&2; }

# aarch64 binaries run here only through binfmt_misc with a qemu-aarch64 handler: mount the
# filesystem and enable the handler (binfmt-support's) where they are not there yet.
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || {
  log "binfmt_misc cannot be mounted at $binfmt (the kernel refuses it)"; exit 3; }
if [ -e "$binfmt/qemu-aarch64" ]; then
  grep -qx enabled "$binfmt/qemu-aarch64" || echo 1 >"$binfmt/qemu-aarch64" 2>/dev/null || true
else
  command -v update-binfmts >/dev/null || { log "no update-binfmts (apt-get install binfmt-support qemu-user-static)"; exit 3; }
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
grep -qx enabled "$binfmt/qemu-aarch64" 2>/dev/null || {
  log "no enabled qemu-aarch64 handler in $binfmt (apt-get install qemu-user-static binfmt-support)"; exit 3; }

mkdir -p "$cache"
req=$(mktemp)
trap 'rm -f "$req"' EXIT
"$py" deploy/arm64/pins.py >"$req"
pins=$(sha256sum "$req" | cut -c1-12)
key=$( (echo "$suite $include"; cat "$req") | sha256sum | cut -c1-12)
root="$cache/arm64-rootfs-$key"
if [ -f "$root/.complete" ]; then
  log "cached: $root"
  echo "$root"
  exit 0
fi

# 1. the aarch64 wheels, downloaded on the host (pip under emulation is slow)
wheels="$cache/arm64-wheels-$pins"
if [ ! -f "$wheels/.complete" ]; then
  log "downloading aarch64 wheels for $(wc -l <"$req") pinned requirements"
  mkdir -p "$wheels"
  "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform any \
    -d "$wheels" -r "$req" 2> >(grep -v "is ignored: it is neither" >&2)
  # the project's build backend (pure Python): its wheel is built offline (pip wheel --no-index)
  read -ra backend < <("$py" -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
  "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$wheels" \
    "${backend[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
  cp "$req" "$wheels/requirements.txt"
  touch "$wheels/.complete"
fi

# 2. debootstrap in one go (second stage run under qemu through binfmt_misc)
dir=$(mktemp -d "$cache/arm64-rootfs.XXXXXX")
# never rm -rf a tree with the host's /proc, /sys or /dev still mounted in it
cleanup() {
  umount -R "$dir/proc" "$dir/sys" "$dir/dev" "$dir/wheels" 2>/dev/null || true
  rm -rf --one-file-system "$dir"; rm -f "$req"
}
trap cleanup EXIT
log "debootstrap --arch arm64 $suite (minbase + ${include//,/ }) from $mirror"
debootstrap --arch=arm64 --variant=minbase --include="$include" "$suite" "$dir" "$mirror" \
  >"$cache/arm64-debootstrap.log" 2>&1 || { tail -20 "$cache/arm64-debootstrap.log" >&2; exit 1; }
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
log "debootstrap done ($(( $(date +%s) - started ))s)"

# 3. the venv, installed under emulation from the downloaded wheels only; the wheels stay in
# /wheels (the project's wheel installs from there with --no-index, its dependencies checked)
cp -r "$wheels" "$dir/wheels"
# this host's pip settings name its own paths, which the arm64 tree does not have
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
mount -t proc proc "$dir/proc"
chroot "$dir" /usr/bin/python3 -m venv /opt/edgefleet
chroot "$dir" /opt/edgefleet/bin/pip install -q --disable-pip-version-check --no-cache-dir \
  --no-compile --no-index --find-links /wheels -r /wheels/requirements.txt
# imported once here, so the byte code of what the agent imports is in the cached tree
chroot "$dir" /opt/edgefleet/bin/python -c 'import platform
import cryptography.x509, google.protobuf, grpc, numpy, onnxruntime
import paho.mqtt.client, prometheus_client, semver
assert platform.machine() == "aarch64", platform.machine()'
umount "$dir/proc"
touch "$dir/.complete"
rm -rf --one-file-system "$root"  # a tree left unfinished by an earlier run
mv "$dir" "$root"
trap 'rm -f "$req"' EXIT
log "built $root ($(( $(date +%s) - started ))s)"
echo "$root"
