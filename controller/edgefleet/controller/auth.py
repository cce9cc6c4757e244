"""Who may call what on the operator API: the role and scope policy, and the gRPC interceptor.

Every ``ControllerService`` call passes ``OperatorAuth`` before its servicer method runs:

1. ``authorization: Bearer <token>`` metadata names an operator (``operators``); none, an
   unknown token or a revoked one is UNAUTHENTICATED.
2. ``decide`` checks the method's rule (``RULES``, one per method; a method without one is
   refused): the operator's role must reach the rule's, a fleet-scoped operator may act only
   on its fleets (the fleet a request names, or the fleet of the rollout or device it names),
   and calls that act on every fleet (keys, operators) need an unscoped operator. A refusal is
   PERMISSION_DENIED. Listings by a scoped operator are narrowed to its fleets.
3. Every mutating call, and every refused call, is written to the audit log with its outcome.

The policy (``Rule``, ``RULES``, ``decide``) is pure; ``OperatorAuth`` is the gRPC shell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from sqlalchemy import select

from edgefleet.controller.audit import AuditLog, Outcome
from edgefleet.controller.db import Database, DeviceRow, EnrolledDeviceRow, RolloutRow
from edgefleet.controller.operators import Operator, OperatorStore, Role

log = logging.getLogger(__name__)

SERVICE = "edgefleet.v1.ControllerService"
METADATA_KEY = "authorization"
SCHEME = "bearer "

_CALLER: ContextVar[Operator | None] = ContextVar("edgefleet_operator", default=None)


def caller() -> Operator | None:
    """The operator of the unary call being served on this thread (set by ``OperatorAuth``)."""
    return _CALLER.get()


# --- policy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    role: Role
    """The lowest role allowed to call the method."""
    mutating: bool = False
    """Changes something: always written to the audit log."""
    everywhere: bool = False
    """Acts on every fleet at once (signing keys, operators): no fleet-scoped operator may."""
    needs_fleet: bool = False
    """Acts on the one fleet the request names: a scoped operator must name one of its own."""
    listing: bool = False
    """Lists across fleets: a scoped operator sees its own fleets' rows only."""


_V, _R, _D, _A = Role.VIEWER, Role.RELEASER, Role.DEPLOYER, Role.ADMIN

RULES: dict[str, Rule] = {
    "ListKeys": Rule(_V),
    "ListModels": Rule(_V),
    "ListReleases": Rule(_V),
    "ListDevices": Rule(_V, listing=True),
    "ListEvents": Rule(_V, listing=True),
    "ListRollouts": Rule(_V, listing=True),
    "GetRollout": Rule(_V),
    "WhoAmI": Rule(_V),
    "ListAudit": Rule(_V),
    "UploadModel": Rule(_R, mutating=True),
    "CompressModel": Rule(_R, mutating=True),
    "UploadData": Rule(_R, mutating=True),
    "CreateRelease": Rule(_R, mutating=True),
    "Deploy": Rule(_D, mutating=True, needs_fleet=True),
    "Rollback": Rule(_D, mutating=True, needs_fleet=True),
    "PauseRollout": Rule(_D, mutating=True),
    "ResumeRollout": Rule(_D, mutating=True),
    "AbortRollout": Rule(_D, mutating=True),
    "InitKey": Rule(_A, mutating=True, everywhere=True),
    "RevokeKey": Rule(_A, mutating=True, everywhere=True),
    "AddOperator": Rule(_A, mutating=True, everywhere=True),
    "RevokeOperator": Rule(_A, mutating=True, everywhere=True),
    "ListOperators": Rule(_A, everywhere=True),
    "ListIdentities": Rule(_V, listing=True),
    "EnrollDevice": Rule(_D, mutating=True, needs_fleet=True),
    "QuarantineDevice": Rule(_D, mutating=True, needs_fleet=True),
    "RevokeDevice": Rule(_A, mutating=True, needs_fleet=True),
    "RemoveDevice": Rule(_A, mutating=True, needs_fleet=True),
}


@dataclass(frozen=True)
class Target:
    """What a call is about, for the scope check and the audit log."""

    text: str = ""
    fleet: str = ""
    """The fleet it acts on or lists; empty = none named (or none known)."""


def decide(operator: Operator, method: str, target: Target) -> str | None:
    """None if ``operator`` may call ``method`` on ``target``, else why not (one line)."""
    rule = RULES.get(method)
    if rule is None:
        return f"{method} is not open to operators"
    if not operator.role.allows(rule.role):
        return f"{method} needs role {rule.role} or above; {operator.name} is {operator.role}"
    if not operator.scoped:
        return None
    scope = ",".join(operator.fleets)
    if rule.everywhere:
        return f"{method} acts on every fleet; {operator.name} is limited to fleets {scope}"
    if target.fleet and not operator.covers(target.fleet):
        return f"{operator.name} is limited to fleets {scope}, not {target.fleet}"
    if rule.needs_fleet and not target.fleet:
        return f"{method} must name a fleet; {operator.name} is limited to fleets {scope}"
    return None


