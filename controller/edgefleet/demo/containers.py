"""The demo's runtime: container releases where Docker can run them, else in-process ones.

``choose`` decides (``--runtime auto|container|process``) and says why in one line: containers
need the local dockerd to answer, the runtime base image (``deploy/docker/runtime-image.sh``)
and Debian's ``docker-registry``; a missing runtime base is built first where that is quick
(``build_runtime``: the source tree's script, with the Debian base image already in dockerd,
so only cached layers and wheels are used). With containers the demo runs a registry of its
own in its temporary directory on a free port (``start_registry``), the controller names it as
its artifact source, every release is created with ``runtime = "container"`` and pushed there
(``push``: ``edgectl release push``, the OCI artifact and the image), and the agents pull and
run their release containers from it. ``cleanup`` removes what the run left in Docker however
it ended: the agents' containers (label ``dev.edgefleet.device`` = one of the run's devices),
their images (``edgefleet-agent/DEVICE``) and the release images the controller built.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes, child_env, free_port, script, wait_for_port

CONTAINER = "container"
PROCESS = "process"
RUNTIMES = ("auto", CONTAINER, PROCESS)
REGISTRY_BIN = "/usr/bin/docker-registry"
REPO = "edgefleet-demo/digits"
PUSH_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 180.0
RUNTIME_SCRIPT = Path(__file__).resolve().parents[3] / "deploy" / "docker" / "runtime-image.sh"
BASE_IMAGE = "edgefleet/base:bookworm"  # what the script makes slowly (debootstrap)
LABEL_DEVICE = "dev.edgefleet.device"  # the agent's label on its release containers


@dataclass(frozen=True)
class Choice:
    runtime: str  # CONTAINER or PROCESS
    why: str


def registry_binary() -> str | None:
    found = shutil.which("docker-registry")
    if found:
        return found
    return REGISTRY_BIN if Path(REGISTRY_BIN).is_file() else None


def missing() -> str:
    """Why release containers cannot run here ("" when they can)."""
    try:
        import docker
        import docker.errors

        from edgefleet.controller import images
    except ImportError as exc:
        return f"the docker package is missing ({exc})"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as exc:
        return f"Docker does not answer ({str(exc).splitlines()[0][:120]})"
    try:
        client.images.get(images.RUNTIME_BASE)
    except docker.errors.ImageNotFound:
        return NO_BASE
    except docker.errors.DockerException as exc:
        return f"Docker does not answer ({str(exc).splitlines()[0][:120]})"
    finally:
        client.close()
    if registry_binary() is None:
        return "docker-registry is not installed (apt-get install docker-registry)"
    return ""


NO_BASE = "the runtime base edgefleet/runtime:latest is missing (deploy/docker/runtime-image.sh)"


def build_runtime(console: Console) -> str:
    """Build the runtime base with ``deploy/docker/runtime-image.sh`` where that is quick: the
    script is in the source tree this runs from and the Debian base image is in dockerd.
    "" when built, else why not."""
    if not RUNTIME_SCRIPT.is_file():
        return NO_BASE
    inspect = ["docker", "image", "inspect", BASE_IMAGE]
    if subprocess.run(inspect, capture_output=True, check=False).returncode != 0:
        return NO_BASE
    python = Path(sys.executable)
    try:
        with console.status(f"building the runtime base image ({RUNTIME_SCRIPT.name})"):
            done = subprocess.run(
                ["bash", str(RUNTIME_SCRIPT), str(python)], capture_output=True, text=True,
                cwd=RUNTIME_SCRIPT.parents[2], env=child_env(), timeout=BUILD_TIMEOUT_S,
                check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"{NO_BASE}; building it took over {BUILD_TIMEOUT_S:g}s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1][:160]
        return f"{NO_BASE}; building it failed: {last}"
    console.print(f"built the runtime base image with {RUNTIME_SCRIPT}")
    return missing()


def choose(requested: str, console: Console) -> Choice:
    """The runtime to use for ``requested`` (auto, container, process), and why."""
    if requested == PROCESS:
        return Choice(PROCESS, "asked for with --runtime process")
    why_not = missing()
    if why_not == NO_BASE:
        why_not = build_runtime(console)
    if requested == CONTAINER:
        if why_not:
            raise StartError("--runtime container", f"cannot run here: {why_not}")
        return Choice(CONTAINER, "asked for with --runtime container")
    if why_not:
        return Choice(PROCESS, f"{why_not}; --runtime container needs it")
    return Choice(CONTAINER, "Docker answers, the runtime image and docker-registry are here")


def start_registry(procs: Processes, workdir: Path) -> str:
    """Debian's ``docker-registry`` storing under ``workdir``; its ``HOST:PORT``."""
    binary = registry_binary()
    if binary is None:
        raise StartError("docker-registry", "is not installed (apt-get install docker-registry)")
    root = workdir / "registry"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "config.yml"
    conf.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = procs.spawn("registry", [binary, "serve", str(conf)])
    wait_for_port(port, proc, timeout_s=30.0)
    return f"127.0.0.1:{port}"


def source(registry: str) -> str:
    """The controller's ``--artifact-source`` for the demo's registry."""
    return f"oci://{registry}/{REPO}"


def push(
    release: str, *, registry: str, api: str, token_file: Path, ca_file: Path | None = None
) -> None:
    """``edgectl release push RELEASE --to REGISTRY/REPO``: the artifact and its image."""
    argv = [
        *script("edgectl", "edgefleet.edgectl.app"),
        "release", "push", release, "--to", f"{registry}/{REPO}", "--json",
    ]  # fmt: skip
    env = child_env() | {"EDGECTL_CONTROLLER": api, "EDGECTL_TOKEN_FILE": str(token_file)}
    if ca_file is not None:  # the operator API of a --tls controller is TLS
        env["EDGECTL_CA_FILE"] = str(ca_file)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=PUSH_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise StartError("edgectl release push", f"took over {PUSH_TIMEOUT_S:g}s") from exc
    if done.returncode != 0:
        raise StartError(
            f"edgectl release push {release}",
            f"exited {done.returncode}",
            log_tail=done.stdout + done.stderr,
        )


def leftovers(client: Any, device_ids: Iterable[str]) -> list[Any]:
    """The containers of these devices, running or not."""
    found: list[Any] = []
    for device_id in device_ids:
        found += client.containers.list(all=True, filters={"label": f"{LABEL_DEVICE}={device_id}"})
    return found


def cleanup(device_ids: Iterable[str], releases: Iterable[str]) -> int:
    """Remove the devices' containers and images and the release images (``NAME:VERSION``)
    the controller built; how many containers went. Nothing fails: a leftover is reported
    by ``leftovers``, not raised."""
    import docker
    import docker.errors

    from edgefleet.common import oci
    from edgefleet.controller import images

    ids = list(device_ids)
    try:
        client = docker.from_env(timeout=60)
    except docker.errors.DockerException:
        return 0
    removed = 0
    try:
        for c in leftovers(client, ids):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
                removed += 1
        for device_id in ids:
            with contextlib.suppress(docker.errors.APIError):
                for image in client.images.list(name=f"edgefleet-agent/{device_id}"):
                    for tag in image.tags:
                        with contextlib.suppress(docker.errors.APIError):
                            client.images.remove(tag)
        for release in releases:
            name, _, version = release.partition(":")
            tag = f"{images.RELEASE_REPO}/{name}:{oci.sanitize_tag(version)}"
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag)
    finally:
        client.close()
    return removed
