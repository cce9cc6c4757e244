"""gRPC at the edges: mapping our errors to status codes and back, and channel helpers.

Servers call ``status_for`` to turn a ``PermanentError`` into the status code a client can act
on; clients call ``error_from_rpc`` to get one clear line back. Every call carries a deadline.

TLS: ``channel(target, tls=ClientTls(...))`` opens a TLS channel that trusts only the given CA
(the fleet CA) and, with a key and certificate, presents them (mTLS); ``server_name`` checks
the server's certificate for another name than the target's host (a neighbour's device id: a
device certificate has no DNS names, so gRPC matches its CN). ``tls=None`` is plaintext.
``peer_certificate(context)`` is the client certificate a server saw in the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from edgefleet.common import deadlines, errors

DEFAULT_DEADLINE_S = deadlines.DEFAULT_DEADLINE_S

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


@dataclass(frozen=True)
class ClientTls:
    """What a TLS channel trusts and presents, PEM bytes."""

    ca_pem: bytes
    """The only roots the server's certificate may chain to (the fleet CA bundle)."""
    key_pem: bytes | None = None
    """The client's private key (mTLS); None: no client certificate."""
    cert_pem: bytes | None = None
    """The client's certificate (chain)."""
    server_name: str = ""
    """The name the server's certificate must carry ("": the target's host)."""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


_LIMITS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def channel(target: str, *, tls: ClientTls | None = None) -> grpc.Channel:
    """A channel to ``target``: TLS as ``tls`` says, plaintext when it is None (loopback, lab,
    ``--insecure``)."""
    if tls is None:
        return grpc.insecure_channel(target, options=_LIMITS)
    options = list(_LIMITS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)


def server_credentials(
    key_pem: bytes, cert_pem: bytes, *, client_ca_pem: bytes | None
) -> grpc.ServerCredentials:
    """TLS for a server; with ``client_ca_pem`` every client must present a certificate that
    chains to it (mTLS), without it none is asked for (grpcio cannot ask and not require)."""
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=client_ca_pem is not None,
    )


def peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The PEM certificate the client presented in the TLS handshake (None: plaintext or none)."""
    found: bytes | list[bytes] = context.auth_context().get("x509_pem_cert") or []
    certs = [found] if isinstance(found, bytes) else list(found)
    return bytes(certs[0]) if certs else None
