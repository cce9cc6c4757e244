"""gRPC shells over ``enrollment``: ``EnrollmentService`` (devices: enroll, renew, on the
listener devices reach) and the device-identity RPCs of ``ControllerService`` (operators:
enroll, revoke, quarantine, remove, list; behind operator auth).

A refused token or certificate is UNAUTHENTICATED; other errors map as everywhere
(``rpc.status_for``). Renew takes the client certificate of the TLS handshake when there is
one (then it must be the certificate the request names, if it names one); over plain gRPC the
request carries the certificate and the current key's signature over the CSR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from edgefleet.common import rpc
from edgefleet.common.errors import EdgeFleetError, InvalidInputError
from edgefleet.controller.enrollment import Certificate, Enrollment, Identity
from edgefleet.controller.errors import IdentityRefusedError
from edgefleet.v1 import controller_pb2_grpc, enroll_pb2_grpc
from edgefleet.v1 import enroll_pb2 as pb

log = logging.getLogger(__name__)

R = TypeVar("R")
MAX_CSR_BYTES = 16 << 10


def _answer(context: grpc.ServicerContext, method: str, call: Callable[[], R]) -> R:
    try:
        return call()
    except IdentityRefusedError as exc:
        log.warning("%s refused: %s", method, exc)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    except EdgeFleetError as exc:
        log.info("%s refused: %s", method, exc)
        context.abort(rpc.status_for(exc), str(exc))
    except Exception:
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside the controller")


def _certificate_pb(c: Certificate) -> pb.EnrollResponse:
    return pb.EnrollResponse(
        device_id=c.device_id,
        fleet=c.fleet,
        certificate_pem=c.pem,
        ca_bundle_pem=c.ca_bundle_pem,
        not_after_ms=c.not_after_ms,
    )


def identity_pb(i: Identity) -> pb.DeviceIdentity:
    return pb.DeviceIdentity(
        device_id=i.device_id,
        fleet=i.fleet,
        labels=dict(i.labels),
        state=i.state.value,
        cert_serial=i.cert_serial,
        cert_not_after_ms=i.cert_not_after_ms,
        created_at_ms=i.created_at_ms,
    )


class EnrollmentServicer(enroll_pb2_grpc.EnrollmentServiceServicer):
    def __init__(self, enrollment: Enrollment) -> None:
        self._enrollment = enrollment

    def Enroll(self, request: pb.EnrollRequest, context: grpc.ServicerContext) -> pb.EnrollResponse:
        if len(request.csr_der) > MAX_CSR_BYTES or len(request.token) > 256:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request too large")
        return _answer(
            context,
            "Enroll",
            lambda: _certificate_pb(self._enrollment.enroll(request.token, request.csr_der)),
        )

    def Renew(self, request: pb.RenewRequest, context: grpc.ServicerContext) -> pb.EnrollResponse:
        if len(request.csr_der) > MAX_CSR_BYTES or len(request.certificate_pem) > MAX_CSR_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request too large")
        found: bytes | list[bytes] = context.auth_context().get("x509_pem_cert") or []
        peer = [found] if isinstance(found, bytes) else list(found)

        def renew() -> pb.EnrollResponse:
            proof: bytes | None
            if peer:
                cert, proof = bytes(peer[0]), None
                if request.certificate_pem and request.certificate_pem.strip() != cert.strip():
                    raise IdentityRefusedError("the request names another certificate")
            else:
                if not request.certificate_pem or not request.proof:
                    raise IdentityRefusedError("renewal needs the current certificate and proof")
                cert, proof = request.certificate_pem, request.proof
            return _certificate_pb(self._enrollment.renew(cert, request.csr_der, proof=proof))

        return _answer(context, "Renew", renew)


class IdentityApi(controller_pb2_grpc.ControllerServiceServicer):
    """The device-identity RPCs of ``ControllerService``; ``service.ControllerServicer`` is
    one of these, so operator auth (``auth.RULES``) covers them like every operator call."""

    _enrollment: Enrollment | None = None

    def _identities(self) -> Enrollment:
        if self._enrollment is None:
            raise InvalidInputError("this controller has no fleet CA configured")
        return self._enrollment

    def EnrollDevice(
        self, request: pb.EnrollDeviceRequest, context: grpc.ServicerContext
    ) -> pb.EnrollDeviceResponse:
        def enroll() -> pb.EnrollDeviceResponse:
            token = self._identities().enroll_device(
                request.device_id,
                fleet=request.fleet,
                labels=dict(request.labels),
                token_ttl_s=request.token_ttl_s,
            )
            return pb.EnrollDeviceResponse(
                device=identity_pb(token.identity),
                token=token.token,
                token_expires_at_ms=token.expires_at_ms,
            )

        return _answer(context, "EnrollDevice", enroll)

    def RevokeDevice(
        self, request: pb.DeviceRef, context: grpc.ServicerContext
    ) -> pb.DeviceIdentity:
        return _answer(
            context,
            "RevokeDevice",
            lambda: identity_pb(self._identities().revoke(request.device_id)),
        )

    def QuarantineDevice(
        self, request: pb.QuarantineRequest, context: grpc.ServicerContext
    ) -> pb.DeviceIdentity:
        return _answer(
            context,
            "QuarantineDevice",
            lambda: identity_pb(
                self._identities().quarantine(request.device_id, lift=request.lift)
            ),
        )

    def RemoveDevice(
        self, request: pb.DeviceRef, context: grpc.ServicerContext
    ) -> pb.DeviceIdentity:
        return _answer(
            context,
            "RemoveDevice",
            lambda: identity_pb(self._identities().remove(request.device_id)),
        )

    def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: grpc.ServicerContext
    ) -> pb.ListIdentitiesResponse:
        return _answer(
            context,
            "ListIdentities",
            lambda: pb.ListIdentitiesResponse(
                devices=[identity_pb(i) for i in self._identities().list_identities(request.fleet)]
            ),
        )
