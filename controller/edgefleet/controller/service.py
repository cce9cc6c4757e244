"""The ``ControllerService`` servicer: the operator API that edgectl drives.

A thin shell: convert the request (``api``), call the store or process that owns the work,
convert the answer. Our errors become status codes here and only here (``rpc.status_for``, plus
ALREADY_EXISTS for a taken release name); anything else is logged and answered INTERNAL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import NoReturn, TypeVar

import grpc

from edgefleet.common import rpc, wire
from edgefleet.common import types as t
from edgefleet.common.errors import EdgeFleetError, InvalidInputError
from edgefleet.controller import api, auth
from edgefleet.controller.audit import AuditEntry, AuditLog
from edgefleet.controller.compressing import Compressor
from edgefleet.controller.devices.registry import DeviceRegistry
from edgefleet.controller.enrollment import Enrollment
from edgefleet.controller.identityservice import IdentityApi
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.operators import Operator, OperatorStore, Role
from edgefleet.controller.registry import Registry, collect
from edgefleet.controller.releases import Releases
from edgefleet.controller.rollouts.deployer import Deployer
from edgefleet.controller.rollouts.shell import Rollouts
from edgefleet.controller.uploads import DataUploads
from edgefleet.v1 import controller_pb2 as pb

log = logging.getLogger(__name__)

R = TypeVar("R")
DEFAULT_EVENTS = 100
MAX_EVENTS = 1000
DEFAULT_ROLLOUTS = 20
MAX_ROLLOUTS = 500
DEFAULT_AUDIT = 50
MAX_AUDIT = 5000
DEFAULT_DEVICES = 500  # a ListDevices page
MAX_DEVICES = 1000
ROLLOUT_DEVICES = 1000  # GetRollout lists at most this many devices (counts cover all)
ROLLOUT_CHANGES = 1000  # ... and the newest this many device changes (phases and gates all)


def fail(context: grpc.ServicerContext, exc: EdgeFleetError) -> NoReturn:
    context.abort(rpc.status_for(exc), str(exc))


def serve(context: grpc.ServicerContext, method: str, call: Callable[[], R]) -> R:
    try:
        return call()
    except EdgeFleetError as exc:
        log.info("%s refused: %s", method, exc)
        fail(context, exc)
    except Exception:
        log.exception("%s failed", method)
        context.abort(
            grpc.StatusCode.INTERNAL, f"{method} failed inside the controller; see its log"
        )


def _chunks(
    requests: Iterator[pb.UploadModelRequest] | Iterator[pb.UploadDataRequest],
) -> Iterator[bytes]:
    for msg in requests:
        if msg.WhichOneof("part") != "chunk":
            raise InvalidInputError("an upload has one header, first; then only chunks")
        yield msg.chunk


class ControllerServicer(IdentityApi):  # + the device-identity RPCs (identityservice)
    def __init__(
        self,
        *,
        keys: KeyRing,
        registry: Registry,
        releases: Releases,
        devices: DeviceRegistry,
        deployer: Deployer,
        rollouts: Rollouts,
        max_model_bytes: int,
        compressor: Compressor | None = None,
        uploads: DataUploads | None = None,
        operators: OperatorStore | None = None,
        audit: AuditLog | None = None,
        enrollment: Enrollment | None = None,
    ) -> None:
        self._keys = keys
        self._registry = registry
        self._releases = releases
        self._devices = devices
        self._deployer = deployer
        self._rollouts = rollouts
        self._max_model_bytes = max_model_bytes
        self._compressor = compressor or Compressor(registry)
        self._uploads = uploads or DataUploads(max_bytes=max_model_bytes)
        self._operators = operators
        self._audit = audit
        self._enrollment = enrollment

    def InitKey(self, request: pb.InitKeyRequest, context: grpc.ServicerContext) -> pb.KeyInfo:
        return serve(
            context, "InitKey", lambda: api.key_info(self._keys.init(rotate=request.rotate))
        )

    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.KeyInfo:
        return serve(
            context,
            "RevokeKey",
            lambda: api.key_info(self._keys.revoke(request.key_id, force=request.force)),
        )

    def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListKeysResponse:
        return serve(
            context,
            "ListKeys",
            lambda: pb.ListKeysResponse(keys=[api.key_info(k) for k in self._keys.list_keys()]),
        )

    def UploadModel(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: grpc.ServicerContext
    ) -> pb.RegisteredModel:
        def upload() -> pb.RegisteredModel:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidInputError("the first message of an upload must be its header")
            header = api.upload_header(first.header)
            t.validate_name("model", header.name)  # before reading any bytes
            data = collect(header, _chunks(request_iterator), max_bytes=self._max_model_bytes)
            return api.registered_model(self._registry.register(header, data))

        return serve(context, "UploadModel", upload)

    def UploadData(
        self, request_iterator: Iterator[pb.UploadDataRequest], context: grpc.ServicerContext
    ) -> pb.UploadedData:
        def upload() -> pb.UploadedData:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidInputError("the first message of an upload must be its header")
            if first.header.purpose not in ("", "eval"):
                raise InvalidInputError(f"unknown upload purpose {first.header.purpose!r}")
            data = self._uploads.collect(_chunks(request_iterator), declared=first.header.size)
            return pb.UploadedData(
                data_id=self._uploads.put(data), size=len(data), max_bytes=self._uploads.max_bytes
            )

        return serve(context, "UploadData", upload)

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        return serve(
            context,
            "ListModels",
            lambda: pb.ListModelsResponse(
                models=[api.registered_model(m) for m in self._registry.list_models(request.name)]
            ),
        )

    def CompressModel(
        self, request: pb.CompressRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.CompressProgress]:
        """Stream the search's progress, then its result. Runs on this call's worker thread
        (plus one search thread); a caller that goes away stops it after the current candidate."""
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        try:
            job = api.compress_job(request)
            if request.eval_data_id:
                job = replace(job, eval_data=self._uploads.get(request.eval_data_id))
            for event in self._compressor.run(job, cancelled=cancelled):
                yield api.compress_progress(event)
        except EdgeFleetError as exc:
            log.info("CompressModel refused: %s", exc)
            fail(context, exc)
        except Exception:
            log.exception("CompressModel failed")
            context.abort(
                grpc.StatusCode.INTERNAL, "CompressModel failed inside the controller; see its log"
            )

    def CreateRelease(
        self, request: pb.CreateReleaseRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseInfo:
        def create() -> pb.ReleaseInfo:
            ref = t.ReleaseRef(
                t.validate_name("release", request.name), t.validate_version(request.version)
            )
            release = self._releases.create(
                ref,
                model_version=request.model_version,
                health=api.health(request),
                notes=request.notes,
                golden=request.golden,
                runtime=request.runtime,
                image=request.image,
                providers=api.providers(request),
                variants=api.variants(request),
                profile_on=tuple(request.profile_on),
            )
            return api.release_info(release)

        return serve(context, "CreateRelease", create)

    def ListReleases(
        self, request: pb.ListReleasesRequest, context: grpc.ServicerContext
    ) -> pb.ListReleasesResponse:
        return serve(
            context,
            "ListReleases",
            lambda: pb.ListReleasesResponse(
                releases=[api.release_info(r) for r in self._releases.list_releases(request.name)]
            ),
        )

    def Deploy(self, request: pb.DeployRequest, context: grpc.ServicerContext) -> pb.DeployResponse:
        def deploy() -> pb.DeployResponse:
            strategy = api.strategy(request)  # before anything is looked up, written or sent
            started = self._deployer.deploy(request.release, request.fleet, strategy)
            return api.deploy_response(started)

        return serve(context, "Deploy", deploy)

    def Rollback(
        self, request: pb.RollbackRequest, context: grpc.ServicerContext
    ) -> pb.DeployResponse:
        return serve(
            context,
            "Rollback",
            lambda: api.deploy_response(
                self._deployer.rollback(request.fleet, to_release=request.to_release)
            ),
        )

    def ListRollouts(
        self, request: pb.ListRolloutsRequest, context: grpc.ServicerContext
    ) -> pb.ListRolloutsResponse:
        limit = min(request.limit or DEFAULT_ROLLOUTS, MAX_ROLLOUTS)
        return serve(
            context,
            "ListRollouts",
            lambda: pb.ListRolloutsResponse(
                rollouts=[
                    api.rollout_page_info(p)
                    for p in self._rollouts.list_pages(
                        request.fleet, limit=limit, device_limit=ROLLOUT_DEVICES
                    )
                ]
            ),
        )

    def GetRollout(self, request: pb.RolloutRef, context: grpc.ServicerContext) -> pb.RolloutInfo:
        return serve(
            context,
            "GetRollout",
            lambda: api.rollout_page_info(
                self._rollouts.page(
                    request.rollout_id,
                    device_limit=min(request.device_limit or ROLLOUT_DEVICES, ROLLOUT_DEVICES),
                ),
                self._rollouts.history(request.rollout_id, device_changes=ROLLOUT_CHANGES),
            ),
        )

    def PauseRollout(self, request: pb.RolloutRef, context: grpc.ServicerContext) -> pb.RolloutInfo:
        return serve(
            context,
            "PauseRollout",
            lambda: api.rollout_info(self._rollouts.pause(request.rollout_id)),
        )

    def ResumeRollout(
        self, request: pb.RolloutRef, context: grpc.ServicerContext
    ) -> pb.RolloutInfo:
        return serve(
            context,
            "ResumeRollout",
            lambda: api.rollout_info(self._rollouts.resume(request.rollout_id)),
        )

    def AbortRollout(self, request: pb.RolloutRef, context: grpc.ServicerContext) -> pb.RolloutInfo:
        return serve(
            context,
            "AbortRollout",
            lambda: api.rollout_info(self._rollouts.abort(request.rollout_id)),
        )

    def ListDevices(
        self, request: pb.ListDevicesRequest, context: grpc.ServicerContext
    ) -> pb.ListDevicesResponse:
        size = min(request.page_size or DEFAULT_DEVICES, MAX_DEVICES)

        def page() -> pb.ListDevicesResponse:
            after = api.page_after(request.page_token, fleet=request.fleet)
            got = self._devices.page(request.fleet, size=size, after=after)
            return pb.ListDevicesResponse(
                devices=[api.device_info(d) for d in got.devices],
                next_page_token=api.page_token(got.next_after, fleet=request.fleet),
                total=got.total,
            )

        return serve(context, "ListDevices", page)

    def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListEventsResponse:
        limit = min(request.limit or DEFAULT_EVENTS, MAX_EVENTS)
        return serve(
            context,
            "ListEvents",
            lambda: pb.ListEventsResponse(
                events=[
                    wire.event_to_pb(e)
                    for e in self._devices.list_events(
                        device_id=request.device_id, fleet=request.fleet, limit=limit
                    )
                ]
            ),
        )

    # --- operators and the audit log (``auth`` has admitted the caller already) -------------

    def AddOperator(
        self, request: pb.AddOperatorRequest, context: grpc.ServicerContext
    ) -> pb.AddOperatorResponse:
        def add() -> pb.AddOperatorResponse:
            made, token = self._operator_store().add(
                request.name, Role.parse(request.role), fleets=request.fleets
            )
            return pb.AddOperatorResponse(operator=operator_info(made), token=token)

        return serve(context, "AddOperator", add)

    def ListOperators(
        self, request: pb.ListOperatorsRequest, context: grpc.ServicerContext
    ) -> pb.ListOperatorsResponse:
        return serve(
            context,
            "ListOperators",
            lambda: pb.ListOperatorsResponse(
                operators=[operator_info(o) for o in self._operator_store().list_operators()]
            ),
        )

    def RevokeOperator(
        self, request: pb.RevokeOperatorRequest, context: grpc.ServicerContext
    ) -> pb.OperatorInfo:
        return serve(
            context,
            "RevokeOperator",
            lambda: operator_info(self._operator_store().revoke(request.name)),
        )

    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.OperatorInfo:
        me = auth.caller()
        if me is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no operator for this call")
        return operator_info(me)

    def ListAudit(
        self, request: pb.ListAuditRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditResponse:
        limit = min(request.limit or DEFAULT_AUDIT, MAX_AUDIT)
        me = auth.caller()
        fleets = me.fleets if me is not None else ()

        def entries() -> pb.ListAuditResponse:
            if self._audit is None:
                raise InvalidInputError("this controller keeps no audit log")
            found = self._audit.list_entries(limit=limit, fleets=fleets)
            return pb.ListAuditResponse(entries=[audit_entry(e) for e in found])

        return serve(context, "ListAudit", entries)

    def _operator_store(self) -> OperatorStore:
        if self._operators is None:
            raise InvalidInputError("this controller has no operator store")
        return self._operators


def operator_info(o: Operator) -> pb.OperatorInfo:
    return pb.OperatorInfo(
        name=o.name,
        role=o.role.value,
        fleets=list(o.fleets),
        created_at_ms=o.created_at_ms,
        revoked_at_ms=o.revoked_at_ms or 0,
    )


def audit_entry(e: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(
        at_ms=e.at_ms,
        operator=e.operator,
        role=e.role,
        method=e.method,
        target=e.target,
        fleet=e.fleet,
        outcome=e.outcome.value,
        detail=e.detail,
        peer=e.peer,
    )
