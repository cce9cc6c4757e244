"""The container runtime: a release whose manifest says ``runtime = "container"`` runs in Docker.

An adapter at the edge (DESIGN.md section 7), the Docker twin of ``runtime.ModelRuntime``:

* ``Containers.probe`` asks the local dockerd at start; without an answer the agent runs the
  in-process runtime only and does not report ``container`` among its runtimes.
* ``pull`` (the install's stage step) pulls the release's image from the registries its desired
  state names (``oci://HOST[:PORT]/REPO`` -> ``HOST[:PORT]/REPO/container:VERSION``, each source
  in turn, like blobs), then refuses it (``IntegrityError``) unless the pulled image's id is the
  digest in the signed manifest. The id is the sha256 of the image config, which lists the
  sha256 of every layer, and dockerd checks each layer against it, so nothing unsigned runs.
* ``load`` (health check, and start-up) starts the release's container beside the one serving,
  with limits (memory, CPUs, pids, read-only root, no new privileges, every capability
  dropped, bridge network with Predict published on 127.0.0.1 only), or adopts the one a
  previous agent process left running for the same slot (labels: device, release, manifest,
  slot; one name per device and manifest, so dockerd itself refuses a second). It waits for
  grpc.health SERVING, checks ModelInfo's signature against the manifest and returns a
  ``ContainerRuntime``: a ``ModelRuntime`` whose predict forwards to the container, so the
  health check (golden data, latency budget), activation, the health window and rollback are
  the same code as in-process. A container that exits or never serves is removed, with the
  last lines of its log in the error.
* ``sweep`` removes this device's containers that no runtime in use names (the old one after a
  switch, a failed candidate, orphans of a killed agent); ``prune_images`` keeps the images of
  the active and previous release (the agent's own tags ``edgefleet-agent/<device>``) and
  untags the rest, so dockerd deletes an image no other tag or container holds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.agent import failpoints, health, tensors
from edgefleet.agent.errors import InferenceFailedError
from edgefleet.agent.runtime import Array, Faults, LoadedModel, ModelRuntime, check_signature
from edgefleet.common import oci, wire
from edgefleet.common import types as t
from edgefleet.common.errors import (
    IntegrityError,
    InvalidInputError,
    ModelLoadError,
    TransientError,
)
from edgefleet.v1 import inference_pb2, inference_pb2_grpc

try:  # docker-py comes with the ``containers`` extra; without it, in-process releases only
    import docker
    import docker.errors
except ImportError:
    docker = None

log = logging.getLogger(__name__)

CONTAINER = "container"
PORT = "50051/tcp"
LABEL_DEVICE = "dev.edgefleet.device"
LABEL_RELEASE = "dev.edgefleet.release"
LABEL_MANIFEST = "dev.edgefleet.manifest"
LABEL_SLOT = "dev.edgefleet.slot"
IMAGE_REPO_SUFFIX = "container"
LOG_LINES = 20
LOG_BYTES = 1024  # an event message is at most 2 KiB: room for the reason before it
GONE = frozenset({"exited", "dead", "removing", "missing"})  # states a container never leaves


@dataclass(frozen=True)
class ContainerState:
    """What dockerd says of a release container (``Containers.state_of``)."""

    state: str  # created, running, restarting, paused, exited, dead, removing; "missing": gone
    restarts: int = 0
    exit_code: int = 0


def image_repository(source: str) -> str:
    """``oci://HOST[:PORT]/REPO`` -> ``HOST[:PORT]/REPO/container``: where release images go."""
    ref = oci.RegistryRef.from_source(source)
    return f"{ref.host}/{ref.repo}/{IMAGE_REPO_SUFFIX}"


def agent_tag(device_id: str, manifest_digest: str) -> tuple[str, str]:
    """The (repository, tag) this device keeps an image of a release under."""
    return f"edgefleet-agent/{device_id}", manifest_digest.removeprefix("sha256:")[:32]


