"""Signing keys and releases: InitKey, ListKeys, CreateRelease, ListReleases."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import grpc
import pytest

from edgefleet.common import desired, signing, wire
from edgefleet.common.errors import SignatureError
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import ReleaseRef
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support


def test_init_key_is_idempotent_and_keeps_the_private_key_out_of_the_db(
    ctl: support.Running, tmp_path: Path
) -> None:
    first = ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    again = ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    rotated = ctl.stub.InitKey(pb.InitKeyRequest(rotate=True), timeout=5)

    assert first.created and first.active and first.key_id.startswith("ed25519:")
    assert not again.created and again.key_id == first.key_id
    assert rotated.created and rotated.key_id != first.key_id
    keys = ctl.stub.ListKeys(pb.ListKeysRequest(), timeout=5).keys
    assert [(k.key_id, k.active) for k in keys] == [(first.key_id, False), (rotated.key_id, True)]
    for k in keys:
        path = tmp_path / "data" / "keys" / f"{k.key_id}.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "PRIVATE KEY" in path.read_text()
    dump = "\n".join(sqlite3.connect(tmp_path / "data" / "controller.db").iterdump())
    assert "PRIVATE" not in dump


def test_release_without_a_key_is_a_clear_failed_precondition(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)

    err = support.rpc_error(
        lambda: ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version="1.0.0"))
    )

    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "no signing key: run `edgectl keys init`"


def test_release_is_signed_and_listed(
    ctl: support.Running, digits_model: TrainedModel, digits_model_v2: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    m1 = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    m2 = support.upload(ctl.stub, "digits", digits_model_v2.onnx_bytes)

    r2 = ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version="1.1.0"), timeout=5)
    r1 = ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name="digits", version="1.0.0", model_version=1, notes="first"),
        timeout=5,
    )

    assert (r2.manifest.model_digest, r2.manifest.model_version) == (m2.digest, 2)
    assert (r1.manifest.model_digest, r1.manifest.model_size) == (m1.digest, m1.size)
    assert r1.manifest.inputs == m1.inputs and r1.manifest.outputs == m1.outputs
    assert r1.manifest.health.smoke_inference and r1.manifest.health.max_load_failures == 3
    assert r1.manifest.annotations["notes"] == "first"
    listed = ctl.stub.ListReleases(pb.ListReleasesRequest(name="digits"), timeout=5).releases
    assert [r.version for r in listed] == ["1.0.0", "1.1.0"]  # semver order
    assert list(listed) == [r1, r2]


def test_manifest_signature_verifies_with_the_listed_public_keys(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    key = ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    info = ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name="digits", version="2.0.0"), timeout=5
    )

    signed = ctl.controller.releases.get(ReleaseRef("digits", "2.0.0")).signed_manifest
    manifest, digest = desired.open_manifest(signed, support.trust(ctl.stub))

    assert info.key_id == signed.key_id == key.key_id
    assert digest == info.manifest_digest
    assert wire.manifest_to_pb(manifest) == info.manifest
    other = TrustStore([signing.generate().public_key()])
    with pytest.raises(SignatureError):
        desired.open_manifest(signed, other)


def test_duplicate_release_is_already_exists(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    request = pb.CreateReleaseRequest(name="digits", version="1.0.0")
    ctl.stub.CreateRelease(request, timeout=5)

    err = support.rpc_error(lambda: ctl.stub.CreateRelease(request, timeout=5))

    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    assert err.details() == "release digits:1.0.0 already exists"


def test_release_of_an_unknown_model_or_bad_version(ctl: support.Running) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)

    unknown = support.rpc_error(
        lambda: ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="ghost", version="1.0.0"))
    )
    bad = support.rpc_error(
        lambda: ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="ghost", version="1.0"))
    )

    assert unknown.code == grpc.StatusCode.NOT_FOUND
    assert unknown.details() == "unknown model: ghost"
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "semver" in bad.details()
