"""Fixtures for the OCI tests: a real distribution registry on a free port, and a release.

The registry is Debian's ``docker-registry`` (distribution 2.8) with filesystem storage in a
temporary directory; tests that need it skip, saying why, where it is not installed. The
release is signed here with a fresh key, so the layout tests need no controller.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.common import digests, signing, wire
from edgefleet.common import types as t
from edgefleet.v1 import common_pb2
from tests.conftest import free_port, wait_port

REGISTRY_BIN = "/usr/bin/docker-registry"


@dataclass
class Registry:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_registry(root: Path, *, auth: str = "") -> tuple[int, subprocess.Popen[bytes]]:
    """Start ``docker-registry`` storing under ``root``; ``auth`` is an extra config block."""
    binary = shutil.which("docker-registry") or REGISTRY_BIN
    if not Path(binary).is_file():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    with (root / "registry.log").open("wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        wait_port(port, proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return port, proc


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    port, proc = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield Registry(port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass(frozen=True)
class Release:
    """A signed release and its blobs, as the controller would serve them."""

    signed: common_pb2.Signed
    manifest: t.Manifest
    blobs: dict[str, bytes]
    trust: signing.TrustStore
    created_ms: int = 1_700_000_000_000


def make_release(*, golden: bool = True, model_size: int = 300_000) -> Release:
    model = bytes(range(256)) * (model_size // 256) + b"tail"
    golden_bytes = b"PK\x03\x04 golden npz stand-in" * 100 if golden else b""
    m = t.Manifest(
        name="digits",
        version="1.2.0",
        model_digest=digests.of_bytes(model),
        model_size=len(model),
        inputs=(t.TensorSpec("x", "float32", (-1, 64)),),
        outputs=(t.TensorSpec("y", "float32", (-1, 10)),),
        golden_digest=digests.of_bytes(golden_bytes) if golden else "",
        golden_size=len(golden_bytes),
    )
    key = signing.generate()
    envelope = signing.sign(wire.encode_manifest(m), signing.MANIFEST_TYPE, key)
    blobs = {m.model_digest: model}
    if golden:
        blobs[m.golden_digest] = golden_bytes
    return Release(
        signed=wire.envelope_to_pb(envelope),
        manifest=m,
        blobs=blobs,
        trust=signing.TrustStore([key.public_key()]),
    )


@pytest.fixture
def release() -> Release:
    return make_release()
