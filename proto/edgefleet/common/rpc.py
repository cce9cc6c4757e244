"""gRPC at the edges: mapping our errors to status codes and back, and channel helpers.

Servers call ``status_for`` to turn a ``PermanentError`` into the status code a client can act
on; clients call ``error_from_rpc`` to get one clear line back. Every call carries a deadline.
"""

from __future__ import annotations

import grpc

from edgefleet.common import errors

DEFAULT_DEADLINE_S = 10.0

_CODES: list[tuple[type[errors.EdgeFleetError], grpc.StatusCode]] = [
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MalformedMessageError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.SignatureError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermanentError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TransientError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: errors.EdgeFleetError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: errors.EdgeFleetError) -> None:
    """Abort the current RPC with the code and message ``exc`` calls for (raises)."""
    context.abort(status_for(exc), str(exc))


class RpcFailed(errors.EdgeFleetError):
    """A remote call failed; ``code`` says how, ``str()`` is one line for a person."""

    def __init__(self, target: str, code: grpc.StatusCode, detail: str) -> None:
        what = {
            grpc.StatusCode.UNAVAILABLE: f"cannot reach {target}",
            grpc.StatusCode.DEADLINE_EXCEEDED: f"{target} did not answer in time",
        }.get(code)
        super().__init__(f"{what}: {detail}" if what else detail)
        self.code = code
        self.detail = detail


def error_from_rpc(exc: grpc.RpcError, *, target: str) -> RpcFailed:
    # Every RpcError the channel raises is also a grpc.Call; the stubs cannot say so.
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    detail = details_fn() if callable(details_fn) else str(exc)
    return RpcFailed(target, code, detail or code.name)


def channel(target: str) -> grpc.Channel:
    """An insecure channel for loopback and lab use; production configs put mTLS in front."""
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
