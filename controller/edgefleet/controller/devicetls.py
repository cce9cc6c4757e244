"""TLS on the listeners devices reach (``server`` wires them; ``--tls``).

Two listeners, because grpcio's server either requires a client certificate or never asks for
one: the **device port** (``--grpc``) is mTLS, a client certificate of the fleet CA required
in the handshake, and ``DeviceGate`` admits an ArtifactService call only when that certificate
is one the registry issued and has not revoked, of a device not revoked
(``Enrollment.check_certificate``: the CRL's source, read per call, so a revocation applies to
the next call); EnrollmentService.Renew there takes the handshake's certificate. The
**enrollment port** (``--enroll-listen``) is TLS with the server certificate only, for a device
with no certificate yet: it trades a one-time token for one (the agent checks the server
against the CA file the operator handed over with the token).

Authorisation on the device port: any enrolled, unrevoked device may read any blob. Blobs are
content-addressed (a caller must know the digest, which only signed desired states carry) and
release blobs are signed, not secret; a device fetching what its own desired states do not
name is not refused. ``DeviceGate`` keeps the caller's identity for the call
(``caller_device()``) for the servicers and the log.

The server certificate is issued by the fleet CA at every start (``server_certificate``), for
the advertised host, the bound host, the machine's name, ``localhost`` and ``127.0.0.1``,
valid ``SERVER_DAYS``; nothing of it is stored.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from edgefleet.common import identities, rpc
from edgefleet.common.errors import InvalidInputError
from edgefleet.controller.errors import IdentityRefusedError
from edgefleet.controller.pki import CertificateAuthority, KeyPair

log = logging.getLogger(__name__)

SERVER_DAYS = 365
GATED = ("/edgefleet.v1.ArtifactService/",)
"""Method prefixes ``DeviceGate`` admits only for an enrolled, unrevoked device."""
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - recognising, not binding

_caller: contextvars.ContextVar[identities.CertIdentity | None] = contextvars.ContextVar(
    "edgefleet_device_caller", default=None
)


def caller_device() -> identities.CertIdentity | None:
    """The device whose certificate the current gated call came with (None: none)."""
    return _caller.get()


def server_hosts(*addresses: str) -> list[str]:
    """The names a server certificate for these HOST:PORT addresses should carry."""
    hosts: list[str] = []
    for address in addresses:
        if not address:
            continue
        host = address.rpartition(":")[0].strip("[]")
        if host in _WILDCARDS:
            host = socket.gethostname()
        hosts.append(host)
    hosts += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(hosts))


def server_certificate(ca: CertificateAuthority, hosts: list[str], *, now: dt.datetime) -> KeyPair:
    """A fresh server key and certificate (chain: the CA bundle after it) for ``hosts``."""
    pair = ca.issue_server(hosts, lifetime=dt.timedelta(days=SERVER_DAYS), now=now)
    return KeyPair(pair.key_pem, pair.cert_pem + ca.bundle_pem)


def controller_client(ca: CertificateAuthority, *, now: dt.datetime) -> KeyPair:
    """The controller's client certificate for agents' peer listeners (Benchmark): CN
    ``identities.CONTROLLER_IDENTITY``, valid ``SERVER_DAYS``, made at start, never stored."""
    return ca.issue_client(
        identities.CONTROLLER_IDENTITY, lifetime=dt.timedelta(days=SERVER_DAYS), now=now
    )


class DeviceGate(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Admit calls to ``GATED`` methods only with a current, unrevoked device certificate.

    ``check(pem)`` is ``Enrollment.check_certificate``: it raises ``IdentityRefusedError`` (or
    ``InvalidInputError``) for anything else; the call is then UNAUTHENTICATED.
    """

    def __init__(self, check: Callable[[bytes], identities.CertIdentity]) -> None:
        self._check = check
        self.refused = 0

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(GATED):
            return handler
        return _wrapped(handler, self._admit)

    def _admit(self, context: grpc.ServicerContext) -> identities.CertIdentity:
        pem = rpc.peer_certificate(context)
        try:
            if pem is None:
                raise IdentityRefusedError("a device certificate is required on this port")
            return self._check(pem)
        except (IdentityRefusedError, InvalidInputError) as exc:
            self.refused += 1
            log.warning("device call from %s refused: %s", context.peer(), exc)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise AssertionError("unreachable: abort raises") from None


def _wrapped(
    handler: grpc.RpcMethodHandler[Any, Any],
    admit: Callable[[grpc.ServicerContext], identities.CertIdentity],
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with ``admit`` run first (its identity held for the call)."""
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            token = _caller.set(admit(context))
            try:
                return inner_uu(request, context)
            finally:
                _caller.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            ident = admit(context)
            log.debug("%s (fleet %s) streams a blob", ident.device_id, ident.fleet)
            token = _caller.set(ident)
            try:
                yield from inner_us(request, context)
            finally:
                _caller.reset(token)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise InvalidInputError("DeviceGate guards unary requests only")  # ArtifactService's kind