@dataclass(frozen=True)
class ContainerSettings:
    """How release containers run on this device."""

    memory_bytes: int = 512 << 20
    """Memory limit of a release container (swap included)."""
    cpus: float = 1.0
    """CPU limit, in cores."""
    pids: int = 256
    """Most processes and threads in a release container."""
    start_timeout_s: float = 60.0
    """How long a new container has to say SERVING before it counts as failed."""
    predict_deadline_s: float = 10.0
    """Deadline of each Predict the agent forwards to its container."""
    docker_timeout_s: float = 60.0
    """Timeout of calls to dockerd (a pull may take longer: it is one call per layer)."""


class ContainerRuntime(ModelRuntime):
    """A release served by its container: Predict goes over gRPC to the published port.

    A ``ModelRuntime`` (without an ORT session) so that every caller of one, from the health
    check to the Predict servicer, works unchanged. Errors keep their meaning: the container's
    INVALID_ARGUMENT is an ``InvalidInputError``; anything else (the container gone, a crash,
    a deadline) is an ``InferenceFailedError``, which the health window counts.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        container_id: str,
        endpoint: str,
        inputs: tuple[t.TensorSpec, ...],
        outputs: tuple[t.TensorSpec, ...],
        load_seconds: float,
        deadline_s: float,
        adopted: bool = False,
        logs: Callable[[], str] | None = None,
        state: Callable[[], ContainerState] | None = None,
    ) -> None:
        # no super().__init__: there is no ORT session in this process
        self.session = None
        self.model = model
        self.release = model.release
        self.load_seconds = load_seconds
        self.inputs, self.outputs = inputs, outputs
        self.output_names = [s.name for s in outputs]
        self.container_id = container_id
        self.endpoint = endpoint
        self.adopted = adopted
        self._logs = logs
        self._state = state
        # restarts seen so far: those before the agent loaded it are not this load's faults
        self._restarts = state().restarts if state is not None else 0
        self._deadline_s = deadline_s
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def predict(
        self, arrays: Mapping[str, Array], output_names: Sequence[str] = ()
    ) -> dict[str, Array]:
        request = inference_pb2.PredictRequest(output_names=list(output_names))
        tensors.add_all(request.inputs, arrays)
        try:
            reply = self._stub.Predict(request, timeout=self._deadline_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInputError(details or "the container refused the inputs") from exc
            raise InferenceFailedError(
                f"container {self.container_id[:12]} of {self.release}: {code.name}: {details}"
            ) from exc
        return tensors.decode_all(reply.outputs)

    def last_lines(self) -> str:
        """The end of the container's log (``log_tail``), for the failure it explains."""
        return self._logs() if self._logs is not None else ""

    def faults(self) -> Faults:
        """Restarts since the last look (dockerd's on-failure policy restarts a crash up to
        the release's load-failure limit), and whether the container is gone for good."""
        if self._state is None:
            return Faults()
        try:
            now = self._state()
        except docker.errors.DockerException as exc:  # dockerd away: not the release's fault
            log.warning("cannot inspect container %s: %s", self.container_id[:12], exc)
            return Faults()
        new = max(0, now.restarts - self._restarts)
        if now.state == "restarting" and new == 0:
            new = 1  # crashed, restart pending: counted now, not again when it restarts
            self._restarts = now.restarts + 1
        else:
            self._restarts = max(self._restarts, now.restarts)
        what = f"container {self.container_id[:12]} is {now.state}"
        if now.state not in ("running", "missing"):
            what += f" (exit status {now.exit_code})"
        what += f", {now.restarts} restarts"
        final = now.state in GONE
        return Faults(count=new, final=final, last=what if new or final else "")

    def close(self) -> None:
        self._channel.close()


def log_tail(container: Any) -> str:
    """The last ``LOG_LINES`` lines of a container's log, at most ``LOG_BYTES`` (the end kept).

    Escaped for an event message: control characters as ``\\xNN``, lines joined by a literal
    ``\\n``, so a log can neither forge a line of its own nor push the event past its size.
    """
    try:
        raw = container.logs(tail=LOG_LINES)
    except docker.errors.DockerException:
        return ""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    lines = [wire.CONTROL_CHARS.sub(_escape, line.rstrip()) for line in text.splitlines()]
    tail = "\\n".join(line for line in lines[-LOG_LINES:] if line)
    data = tail.encode()
    if len(data) > LOG_BYTES:
        tail = "..." + data[len(data) - LOG_BYTES + 3 :].decode(errors="ignore")
    return tail


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else "?"


