"""A thin typed wrapper over ``ControllerService``: one method per RPC, a deadline on each.

Every ``grpc.RpcError`` leaves here as ``RpcFailed`` whose text is one line for a person
(``cannot reach controller at HOST:PORT: ...``, ``unknown fleet: factory-z``). Used by the
CLI commands, ``edgectl demo`` and the end-to-end tests alike. Each call carries the
operator's bearer token (``authorized``), which the controller's ``auth`` checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc

from edgefleet.common import enumwords, rpc, wire
from edgefleet.common import types as t
from edgefleet.common.closing import Closing
from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.v1 import common_pb2, enroll_pb2, mqtt_pb2
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc as pb_grpc

R = TypeVar("R")

UPLOAD_CHUNK = 256 * 1024
UPLOAD_MIN_RATE = 1 << 20  # bytes/s the upload deadline allows for, on top of the base deadline
INLINE_EVAL_BYTES = 1 << 20  # larger eval data goes over UploadData, in chunks
DATA_CHUNK = 1 << 20
COMPRESS_DEADLINE_S = 1800.0  # a compression search runs for minutes, not seconds
IMAGE_BUILD_DEADLINE_S = 300.0  # a container release's image is built on the controller host
MISSING_CREDENTIALS = (
    "set EDGECTL_TOKEN or EDGECTL_TOKEN_FILE, or token_file in ~/.config/edgefleet/edgectl.toml"
)

NO_CA_HINT = (
    "a --tls controller's operator API is TLS: set --ca-file or EDGECTL_CA_FILE "
    "(its DATA_DIR/api-ca.pem) or ca_file in the config file"
)


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = (*(details.metadata or ()), self._header)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(NamedTuple):
    """What ``grpc.ClientCallDetails`` holds; grpc reads these attributes only."""

    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...]
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def authorized(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` with the operator's bearer token on every call (unchanged if no token)."""
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def api_tls(ca_file: Path | None) -> rpc.ClientTls | None:
    """TLS to the operator API, trusting only ``ca_file``'s CA bundle (None: plaintext)."""
    if ca_file is None:
        return None
    try:
        return rpc.ClientTls(ca_pem=Path(ca_file).read_bytes())
    except OSError as exc:
        raise InvalidInputError(f"cannot read CA file {ca_file}: {exc}") from None


