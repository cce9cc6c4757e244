#!/usr/bin/env bash
# Run a command inside the arm64 root filesystem (deploy/arm64/rootfs.sh) under emulation, on
# the host's network (loopback reaches the host's broker and controller):
#   deploy/arm64/enter.sh ROOTFS WORKDIR [--bind DIR]... -- COMMAND [ARG]...
# The cached tree is never written: it is the lower layer of an overlay whose upper layer is
# WORKDIR/upper (what the command installs or writes stays there, for the next command given
# the same WORKDIR). Each --bind DIR appears at the same path inside. The mounts live in a
# private mount namespace (unshare), so they vanish with the command, however it ends; the
# command replaces this script (exec), so signals sent to it reach the command itself.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 ROOTFS WORKDIR [--bind DIR]... -- COMMAND [ARG]..." >&2; exit 2; }
root=$(realpath "$1")
work=$(realpath -m "$2")
shift 2
binds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --bind) binds+=("$(realpath "$2")"); shift 2 ;;
    *) echo "enter.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "${1:-}" = "--" ] || { echo "enter.sh: no -- COMMAND" >&2; exit 2; }
shift
[ -f "$root/.complete" ] || { echo "enter.sh: $root is not a finished root filesystem" >&2; exit 2; }
mkdir -p "$work/upper" "$work/work" "$work/merged"
if [ "${EDGEFLEET_ARM64_NS:-}" != 1 ]; then
  # the same script again, in a mount namespace of its own (unshare execs, no fork)
  again=("$root" "$work")
  for dir in "${binds[@]}"; do again+=(--bind "$dir"); done
  EDGEFLEET_ARM64_NS=1 exec unshare --mount --propagation private -- "$0" "${again[@]}" -- "$@"
fi
m="$work/merged"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$m"
mount -t proc proc "$m/proc"
mount --rbind /dev "$m/dev"
# no /sys: ONNX Runtime's cpuinfo, built for Arm, crashes on an x86 host's /sys (under qemu-user
# /proc/cpuinfo is the host's too); without it ORT warns that it cannot read the CPU and runs
mkdir -p "$m/tmp" && mount -t tmpfs tmpfs "$m/tmp"
cp /etc/hosts "$m/etc/hosts"
for dir in "${binds[@]}"; do
  mkdir -p "$m$dir"
  mount --bind "$dir" "$m$dir"
done
# this host's pip and Python settings name its own paths, which the tree does not have
unset EDGEFLEET_ARM64_NS PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PYTHONPATH \
  PYTHONHOME VIRTUAL_ENV
exec chroot "$m" "$@"