class Containers:
    """This device's release containers in the local dockerd."""

    def __init__(self, client: Any, *, device_id: str, settings: ContainerSettings) -> None:
        self._client = client
        self._device_id = device_id
        self._settings = settings

    @classmethod
    def probe(
        cls, *, device_id: str, settings: ContainerSettings | None = None
    ) -> Containers | None:
        """The local dockerd (``DOCKER_HOST`` or the default socket), or None saying why."""
        settings = settings or ContainerSettings()
        if docker is None:
            log.info(
                "no container runtime: the docker package is not installed "
                "(pip install 'edgefleet[containers]')"
            )
            return None
        client = None
        try:
            client = docker.from_env(timeout=int(settings.docker_timeout_s))
            client.ping()
            version = client.version().get("Version", "?")
        except docker.errors.DockerException as exc:
            log.info("no container runtime: Docker does not answer (%s)", exc)
            if client is not None:
                client.close()
            return None
        client.close()  # no idle socket kept open; the next call connects again
        log.info("container runtime: Docker %s", version)
        return cls(client, device_id=device_id, settings=settings)

    def close(self) -> None:
        self._client.close()

    # images

    def has_image(self, image: str) -> bool:
        try:
            return bool(self._client.images.get(image).id == image)
        except docker.errors.ImageNotFound:
            return False

    def pull(self, manifest: t.Manifest, manifest_digest: str, *, sources: Iterable[str]) -> int:
        """Make the signed image local; return the bytes pulled (0: it was here already).

        ``IntegrityError`` when a registry's image is not the signed one (permanent: the next
        source is not asked, since the release is what it is); ``TransientError`` when no
        source answered.
        """
        if not manifest.image:
            raise ModelLoadError(f"{manifest.ref} is a container release without an image")
        repo, tag = agent_tag(self._device_id, manifest_digest)
        if self.has_image(manifest.image):
            self._client.images.get(manifest.image).tag(repo, tag)
            failpoints.hit("after_pull")
            return 0
        problems = []
        for source in sources:
            if not oci.is_source(source):
                continue
            where = image_repository(source)
            remote_tag = oci.sanitize_tag(manifest.version)
            try:
                pulled = self._pull_one(where, remote_tag)
            except docker.errors.DockerException as exc:
                problems.append(f"{where}:{remote_tag}: {exc}")
                continue
            image = self._client.images.get(f"{where}:{remote_tag}")
            if image.id != manifest.image:  # not signed: it goes, and nothing runs it
                self._client.images.remove(f"{where}:{remote_tag}")
                raise IntegrityError(manifest.image, f"{image.id} (the image {where} serves)")
            image.tag(repo, tag)  # this device's own name for it, then the pull's goes
            self._client.images.remove(f"{where}:{remote_tag}", noprune=True)
            log.info("pulled %s from %s (%d bytes)", manifest.image, where, pulled)
            failpoints.hit("after_pull")
            return pulled
        raise TransientError(
            f"cannot pull the image of {manifest.ref}: "
            + ("; ".join(problems) or "the desired state names no OCI registry")
        )

    def _pull_one(self, repository: str, tag: str) -> int:
        """Pull through dockerd's API; the bytes of the layers it had to download."""
        sizes: dict[str, int] = {}
        for line in self._client.api.pull(repository, tag=tag, stream=True, decode=True):
            failpoints.hit("image_pull")
            if "error" in line:
                raise docker.errors.APIError(str(line["error"]))
            detail = line.get("progressDetail") or {}
            if line.get("status") == "Downloading" and detail.get("total"):
                sizes[line.get("id", "")] = int(detail["total"])
        return sum(sizes.values())

    def prune_images(self, keep: Iterable[str]) -> None:
        """Untag this device's images of releases other than ``keep`` (manifest digests)."""
        repo = agent_tag(self._device_id, "")[0]
        kept = {agent_tag(self._device_id, d)[1] for d in keep if d}
        for image in self._client.images.list(name=repo):
            for full in image.tags:
                name, _, tag = full.rpartition(":")
                if name == repo and tag not in kept:
                    try:
                        self._client.images.remove(full, noprune=False)
                    except docker.errors.APIError as exc:  # in use by a container: keep it
                        log.debug("keeping %s: %s", full, exc)

    # containers

    def _ours(self, **labels: str) -> list[Any]:
        wanted = [f"{LABEL_DEVICE}={self._device_id}"] + [f"{k}={v}" for k, v in labels.items()]
        return list(self._client.containers.list(all=True, filters={"label": wanted}))

    def load(self, model: LoadedModel) -> ContainerRuntime:
        """Serve ``model`` from a container: adopt the running one of its slot, or start one."""
        m = model.manifest
        if not m.image:
            raise ModelLoadError(f"{model.release} is a container release without an image")
        started = time.monotonic()
        adopted = None
        for c in self._ours(**{LABEL_MANIFEST: _label(model.manifest_digest)}):
            if c.status == "running" and c.image.id == m.image and adopted is None:
                adopted = c
            else:
                self._remove(c)
        if adopted is not None:
            log.info("adopting container %s of %s", adopted.short_id, model.release)
            container = adopted
        else:
            if not self.has_image(m.image):
                raise ModelLoadError(
                    f"the image {m.image} of {model.release} is not on this device"
                )
            container = self._run(model)
        try:
            return self._ready(model, container, started=started, adopted=adopted is not None)
        except BaseException:
            self._remove(container)
            raise

    def _run(self, model: LoadedModel) -> Any:
        s = self._settings
        name = f"edgefleet-{self._device_id}-{_label(model.manifest_digest)[:16]}"
        failpoints.hit("before_container_start")
        try:
            container = self._client.containers.run(
                model.manifest.image,
                detach=True,
                name=name,
                labels={
                    LABEL_DEVICE: self._device_id,
                    LABEL_RELEASE: model.release,
                    LABEL_MANIFEST: _label(model.manifest_digest),
                    LABEL_SLOT: model.slot,
                },
                environment={"EDGEFLEET_RELEASE": model.release},
                ports={PORT: ("127.0.0.1", None)},
                mem_limit=s.memory_bytes,
                memswap_limit=s.memory_bytes,
                nano_cpus=int(s.cpus * 1e9),
                pids_limit=s.pids,
                read_only=True,
                tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},  # noqa: S108 - inside the container
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                network_mode="bridge",
                # a crash is restarted, as often as the release allows load failures; each
                # restart is a fault of the health window, and the last exit ends it
                restart_policy={
                    "Name": "on-failure",
                    "MaximumRetryCount": health.failure_limit(model.manifest.health),
                },
            )
        except docker.errors.APIError as exc:
            raise ModelLoadError(f"cannot start the container of {model.release}: {exc}") from exc
        failpoints.hit("container_started")
        return container

    def _ready(
        self, model: LoadedModel, container: Any, *, started: float, adopted: bool
    ) -> ContainerRuntime:
        """Wait for SERVING, then check the container serves the signed signature."""
        deadline = started + self._settings.start_timeout_s
        endpoint = ""
        container.reload()
        restarted = int(container.attrs.get("RestartCount", 0))  # an adopted one's, before us
        while True:
            container.reload()
            restarts = int(container.attrs.get("RestartCount", 0))
            if container.status in ("exited", "dead", "restarting") or restarts > restarted:
                code = container.attrs.get("State", {}).get("ExitCode")
                raise ModelLoadError(
                    f"the container of {model.release} exited with status {code} before "
                    f"serving; its last lines: {log_tail(container)}"
                )
            endpoint = endpoint or _published(container)
            if endpoint and _serving(endpoint):
                break
            if time.monotonic() > deadline:
                raise ModelLoadError(
                    f"the container of {model.release} did not serve within "
                    f"{self._settings.start_timeout_s:g}s; its last lines: {log_tail(container)}"
                )
            time.sleep(0.1)
        info = _model_info(endpoint)
        m = model.manifest
        inputs = check_signature(
            tuple(wire.spec_from_pb(s) for s in info.inputs), m.inputs, what="inputs"
        )
        served_outputs = tuple(wire.spec_from_pb(s) for s in info.outputs)
        outputs = (
            check_signature(served_outputs, m.outputs, what="outputs")
            if m.outputs
            else served_outputs
        )
        runtime = ContainerRuntime(
            model,
            container_id=container.id,
            endpoint=endpoint,
            inputs=inputs,
            outputs=outputs,
            load_seconds=time.monotonic() - started,
            deadline_s=self._settings.predict_deadline_s,
            adopted=adopted,
            logs=lambda: self.last_lines(container.id),
            state=lambda: self.state_of(container.id),
        )
        log.info(
            "container %s serves %s on %s (%s in %.2fs)",
            container.short_id,
            model.release,
            endpoint,
            "adopted" if adopted else "started",
            runtime.load_seconds,
        )
        return runtime

    def sweep(self, keep: Iterable[str]) -> list[str]:
        """Remove this device's containers whose id is not in ``keep``; their ids."""
        kept = set(keep)
        removed = []
        for c in self._ours():
            if c.id not in kept:
                failpoints.hit("container_remove")
                self._remove(c)
                removed.append(c.id)
        return removed

    def sample(self, container_id: str, *, release: str) -> t.ContainerStatus:
        """State, image, restarts, CPU and memory of one container (for status and metrics).

        Memory is counted as ``docker stats`` does: usage less the inactive page cache. A
        container dockerd no longer has is ``missing``; one not running has no figures.
        """
        try:
            c = self._client.containers.get(container_id)
        except docker.errors.NotFound:
            return t.ContainerStatus(release=release, container_id=container_id, state="missing")
        status = t.ContainerStatus(
            release=release,
            container_id=c.id,
            state=str(c.status),
            image=str(c.attrs.get("Image", "")),
            restarts=int(c.attrs.get("RestartCount", 0)),
        )
        if c.status != "running":
            return status
        try:
            stats = c.stats(stream=False, one_shot=True)  # one sample, no second one to diff
        except (docker.errors.DockerException, ValueError):  # it stopped as we asked: no JSON
            return status
        memory = stats.get("memory_stats") or {}
        detail = memory.get("stats") or {}
        cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)
        return replace(
            status,
            cpu_seconds=float(cpu_ns) / 1e9,
            memory_bytes=max(0, int(memory.get("usage", 0)) - int(cache)),
            memory_limit_bytes=int(memory.get("limit", 0)),
        )

    def state_of(self, container_id: str) -> ContainerState:
        """State, restart count and last exit status of a container ("missing": gone)."""
        try:
            c = self._client.containers.get(container_id)
        except docker.errors.NotFound:
            return ContainerState("missing")
        return ContainerState(
            str(c.status),
            restarts=int(c.attrs.get("RestartCount", 0)),
            exit_code=int((c.attrs.get("State") or {}).get("ExitCode", 0)),
        )

    def last_lines(self, container_id: str) -> str:
        """The end of a container's log, bounded and escaped (``log_tail``); "" when gone."""
        try:
            return log_tail(self._client.containers.get(container_id))
        except docker.errors.DockerException:
            return ""

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
            log.info("removed container %s", container.short_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("cannot remove container %s: %s", container.short_id, exc)


def _label(manifest_digest: str) -> str:
    return manifest_digest.removeprefix("sha256:")


def _published(container: Any) -> str:
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = ports.get(PORT) or []
    for b in bindings:
        if b.get("HostPort"):
            return f"127.0.0.1:{b['HostPort']}"
    return ""


def _serving(endpoint: str) -> bool:
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _model_info(endpoint: str) -> inference_pb2.ModelInfoResponse:
    with grpc.insecure_channel(endpoint) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            return stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5.0)
        except grpc.RpcError as exc:
            raise ModelLoadError(f"the container on {endpoint} does not answer ModelInfo") from exc
