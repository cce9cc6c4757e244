"""An OCI registry over the distribution HTTP API: push blobs and manifests, fetch blobs.

Releases travel to registries as OCI artifacts (see ``edgefleet.edgectl.oci_layout`` for the
layout); the agent fetches their blobs from a registry named in ``artifact_sources`` as
``oci://HOST[:PORT]/REPO`` (https, plain http for loopback hosts) or ``oci+http://...``.
``fetch`` resumes from the partial file's size with a ``Range`` header, like
``artifacts.fetch`` over gRPC; verifying the digest stays the caller's job.

Only the standard library: ``urllib.request``. Credentials come from
``EDGEFLEET_REGISTRY_USER``/``EDGEFLEET_REGISTRY_PASSWORD`` as basic auth, and are never
logged. Failures leave as one line: ``TransientError`` (registry unreachable, 5xx),
``NotFoundError`` (no such repository or blob), ``PermanentError`` (refused credentials,
a manifest the registry rejects).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edgefleet.common import digests
from edgefleet.common.artifacts import resume_offset
from edgefleet.common.errors import (
    EdgeFleetError,
    FetchError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BYTES = b"{}"
EMPTY_DIGEST = digests.of_bytes(EMPTY_BYTES)
ARTIFACT_TYPE = "application/vnd.edgefleet.release.v1"
SIGNED_MANIFEST_TYPE = "application/vnd.edgefleet.manifest.signed.v1+protobuf"
MODEL_ONNX_TYPE = "application/vnd.edgefleet.model.onnx"
MODEL_EFPK_TYPE = "application/vnd.edgefleet.model.efpk"
GOLDEN_TYPE = "application/vnd.edgefleet.golden.v1+npz"

USER_ENV = "EDGEFLEET_REGISTRY_USER"
PASSWORD_ENV = "EDGEFLEET_REGISTRY_PASSWORD"  # noqa: S105 (the name of a variable)
SOURCE_SCHEMES = ("oci://", "oci+http://", "oci+https://")
DEFAULT_TIMEOUT_S = 30.0
READ_CHUNK = 256 * 1024

_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    return host.lower() in _LOOPBACK or host.startswith("127.")


def sanitize_tag(text: str) -> str:
    """A valid OCI tag from ``text`` (a semver's ``+build`` becomes ``_build``)."""
    tag = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:128]
    if not tag or tag[0] in ".-":
        tag = "_" + tag[:127]
    return tag


@dataclass(frozen=True)
class RegistryRef:
    """``HOST[:PORT]/REPO[:TAG]``; ``scheme`` is ``http`` or ``https``."""

    host: str
    repo: str
    tag: str = ""
    scheme: str = "https"

    @classmethod
    def parse(cls, text: str, *, plain_http: bool = False) -> RegistryRef:
        host, sep, rest = text.partition("/")
        if not sep or not host or not rest:
            raise InvalidInputError(f"registry must be HOST[:PORT]/REPO[:TAG], got {text!r}")
        repo, tag = rest, ""
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            repo, _, tag = rest.rpartition(":")
            if not _TAG.match(tag):
                raise InvalidInputError(f"not a valid OCI tag: {tag!r}")
        if not _REPO.match(repo):
            raise InvalidInputError(
                f"not a valid repository name: {repo!r} (lowercase, digits, . _ - and /)"
            )
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        scheme = "http" if plain_http or is_loopback(hostname) else "https"
        return cls(host=host, repo=repo, tag=tag, scheme=scheme)

    @classmethod
    def from_source(cls, source: str) -> RegistryRef:
        """``oci://HOST[:PORT]/REPO``, ``oci+http://...`` (plain) or ``oci+https://...``."""
        for prefix in SOURCE_SCHEMES:
            if source.startswith(prefix):
                ref = cls.parse(source.removeprefix(prefix), plain_http=prefix == "oci+http://")
                if prefix == "oci+https://":
                    ref = RegistryRef(ref.host, ref.repo, ref.tag, "https")
                return ref
        raise InvalidInputError(f"not an OCI source: {source!r}")

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repo}"

    def __str__(self) -> str:
        return f"{self.host}/{self.repo}" + (f":{self.tag}" if self.tag else "")


def is_source(source: str) -> bool:
    return source.startswith(SOURCE_SCHEMES)