# --- the gRPC shell -------------------------------------------------------------------------


class Resolver:
    """The fleet of a rollout or a device, read from the database (None: unknown)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def rollout_fleet(self, rollout_id: str) -> str | None:
        with self._db.read() as session:
            return session.scalar(
                select(RolloutRow.fleet).where(RolloutRow.rollout_id == rollout_id)
            )

    def device_fleet(self, device_id: str) -> str | None:
        """The registry's fleet of an enrolled device, else the fleet it reported."""
        with self._db.read() as session:
            enrolled = session.scalar(
                select(EnrolledDeviceRow.fleet).where(EnrolledDeviceRow.device_id == device_id)
            )
            if enrolled is not None:
                return enrolled
            return session.scalar(select(DeviceRow.fleet).where(DeviceRow.device_id == device_id))


def target_of(method: str, request: Any, resolve: Resolver) -> Target:
    """What ``request`` (a ``controller_pb2`` message, or None) of ``method`` is about."""
    if request is None:
        return Target()
    if method in ("Deploy", "Rollback"):
        what = request.release if method == "Deploy" else request.to_release
        return Target(f"{what} -> {request.fleet}" if what else request.fleet, request.fleet)
    if method in ("GetRollout", "PauseRollout", "ResumeRollout", "AbortRollout"):
        return Target(request.rollout_id, resolve.rollout_fleet(request.rollout_id) or "")
    if method in ("ListDevices", "ListRollouts"):
        return Target(request.fleet, request.fleet)
    if method == "ListEvents":
        fleet = request.fleet
        if request.device_id:
            fleet = resolve.device_fleet(request.device_id) or fleet
        return Target(request.device_id or request.fleet, fleet)
    if method in _MODEL_METHODS:
        return _model_target(method, request, resolve)
    if method in ("AddOperator", "RevokeOperator"):
        return Target(request.name)
    if method in ("InitKey", "RevokeKey"):  # RevokeKey: the key; InitKey: what it does
        init = "rotate" if getattr(request, "rotate", False) else "init"
        return Target(request.key_id if method == "RevokeKey" else init)
    if method in _IDENTITY_METHODS:
        return _identity_target(method, request, resolve)
    return Target()


_MODEL_METHODS = ("UploadModel", "UploadData", "CompressModel", "CreateRelease")


def _model_target(method: str, request: Any, resolve: Resolver) -> Target:
    """Models and releases: the name (and the fleet of a ``--profile-on`` device)."""
    if method == "UploadModel":
        is_header = request.WhichOneof("part") == "header"
        return Target(request.header.name if is_header else "")
    if method == "CompressModel":
        fleet = (resolve.device_fleet(request.profile_on) or "") if request.profile_on else ""
        return Target(request.name, fleet)
    if method == "CreateRelease":
        return Target(f"{request.name}:{request.version}")
    return Target("")  # UploadData: bytes without a name yet


_IDENTITY_METHODS = (
    "EnrollDevice",
    "RevokeDevice",
    "QuarantineDevice",
    "RemoveDevice",
    "ListIdentities",
)


def _identity_target(method: str, request: Any, resolve: Resolver) -> Target:
    """Device identities (``identityservice``): the fleet named, or the device's."""
    if method == "EnrollDevice":  # (enrollment refuses moving a device to another fleet)
        return Target(f"{request.device_id} -> {request.fleet}", request.fleet)
    if method == "ListIdentities":
        return Target(request.fleet, request.fleet)
    return Target(request.device_id, resolve.device_fleet(request.device_id) or "")


def bearer_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == METADATA_KEY and isinstance(value, str) and value.lower().startswith(SCHEME):
            return value[len(SCHEME) :].strip()
    return ""


@dataclass
class _Call:
    method: str
    peer: str
    operator: Operator | None = None
    target: Target = field(default_factory=Target)


class Denied(Exception):
    """Raised inside the interceptor after it aborted the call (never leaves gRPC)."""


