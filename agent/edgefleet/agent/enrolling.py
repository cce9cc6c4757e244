"""Getting and keeping a device certificate: ``enroll`` (one-time token), ``renew`` (current
certificate), and ``Renewer``, the agent's background check that renews before expiry.

The key is made here and only the CSR leaves the device. A renewal makes a new key too; over
plain gRPC it is proved by the current key's signature over the new CSR (``identities``).
A certificate that lapsed (the device was away too long) cannot be renewed: the Renewer says
so in the log and the device re-enrolls with a new token (``edge-agent enroll``), which
touches nothing but the identity files.

Transport: ``enroll`` takes the controller's enrollment listener (TLS, server certificate
only) with the fleet CA the operator handed over (``--ca-file``) as the only root, so the token
goes only to a server that CA vouches for; ``tls=None`` is plaintext (``--insecure``).
``renew`` and the Renewer take the device listener over mTLS with the current identity
(``tls``), or plaintext with the signed proof (``--insecure``).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable

import grpc

from edgefleet.agent.identity import IdentityFiles, check_interval_s, renew_due
from edgefleet.common import backoff, identities, rpc
from edgefleet.common.errors import EdgeFleetError, InvalidInputError
from edgefleet.common.loops import StoppableLoop
from edgefleet.v1 import enroll_pb2 as pb
from edgefleet.v1 import enroll_pb2_grpc

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGE_AGENT_ENROLL_TOKEN"  # noqa: S105 (the name of a variable)


def _call(
    controller: str,
    fn: Callable[[enroll_pb2_grpc.EnrollmentServiceStub], pb.EnrollResponse],
    *,
    tls: rpc.ClientTls | None,
) -> pb.EnrollResponse:
    channel = rpc.channel(controller, tls=tls)
    try:
        return fn(enroll_pb2_grpc.EnrollmentServiceStub(channel))
    except grpc.RpcError as exc:
        raise rpc.error_from_rpc(exc, target=f"controller at {controller}") from None
    finally:
        channel.close()


def enroll(
    controller: str,
    token: str,
    *,
    files: IdentityFiles,
    ca_pem: bytes | None = None,
    deadline_s: float = rpc.DEFAULT_DEADLINE_S,
) -> identities.CertIdentity:
    """Make a key, trade the token and a CSR for a certificate, store all three.

    ``ca_pem``: the fleet CA the controller's certificate must chain to (TLS); None: plaintext.
    A CA bundle in the answer other than ``ca_pem`` is refused (it is what the device trusts
    from then on)."""
    key = identities.make_key()
    request = pb.EnrollRequest(token=token.strip(), csr_der=identities.make_csr(key))
    tls = rpc.ClientTls(ca_pem=ca_pem) if ca_pem is not None else None
    reply = _call(controller, lambda stub: stub.Enroll(request, timeout=deadline_s), tls=tls)
    if ca_pem is not None and _certs(reply.ca_bundle_pem) != _certs(ca_pem):
        raise InvalidInputError(
            "the controller answered with another CA bundle than --ca-file: not stored"
        )
    files.save(key, reply.certificate_pem, reply.ca_bundle_pem)
    ident = files.identity()
    log.info("enrolled as %s in fleet %s until %s", ident.device_id, ident.fleet, ident.not_after)
    return ident


def _certs(pem: bytes) -> list[bytes]:
    from cryptography import x509  # here: an agent that is not enrolled never needs it
    from cryptography.hazmat.primitives.serialization import Encoding

    return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(pem)]


def renew(
    controller: str,
    *,
    files: IdentityFiles,
    tls: bool = False,
    deadline_s: float = rpc.DEFAULT_DEADLINE_S,
) -> identities.CertIdentity:
    """A new key and certificate, proved by the current ones (``tls``: over mTLS with them)."""
    current = files.load_key()
    key = identities.make_key()
    csr = identities.make_csr(key)
    request = pb.RenewRequest(
        csr_der=csr,
        certificate_pem=files.cert.read_bytes(),
        proof=identities.renewal_proof(current, csr),
    )
    reply = _call(
        controller,
        lambda stub: stub.Renew(request, timeout=deadline_s),
        tls=files.client_tls() if tls else None,
    )
    files.save(key, reply.certificate_pem, reply.ca_bundle_pem)
    ident = files.identity()
    log.info("certificate renewed: %x valid until %s", ident.serial, ident.not_after)
    return ident


class Renewer:
    """A named thread that renews the certificate once ``renew_due`` says so.

    ``clock`` is wall-clock seconds (tests move it); ``on_renewed`` runs after new files are
    in place (the daemon reloads its MQTT client certificate there).
    """

    def __init__(
        self,
        controller: str,
        *,
        files: IdentityFiles,
        on_renewed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        poll_s: float | None = None,
        tls: bool = False,
    ) -> None:
        """``tls``: renew over mTLS with the current certificate (else plaintext, proved)."""
        self._tls = tls
        self._controller = controller
        self._files = files
        self._on_renewed = on_renewed
        self._clock = clock
        self._poll_s = poll_s
        self._failures = 0
        self._loop = StoppableLoop(self._tick, name="agent-renewer")
        self.renewals = 0
        self.last_error = ""

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def check(self) -> float:
        """Renew if due; seconds until the next look."""
        ident = self._files.identity()
        now = dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
        interval = self._poll_s or check_interval_s(ident.not_before, ident.not_after)
        if not renew_due(ident.not_before, ident.not_after, now):
            return interval
        if now >= ident.not_after:
            self.last_error = (
                f"certificate {ident.serial:x} expired at {ident.not_after}: re-enroll this "
                "device with a new token (edgectl device enroll, then edge-agent enroll)"
            )
            log.error("%s", self.last_error)
            return interval
        renew(self._controller, files=self._files, tls=self._tls)
        self.renewals += 1
        self.last_error = ""
        self._on_renewed()
        return interval

    def _tick(self) -> float:
        """One look on the loop's thread: renew if due; a failure retries with full jitter."""
        try:
            wait = self.check()
            self._failures = 0
        except (EdgeFleetError, OSError, ValueError) as exc:
            self.last_error = str(exc)
            wait = backoff.delay(self._failures, base=1.0, cap=300.0, rand=random.random)
            self._failures += 1
            log.warning("certificate renewal failed (%s); again in %.0f s", exc, wait)
        return wait