class ControllerClient(Closing):
    """``target`` is the controller's operator API; ``token`` the operator's bearer token;
    ``ca_file`` the CA bundle its TLS certificate must chain to (None: plaintext)."""

    def __init__(
        self,
        target: str,
        *,
        token: str = "",
        deadline_s: float = rpc.DEFAULT_DEADLINE_S,
        ca_file: Path | None = None,
    ) -> None:
        self.target = target
        self.deadline_s = deadline_s
        self._has_token = bool(token)
        self._tls = ca_file is not None
        self._channel = authorized(rpc.channel(target, tls=api_tls(ca_file)), token)
        self._stub = pb_grpc.ControllerServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> rpc.RpcFailed:
        target = f"controller at {self.target}"
        failed = rpc.error_from_rpc(exc, target=target)
        if failed.code == grpc.StatusCode.UNAUTHENTICATED and not self._has_token:
            return rpc.RpcFailed(target, failed.code, f"{failed.detail}; {MISSING_CREDENTIALS}")
        if failed.code == grpc.StatusCode.UNAVAILABLE and not self._tls:
            return rpc.RpcFailed(target, failed.code, f"{failed.detail}; {NO_CA_HINT}")
        return failed

    # --- keys -------------------------------------------------------------------------------

    def init_key(self, *, rotate: bool = False) -> pb.KeyInfo:
        request = pb.InitKeyRequest(rotate=rotate)
        return self._call(lambda: self._stub.InitKey(request, timeout=self.deadline_s))

    def revoke_key(self, key_id: str, *, force: bool = False) -> pb.KeyInfo:
        request = pb.RevokeKeyRequest(key_id=key_id, force=force)
        return self._call(lambda: self._stub.RevokeKey(request, timeout=self.deadline_s))

    def list_keys(self) -> list[pb.KeyInfo]:
        request = pb.ListKeysRequest()
        return list(self._call(lambda: self._stub.ListKeys(request, timeout=self.deadline_s)).keys)

    # --- models and releases ----------------------------------------------------------------

    def upload_model(
        self, chunks: Iterable[bytes], *, name: str, size: int, description: str = ""
    ) -> pb.RegisteredModel:
        """Stream a model: the header first, then ``chunks`` as they come."""

        def requests() -> Iterator[pb.UploadModelRequest]:
            header = pb.UploadHeader(name=name, size=size, description=description)
            yield pb.UploadModelRequest(header=header)
            for chunk in chunks:
                yield pb.UploadModelRequest(chunk=chunk)

        deadline = self.deadline_s + size / UPLOAD_MIN_RATE
        return self._call(lambda: self._stub.UploadModel(requests(), timeout=deadline))

    def upload_data(self, data: bytes, *, purpose: str = "eval") -> pb.UploadedData:
        """Stream ``data`` in chunks of ``DATA_CHUNK`` bytes (``UploadData``); its id."""

        def requests() -> Iterator[pb.UploadDataRequest]:
            header = pb.UploadDataHeader(size=len(data), purpose=purpose)
            yield pb.UploadDataRequest(header=header)
            for start in range(0, len(data), DATA_CHUNK):
                yield pb.UploadDataRequest(chunk=data[start : start + DATA_CHUNK])

        deadline = self.deadline_s + len(data) / UPLOAD_MIN_RATE
        return self._call(lambda: self._stub.UploadData(requests(), timeout=deadline))

    def list_models(self, name: str = "") -> list[pb.RegisteredModel]:
        request = pb.ListModelsRequest(name=name)
        reply = self._call(lambda: self._stub.ListModels(request, timeout=self.deadline_s))
        return list(reply.models)

    def compress_model(
        self,
        name: str,
        *,
        eval_data: bytes,
        version: int = 0,
        recipe: str = "auto",
        max_accuracy_drop: float = 1.0,
        objective: str = "",
        profile_on: str = "",
        deadline_s: float = COMPRESS_DEADLINE_S,
        time_budget_s: float | None = None,
        metric: str = "",
        golden: str = "",
        cores: int = 0,
        metric_module: tuple[str, str, str] | None = None,
        carry: Sequence[str] = (),
        variants: bool = False,
    ) -> Iterator[pb.CompressProgress]:
        """Stream ``CompressModel``: progress messages, then one carrying the result. Closing
        the iterator early cancels the call (the controller stops after its current candidate).
        Eval data over ``INLINE_EVAL_BYTES`` goes first in chunks (``upload_data``).
        ``objective``: a word of ``Objective`` (``""`` = balanced; ``ValueError`` for none)."""
        data_id = ""
        if len(eval_data) > INLINE_EVAL_BYTES:
            data_id = self.upload_data(eval_data).data_id
        request = pb.CompressRequest(
            name=name,
            version=version,
            recipe=recipe,
            eval_data=b"" if data_id else eval_data,
            eval_data_id=data_id,
            carry=list(carry),
            max_accuracy_drop=max_accuracy_drop,
            search_objective=(
                enumwords.objective_value(objective) if objective else pb.OBJECTIVE_UNSPECIFIED
            ),
            profile_on=profile_on,
            metric=metric,
            golden=golden,
            cores=cores,
            variants=variants,
        )
        if metric_module is not None:  # (source, function, origin): text, run confined there
            (
                request.metric_module_source,
                request.metric_module_function,
                request.metric_module_origin,
            ) = metric_module
        if time_budget_s is not None:
            request.time_budget_s = time_budget_s
        stream = self._call(lambda: self._stub.CompressModel(request, timeout=deadline_s))
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]  # (no-op once the call ended)

    def create_release(
        self,
        name: str,
        version: str,
        *,
        model_version: int = 0,
        health: t.HealthPolicy | None = None,
        notes: str = "",
        golden: bytes = b"",
        runtime: str = "",
        image: str = "",
        providers: Sequence[t.ExecutionProvider] = (),
        variants: Sequence[pb.VariantRequest] = (),
        profile_on: Sequence[str] = (),
    ) -> pb.ReleaseInfo:
        request = pb.CreateReleaseRequest(
            name=name,
            version=version,
            model_version=model_version,
            notes=notes,
            golden=golden,
            runtime=runtime,
            image=image,
            providers=[
                common_pb2.ExecutionProvider(name=p.name, options=dict(p.options))
                for p in providers
            ],
            variants=variants,
            profile_on=list(profile_on),
        )
        if health is not None:
            request.health.CopyFrom(wire.health_to_pb(health))
        # building a container release's image takes a while on the controller's host
        deadline = (  # an image build, or timing on devices, takes a while
            max(self.deadline_s, IMAGE_BUILD_DEADLINE_S)
            if runtime or profile_on
            else self.deadline_s
        )
        return self._call(lambda: self._stub.CreateRelease(request, timeout=deadline))

    def list_releases(self, name: str = "") -> list[pb.ReleaseInfo]:
        request = pb.ListReleasesRequest(name=name)
        reply = self._call(lambda: self._stub.ListReleases(request, timeout=self.deadline_s))
        return list(reply.releases)

    # --- rollouts and devices ---------------------------------------------------------------

    def deploy(
        self, release: t.ReleaseRef, fleet: str, *, strategy: pb.RolloutStrategy | None = None
    ) -> pb.DeployResponse:
        """Start a rollout; ``strategy`` unset (or empty fields) = the controller's defaults."""
        request = pb.DeployRequest(release=str(release), fleet=fleet, strategy=strategy)
        return self._call(lambda: self._stub.Deploy(request, timeout=self.deadline_s))

    def rollback(self, fleet: str, *, to_release: str = "") -> pb.DeployResponse:
        """Send ``fleet`` back to each device's previous release, or to ``to_release``."""
        request = pb.RollbackRequest(fleet=fleet, to_release=to_release)
        return self._call(lambda: self._stub.Rollback(request, timeout=self.deadline_s))

    def list_rollouts(self, fleet: str = "", *, limit: int = 0) -> list[pb.RolloutInfo]:
        """Newest first; ``limit`` 0 = the controller's default."""
        request = pb.ListRolloutsRequest(fleet=fleet, limit=limit)
        reply = self._call(lambda: self._stub.ListRollouts(request, timeout=self.deadline_s))
        return list(reply.rollouts)

    def get_rollout(self, rollout_id: str) -> pb.RolloutInfo:
        ref = pb.RolloutRef(rollout_id=rollout_id)
        return self._call(lambda: self._stub.GetRollout(ref, timeout=self.deadline_s))

    def pause_rollout(self, rollout_id: str) -> pb.RolloutInfo:
        ref = pb.RolloutRef(rollout_id=rollout_id)
        return self._call(lambda: self._stub.PauseRollout(ref, timeout=self.deadline_s))

    def resume_rollout(self, rollout_id: str) -> pb.RolloutInfo:
        ref = pb.RolloutRef(rollout_id=rollout_id)
        return self._call(lambda: self._stub.ResumeRollout(ref, timeout=self.deadline_s))

    def abort_rollout(self, rollout_id: str) -> pb.RolloutInfo:
        ref = pb.RolloutRef(rollout_id=rollout_id)
        return self._call(lambda: self._stub.AbortRollout(ref, timeout=self.deadline_s))

    def list_devices(self, fleet: str = "") -> list[pb.DeviceInfo]:
        """Every device of ``fleet`` (all fleets: ""), page after page."""
        devices: list[pb.DeviceInfo] = []
        token = ""
        while True:
            reply = self.devices_page(fleet, page_token=token)
            devices.extend(reply.devices)
            token = reply.next_page_token
            if not token:
                return devices

    def devices_page(
        self, fleet: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> pb.ListDevicesResponse:
        """One page of devices (``page_size`` 0: the server's default; it caps the size)."""
        request = pb.ListDevicesRequest(fleet=fleet, page_size=page_size, page_token=page_token)
        return self._call(lambda: self._stub.ListDevices(request, timeout=self.deadline_s))

    def find_device(self, device_id: str) -> pb.DeviceInfo:
        for device in self.list_devices():
            if device.device_id == device_id:
                return device
        raise NotFoundError("device", device_id)

    def list_events(
        self, *, device_id: str = "", fleet: str = "", limit: int = 0
    ) -> list[mqtt_pb2.DeviceEvent]:
        request = pb.ListEventsRequest(device_id=device_id, fleet=fleet, limit=limit)
        reply = self._call(lambda: self._stub.ListEvents(request, timeout=self.deadline_s))
        return list(reply.events)

    # --- operators and the audit log --------------------------------------------------------

    def add_operator(
        self, name: str, *, role: str, fleets: Iterable[str] = ()
    ) -> pb.AddOperatorResponse:
        request = pb.AddOperatorRequest(name=name, role=role, fleets=list(fleets))
        return self._call(lambda: self._stub.AddOperator(request, timeout=self.deadline_s))

    def list_operators(self) -> list[pb.OperatorInfo]:
        request = pb.ListOperatorsRequest()
        reply = self._call(lambda: self._stub.ListOperators(request, timeout=self.deadline_s))
        return list(reply.operators)

    def revoke_operator(self, name: str) -> pb.OperatorInfo:
        request = pb.RevokeOperatorRequest(name=name)
        return self._call(lambda: self._stub.RevokeOperator(request, timeout=self.deadline_s))

    def whoami(self) -> pb.OperatorInfo:
        request = pb.WhoAmIRequest()
        return self._call(lambda: self._stub.WhoAmI(request, timeout=self.deadline_s))

    def list_audit(self, *, limit: int = 0) -> list[pb.AuditEntry]:
        """Newest first; ``limit`` 0 = the controller's default."""
        request = pb.ListAuditRequest(limit=limit)
        reply = self._call(lambda: self._stub.ListAudit(request, timeout=self.deadline_s))
        return list(reply.entries)

    # --- device identities ------------------------------------------------------------------

    def enroll_device(
        self, device_id: str, *, fleet: str, labels: dict[str, str], token_ttl_s: float = 0
    ) -> enroll_pb2.EnrollDeviceResponse:
        request = enroll_pb2.EnrollDeviceRequest(
            device_id=device_id, fleet=fleet, labels=labels, token_ttl_s=token_ttl_s
        )
        return self._call(lambda: self._stub.EnrollDevice(request, timeout=self.deadline_s))

    def revoke_device(self, device_id: str) -> enroll_pb2.DeviceIdentity:
        request = enroll_pb2.DeviceRef(device_id=device_id)
        return self._call(lambda: self._stub.RevokeDevice(request, timeout=self.deadline_s))

    def quarantine_device(self, device_id: str, *, lift: bool = False) -> enroll_pb2.DeviceIdentity:
        request = enroll_pb2.QuarantineRequest(device_id=device_id, lift=lift)
        return self._call(lambda: self._stub.QuarantineDevice(request, timeout=self.deadline_s))

    def remove_device(self, device_id: str) -> enroll_pb2.DeviceIdentity:
        request = enroll_pb2.DeviceRef(device_id=device_id)
        return self._call(lambda: self._stub.RemoveDevice(request, timeout=self.deadline_s))

    def list_identities(self, fleet: str = "") -> list[enroll_pb2.DeviceIdentity]:
        request = enroll_pb2.ListIdentitiesRequest(fleet=fleet)
        reply = self._call(lambda: self._stub.ListIdentities(request, timeout=self.deadline_s))
        return list(reply.devices)


def file_chunks(
    path: Path, *, chunk_size: int = UPLOAD_CHUNK, on_chunk: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks; ``on_chunk(n)`` runs as each one is handed over."""
    with path.open("rb") as f:
        while data := f.read(chunk_size):
            yield data
            if on_chunk is not None:
                on_chunk(len(data))