class OperatorAuth(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, operators: OperatorStore, audit: AuditLog, resolve: Resolver) -> None:
        self._operators = operators
        self._audit = audit
        self._resolve = resolve

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        service, _, method = str(handler_call_details.method).lstrip("/").rpartition("/")
        if handler is None or service != SERVICE:
            return handler
        return self._wrap(method, handler)

    # Each kind of handler gets a wrapper that admits the call first, runs it, then audits it.

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if not handler.request_streaming and not handler.response_streaming:
            behavior = handler.unary_unary
            assert behavior is not None

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                call = self._admit(method, request, context)
                reset = _CALLER.set(call.operator)
                try:
                    response = self._run(call, context, lambda: behavior(request, context))
                finally:
                    _CALLER.reset(reset)
                return self._narrow(call, response)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
        if not handler.request_streaming:
            stream_behavior = handler.unary_stream
            assert stream_behavior is not None

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call = self._admit(method, request, context)
                yield from self._run_stream(call, context, stream_behavior(request, context))

            return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)

        def admitted(call: _Call, requests: Iterator[Any]) -> Iterator[Any]:
            """The request stream, with the call's target taken from its first message."""
            for i, msg in enumerate(requests):
                if i == 0:
                    call.target = target_of(method, msg, self._resolve)
                yield msg

        if not handler.response_streaming:
            upload = handler.stream_unary
            assert upload is not None

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                call = self._admit(method, None, context)
                return self._run(call, context, lambda: upload(admitted(call, requests), context))

            return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
        both = handler.stream_stream
        assert both is not None

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            call = self._admit(method, None, context)
            yield from self._run_stream(call, context, both(admitted(call, requests), context))

        return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)

    def _admit(self, method: str, request: Any, context: grpc.ServicerContext) -> _Call:
        """Authenticate and authorize, or abort the call (audited, logged) with the reason."""
        call = _Call(method, peer=context.peer())
        token = bearer_token(context.invocation_metadata())
        operator = self._operators.by_token(token) if token else None
        call.target = target_of(method, request, self._resolve)
        if operator is None or operator.revoked_at_ms is not None:
            if not token:
                why = "no operator token: send 'authorization: Bearer <token>' metadata"
            elif operator is None:
                why = "invalid operator token"
            else:
                why = f"the token of operator {operator.name} is revoked"
            self._deny(call, context, grpc.StatusCode.UNAUTHENTICATED, why)
        call.operator = operator
        why_not = decide(operator, method, call.target)
        if why_not is not None:
            self._deny(call, context, grpc.StatusCode.PERMISSION_DENIED, why_not)
        rule = RULES[method]
        if rule.listing and len(operator.fleets) == 1 and not call.target.fleet:
            request.fleet = operator.fleets[0]  # the listing's own limit then applies to it
        return call

    def _deny(
        self, call: _Call, context: grpc.ServicerContext, code: grpc.StatusCode, why: str
    ) -> NoReturn:
        who = call.operator.name if call.operator else "anonymous"
        log.warning("%s %s by %s from %s: %s", code.name, call.method, who, call.peer, why)
        self._write(call, Outcome.DENIED, why)
        context.abort(code, why)
        raise Denied(why)  # (abort raised already)

    def _run(self, call: _Call, context: grpc.ServicerContext, run: Callable[[], Any]) -> Any:
        try:
            response = run()
        except BaseException:
            self._done(call, context, failed=True)
            raise
        self._done(call, context)
        return response

    def _run_stream(
        self, call: _Call, context: grpc.ServicerContext, responses: Iterator[Any]
    ) -> Iterator[Any]:
        try:
            yield from responses
        except BaseException:
            self._done(call, context, failed=True)
            raise
        self._done(call, context)

    def _done(self, call: _Call, context: grpc.ServicerContext, *, failed: bool = False) -> None:
        if not RULES[call.method].mutating:
            return
        code = context.code()  # type: ignore[attr-defined]  # (grpcio has it; stubs do not)
        if failed or (code is not None and code != grpc.StatusCode.OK):
            detail = context.details() or "failed"  # type: ignore[attr-defined]
            name = code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"
            self._write(call, Outcome.ERROR, f"{name}: {_text(detail)}")
        else:
            self._write(call, Outcome.OK)

    def _write(self, call: _Call, outcome: Outcome, detail: str = "") -> None:
        operator = call.operator
        try:
            self._audit.record(
                operator=operator.name if operator else "",
                role=operator.role.value if operator else "",
                method=call.method,
                target=call.target.text,
                fleet=call.target.fleet,
                outcome=outcome,
                detail=detail,
                peer=call.peer,
            )
        except Exception:
            log.exception("cannot write the audit log entry of %s", call.method)

    def _narrow(self, call: _Call, response: Any) -> Any:
        """A scoped operator's listing, without the other fleets' rows."""
        operator = call.operator
        if operator is None or not operator.scoped or not RULES[call.method].listing:
            return response
        if call.method in ("ListDevices", "ListIdentities"):
            keep = [d for d in response.devices if operator.covers(d.fleet)]
            del response.devices[:]
            response.devices.extend(keep)
            if call.method == "ListDevices" and not call.target.fleet:
                response.total = 0  # it counted every fleet's devices: not for this operator
        elif call.method == "ListRollouts":
            keep = [r for r in response.rollouts if operator.covers(r.fleet)]
            del response.rollouts[:]
            response.rollouts.extend(keep)
        elif call.method == "ListEvents":
            fleets: dict[str, str] = {}
            for e in response.events:
                if e.device_id not in fleets:
                    fleets[e.device_id] = self._resolve.device_fleet(e.device_id) or ""
            keep = [e for e in response.events if operator.covers(fleets[e.device_id])]
            del response.events[:]
            response.events.extend(keep)
        return response


def _text(detail: object) -> str:
    return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