def credentials(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    env = os.environ if env is None else env
    user = env.get(USER_ENV, "")
    return (user, env.get(PASSWORD_ENV, "")) if user else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Pushes must see the registry's own 3xx answers, not follow them with a GET."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _Progress:
    """A file wrapper that reports each read to ``on_bytes``: the upload progress of a blob."""

    def __init__(self, f: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        self._f = f
        self._on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data and self._on_bytes is not None:
            self._on_bytes(len(data))
        return data


class Registry:
    """One repository on one registry: ``ref.host``/``ref.repo``."""

    def __init__(
        self,
        ref: RegistryRef,
        *,
        auth: tuple[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.ref = ref
        self.timeout_s = timeout_s
        self._auth = auth
        self._push_opener = urllib.request.build_opener(_NoRedirect)
        self._opener = urllib.request.build_opener()

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | _Progress | None = None,
    ) -> urllib.request.Request:
        # url: always http(s), built from a RegistryRef
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if self._auth is not None:
            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            # unredirected: a redirect to a storage backend must not carry our credentials
            req.add_unredirected_header("Authorization", f"Basic {token}")
        return req

    def _open(self, req: urllib.request.Request, *, what: str, follow: bool = True) -> IO[bytes]:
        opener = self._opener if follow else self._push_opener
        try:
            resp: IO[bytes] = opener.open(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, what=what) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"cannot reach registry at {self.ref.host}: {reason}") from None
        return resp

    def _http_error(self, exc: urllib.error.HTTPError, *, what: str) -> EdgeFleetError:
        code = exc.code
        detail = ""
        try:
            body = json.loads(exc.read() or b"{}")
            errors = body.get("errors") or []
            if errors:
                detail = ": " + "; ".join(
                    f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors
                )
        except (ValueError, AttributeError, OSError):
            pass
        finally:
            exc.close()
        where = f"registry {self.ref.host}"
        if code == 401:
            hint = (
                "credentials refused"
                if self._auth is not None
                else f"authentication required (set {USER_ENV} and {PASSWORD_ENV})"
            )
            return PermanentError(f"{where}: {hint} for {what} (HTTP 401)")
        if code == 403:
            return PermanentError(f"{where}: access denied to {what} (HTTP 403){detail}")
        if code == 404:
            return NotFoundError(what, f"{self.ref.host}/{self.ref.repo} (HTTP 404){detail}")
        if code >= 500 or code == 429:
            return TransientError(f"{where}: {what} failed (HTTP {code}){detail}")
        return PermanentError(f"{where}: {what} failed (HTTP {code}){detail}")

    # --- push -------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        req = self._request("HEAD", f"{self.ref.base}/blobs/{digests.validate(digest)}")
        try:
            with self._open(req, what="blob"):
                return True
        except NotFoundError:
            return False

    def push_blob(
        self, path: Path, digest: str, *, on_bytes: Callable[[int], None] | None = None
    ) -> bool:
        """Upload ``path`` as ``digest`` unless the registry has it; True when uploaded.

        One monolithic upload: ``POST .../blobs/uploads/`` then ``PUT <location>?digest=``.
        """
        if self.has_blob(digest):
            return False
        req = self._request(
            "POST", f"{self.ref.base}/blobs/uploads/", headers={"Content-Length": "0"}, data=b""
        )
        with self._open(req, what="repository", follow=False) as resp:
            location = resp.headers.get("Location", "")  # type: ignore[attr-defined]
        if not location:
            raise PermanentError(f"registry {self.ref.host} started an upload without a Location")
        url = urllib.parse.urljoin(f"{self.ref.scheme}://{self.ref.host}/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        size = path.stat().st_size
        with path.open("rb") as f:
            req = self._request(
                "PUT",
                url,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                data=_Progress(f, on_bytes),
            )
            with self._open(req, what=f"blob {digest}", follow=False):
                pass
        return True

    def put_manifest(self, data: bytes, reference: str, *, media_type: str = MANIFEST_TYPE) -> str:
        """PUT a manifest under a tag (or its digest); returns the digest the registry reports."""
        req = self._request(
            "PUT",
            f"{self.ref.base}/manifests/{reference}",
            headers={"Content-Type": media_type},
            data=data,
        )
        with self._open(req, what=f"manifest {reference}", follow=False) as resp:
            reported: str = resp.headers.get("Docker-Content-Digest", "")  # type: ignore[attr-defined]
        return reported or digests.of_bytes(data)

    def get_manifest(self, reference: str, *, media_type: str = MANIFEST_TYPE) -> bytes:
        req = self._request(
            "GET", f"{self.ref.base}/manifests/{reference}", headers={"Accept": media_type}
        )
        with self._open(req, what=f"manifest {reference}") as resp:
            return resp.read()

    def read_blob(self, digest: str) -> bytes:
        req = self._request("GET", f"{self.ref.base}/blobs/{digests.validate(digest)}")
        with self._open(req, what=f"blob {digest}") as resp:
            return resp.read()

    # --- resumable fetch --------------------------------------------------------------------

    def blob_size(self, digest: str) -> int:
        req = self._request("HEAD", f"{self.ref.base}/blobs/{digests.validate(digest)}")
        with self._open(req, what=f"blob {digest}") as resp:
            length = resp.headers.get("Content-Length")  # type: ignore[attr-defined]
        if length is None or not str(length).isdigit():
            raise FetchError(digest, f"registry {self.ref.host} gave no size for the blob")
        return int(length)

    def fetch(
        self,
        digest: str,
        partial: Path,
        *,
        size: int | None = None,
        deadline_s: float = 300.0,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> int:
        """Append ``digest``'s bytes to ``partial`` from its current size; returns the size.

        Same contract as ``artifacts.fetch``: ``on_chunk(done, total)`` after each chunk is on
        disk; ``FetchError`` when the registry fails, ``NotFoundError`` when it lacks the blob,
        ``IntegrityError`` when its size is not ``size`` or its body runs past the size.
        """
        partial.parent.mkdir(parents=True, exist_ok=True)
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            total = self.blob_size(digest)
        except NotFoundError as exc:
            raise NotFoundError("blob", f"{digest} at {self.ref}") from exc
        except EdgeFleetError as exc:
            raise FetchError(digest, str(exc)) from exc
        offset = resume_offset(
            digest, partial, offset, total, size=size, source=str(self.ref), logger=log
        )
        if offset == total:
            return total
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        req = self._request("GET", f"{self.ref.base}/blobs/{digest}", headers=headers)
        ends = time.monotonic() + deadline_s
        try:
            resp = self._open(req, what=f"blob {digest}")
        except NotFoundError as exc:
            raise NotFoundError("blob", f"{digest} at {self.ref}") from exc
        except EdgeFleetError as exc:
            raise FetchError(digest, str(exc)) from exc
        with resp:
            offset = self._check_range(resp, digest, partial, offset)
            with partial.open("ab") as f:
                offset = self._copy(resp, f, digest, offset, total, ends=ends, on_chunk=on_chunk)
        if offset != total:
            raise FetchError(digest, f"{self.ref} ended the body at byte {offset} of {total}")
        return total

    def _check_range(self, resp: IO[bytes], digest: str, partial: Path, offset: int) -> int:
        """The offset the body starts at: ``offset``, or 0 when the server ignored ``Range``."""
        if not offset:
            return 0
        if getattr(resp, "status", 200) == 200:
            log.info("%s ignored the range request; fetching %s whole", self.ref, digest)
            partial.unlink()
            return 0
        content_range = resp.headers.get("Content-Range", "")  # type: ignore[attr-defined]
        start = re.match(r"bytes (\d+)-", content_range)
        if start is None or int(start.group(1)) != offset:
            raise FetchError(digest, f"{self.ref} sent range {content_range!r}, wanted {offset}-")
        return offset

    def _copy(
        self,
        resp: IO[bytes],
        f: IO[bytes],
        digest: str,
        offset: int,
        total: int,
        *,
        ends: float,
        on_chunk: Callable[[int, int], None] | None,
    ) -> int:
        while True:
            try:
                data = resp.read(READ_CHUNK)
            except OSError as exc:  # a connection cut mid-body
                raise FetchError(digest, f"{self.ref}: {exc}") from exc
            if not data:
                return offset
            if offset + len(data) > total:
                raise IntegrityError(
                    digest,
                    f"{offset + len(data)} bytes or more from {self.ref}, past the blob's size "
                    f"of {total}: the download is cut off",
                )
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            offset += len(data)
            # on_chunk may raise (wrong size, stop requested): let it through untouched
            if on_chunk is not None:
                on_chunk(offset, total)
            if time.monotonic() > ends:
                raise FetchError(digest, f"{self.ref}: deadline passed")


def fetch(
    source: str,
    digest: str,
    partial: Path,
    *,
    size: int | None = None,
    deadline_s: float = 300.0,
    on_chunk: Callable[[int, int], None] | None = None,
) -> int:
    """``artifacts.fetch`` for an ``oci://`` source; credentials from the environment."""
    try:
        ref = RegistryRef.from_source(source)
    except InvalidInputError as exc:  # a bad source in a desired state: try the next one
        raise FetchError(digest, str(exc)) from exc
    registry = Registry(ref, auth=credentials())
    return registry.fetch(digest, partial, size=size, deadline_s=deadline_s, on_chunk=on_chunk)
