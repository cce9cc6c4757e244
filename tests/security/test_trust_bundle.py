"""Keys that rotate and are revoked without bricking a fleet, against real parts: a real
controller in this process (real gRPC, SQLite, its MQTT session), real agents as processes
(so restarts are real), in-process agents where a test needs to look inside, a real Mosquitto.

Before the trust bundle an agent trusted only its ``--trusted-key`` files: after ``keys init
--rotate`` every desired state signed by the new key was refused, and an agent restarted with
the new key alone lost its active model. Before expiry a desired state held back for months
still installed; before the rebuild a lost ``state.json`` pruned every installed slot and a
corrupt one stopped the agent from starting.
"""

# ruff: noqa: F811 - the agent tests' fixtures are imported by name and used as parameters

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner, Result

from edgefleet.agent.state import StateFile
from edgefleet.common import desired, signing, topics, trustbundle, wire
from edgefleet.common import types as t
from edgefleet.common.trustbundle import BundleKey, TrustBundle
from edgefleet.demo import digits
from edgefleet.edgectl.app import app
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import trust_pb2
from tests.agent.conftest import (  # noqa: F401 - the agent tests' fixtures, used below
    StartAgent,
    artifacts,
    signer,
    start_agent,
    watch,
)
from tests.agent.helpers import (
    AgentProcess,
    ArtifactServer,
    Release,
    Signer,
    Watcher,
    install,
    model_info,
    offer,
    read_agent_json,
    unique_id,
    wait_for,
)
from tests.conftest import Broker
from tests.controller import support

DEADLINE = 30.0
P = t.InstallPhase


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def bundle_version(data_dir: Path) -> int:
    """The version of the trust bundle an agent persisted (0: none)."""
    try:
        data = (data_dir / "trust.bundle").read_bytes()
    except FileNotFoundError:
        return 0
    msg = trust_pb2.SignedTrustBundle()
    msg.ParseFromString(data)
    return trustbundle.decode_bundle(msg.payload).version


class Retained:
    """A paho client publishing retained messages (and clearing them at the end)."""

    def __init__(self, broker: Broker) -> None:
        host, port = broker.url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("pub"))
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.topics: set[str] = set()

    def publish(self, topic: str, payload: bytes) -> None:
        self.topics.add(topic)
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        for topic in self.topics:
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def retained(broker: Broker) -> Iterator[Retained]:
    r = Retained(broker)
    yield r
    r.close()


# --- rotation and revocation through the controller -----------------------------------------


@pytest.fixture
def ctl(tmp_path: Path, own_broker: Broker) -> Iterator[support.Running]:
    running = support.start(support.settings(tmp_path / "ctl", own_broker.url))
    yield running
    running.stop()


def _release(ctl: support.Running, model: bytes, name: str, version: str) -> str:
    if version == "1.0.0":
        support.upload(ctl.stub, name, model)
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name=name, version=version), timeout=DEADLINE)
    return f"{name}:{version}"


def _all_active(ctl: support.Running, fleet: str, release: str, n: int) -> None:
    want = wire.phase_to_pb(P.ACTIVE)

    def probe() -> bool:
        devices = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=DEADLINE)
        done = [d for d in devices.devices if d.active_release == release and d.phase == want]
        return len(done) == n

    support.eventually(probe, timeout=60, what=f"{n} devices of {fleet} active on {release}")


def edgectl(ctl: support.Running, *args: str | Path) -> Result:
    """``edgectl`` in-process against the controller's operator API, as its admin."""
    runner = CliRunner(env={"EDGECTL_TOKEN": ctl.token})
    return runner.invoke(app, ["--controller", ctl.api, *(str(a) for a in args)])


def _serving(p: AgentProcess) -> str:
    info = read_agent_json(p.data_dir)
    assert info is not None
    return model_info(info["predict_endpoint"]).release


@pytest.mark.slow
def test_rotation_with_agents_restarting_midway_keeps_every_model_and_takes_the_new_key(
    ctl: support.Running, own_broker: Broker, tmp_path: Path, digits_model: digits.TrainedModel
) -> None:
    old = ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    pem_old = tmp_path / "trusted-old.pem"  # what `keys init --out` wrote before the rotation
    pem_old.write_text(trusted_pem(list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)))
    refused = support.rpc_error(lambda: ctl.stub.RevokeKey(pb.RevokeKeyRequest(key_id=old.key_id)))
    assert "active signing key" in refused.message

    fleet, name = support.unique("fleet"), support.unique("digits")
    agents = [
        AgentProcess(
            device_id=f"{fleet}-d{i}",
            data_dir=tmp_path / f"d{i}",
            broker_url=own_broker.url,
            controller=ctl.address,
            key_file=pem_old,
            fleet=fleet,
        )
        for i in range(2)
    ]
    try:
        for p in agents:
            p.start()
        r1 = _release(ctl, digits_model.onnx_bytes, name, "1.0.0")
        support.eventually(
            lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == 2,
            what="both devices registered",
        )
        ctl.stub.Deploy(pb.DeployRequest(release=r1, fleet=fleet), timeout=DEADLINE)
        _all_active(ctl, fleet, r1, 2)
        running, stopped = agents
        assert stopped.terminate() == 0  # down through the rotation

        pem_both = tmp_path / "trusted.pem"
        rotated = edgectl(ctl, "keys", "init", "--rotate", "--out", pem_both, "--json")
        assert rotated.exit_code == 0, rotated.output
        new = json.loads(rotated.stdout)
        assert new["key_id"] != old.key_id and new["created"]
        written = {signing.key_id(k) for k in signing.load_public_keys(pem_both.read_bytes())}
        assert written == {old.key_id, new["key_id"]}  # --out: old and new
        wait_for(
            "the running agent to adopt the rotated bundle",
            lambda: bundle_version(running.data_dir) == 2,
        )
        listed = {k.key_id: k for k in ctl.stub.ListKeys(pb.ListKeysRequest()).keys}
        assert listed[old.key_id].trusted_until_ms > now_ms()  # its overlap window

        # Restarted mid-way with only the old key on its command line: its model stays.
        assert running.terminate() == 0
        running.start()
        assert _serving(running) == r1
        stopped.start()  # back after the rotation: the retained bundle, signed by both keys
        assert _serving(stopped) == r1
        wait_for(
            "the late agent to adopt the rotated bundle",
            lambda: bundle_version(stopped.data_dir) == 2,
        )

        r2 = _release(ctl, digits_model.onnx_bytes, name, "2.0.0")  # signed by the new key
        ctl.stub.Deploy(pb.DeployRequest(release=r2, fleet=fleet), timeout=DEADLINE)
        _all_active(ctl, fleet, r2, 2)
        for p in agents:  # restarted again, still with the old key only: r2 verifies
            assert p.terminate() == 0
            p.start()
            assert _serving(p) == r2

        # Revoking the old key: refused while a device falls back to r1 it signed, then forced.
        refused = edgectl(ctl, "keys", "revoke", old.key_id)
        assert refused.exit_code != 0 and r1 in refused.output
        revoked = edgectl(ctl, "keys", "revoke", old.key_id, "--force")
        assert revoked.exit_code == 0, revoked.output
        for p in agents:
            wait_for(
                "the revocation to reach the agent", lambda p=p: bundle_version(p.data_dir) == 3
            )
        only = support.rpc_error(
            lambda: ctl.stub.RevokeKey(pb.RevokeKeyRequest(key_id=new["key_id"]))
        )
        assert "active signing key" in only.message
        for p in agents:  # and a restart still serves r2, signed by the key that stays
            assert p.terminate() == 0
            p.start()
            assert _serving(p) == r2
    finally:
        for p in agents:
            p.kill()


# --- the bundle's own rules, on an in-process agent ------------------------------------------


def _bundle(version: int, *keys: Ed25519PrivateKey, revoked: tuple[str, ...] = ()) -> TrustBundle:
    return TrustBundle(
        version=version,
        keys=tuple(
            BundleKey(signing.key_id(k.public_key()), signing.public_pem(k.public_key()))
            for k in keys
        ),
        revoked=revoked,
        active_key_id=signing.key_id(keys[-1].public_key()),
        issued_at_ms=now_ms(),
    )


def test_bundle_rollback_unsigned_and_foreign_signed_bundles_are_refused(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    retained: Retained,
    digits_model: digits.TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    keeper = a.agent.trust_keeper
    rotated = signing.generate()
    trust = topics.trust()

    retained.publish(trust, trustbundle.seal_bundle(_bundle(2, signer.key, rotated), [signer.key]))
    wait_for("bundle 2 adopted", lambda: keeper.bundle is not None and keeper.bundle.version == 2)

    refused = keeper.rejected
    foreign = signing.generate()
    attempts = [
        trustbundle.seal_bundle(_bundle(1, signer.key, rotated), [signer.key, rotated]),  # older
        trustbundle.seal_bundle(_bundle(5, foreign), [foreign]),  # signed by a key not trusted
        trust_pb2.SignedTrustBundle(  # not signed at all
            payload=trustbundle.encode_bundle(_bundle(6, foreign))
        ).SerializeToString(),
    ]
    for n, payload in enumerate(attempts, start=1):
        retained.publish(trust, payload)
        wait_for(f"bundle attempt {n} refused", lambda n=n: keeper.rejected == refused + n)
    assert keeper.bundle is not None and keeper.bundle.version == 2
    assert signing.key_id(foreign.public_key()) not in a.agent.trust.key_ids

    # What the adopted bundle added is trusted: a release and desired state by the new key.
    release = signer.release(digits_model.onnx_bytes, version="3.0.0")
    by_rotated = signing.sign(release.signed_manifest.payload, signing.MANIFEST_TYPE, rotated)
    artifacts.publish(release)
    w.publish_desired(
        desired.seal(
            device_id=a.device_id,
            fleet="lab",
            generation=1,
            signed_manifest=by_rotated,
            rollout_id="r1",
            issued_at_ms=now_ms(),
            artifact_sources=[],
            key=rotated,
            expires_at_ms=now_ms() + 600_000,
        )
    )
    w.wait_status(lambda s: s.active_release == release.ref, what="active on the rotated key's")

    # Restarted: the bundle held survives, an older one is still refused.
    a.agent.stop()
    b = start_agent(device_id=a.device_id, data_dir=a.data_dir)
    assert b.agent.trust.version == 2
    assert signing.key_id(rotated.public_key()) in b.agent.trust.key_ids
    before = b.agent.trust_keeper.rejected
    retained.publish(trust, attempts[0])
    wait_for(
        "the old bundle refused after the restart", lambda: b.agent.trust_keeper.rejected > before
    )
    assert b.agent.trust.version == 2


# --- desired-state expiry --------------------------------------------------------------------


def _sealed(
    signer: Signer, release: Release, *, device_id: str, generation: int, expires: int
) -> bytes:
    return desired.seal(
        device_id=device_id,
        fleet="lab",
        generation=generation,
        signed_manifest=release.signed_manifest,
        rollout_id=f"rollout-{generation}",
        issued_at_ms=now_ms(),
        artifact_sources=[],
        key=signer.key,
        expires_at_ms=expires,
    )


def test_an_expired_desired_state_is_refused_and_a_resealed_one_is_a_redelivery(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: digits.TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    v1 = signer.release(digits_model.onnx_bytes, version="1.0.0")
    artifacts.publish(v1)
    w.publish_desired(
        _sealed(signer, v1, device_id=a.device_id, generation=1, expires=now_ms() - 1)
    )
    rejected = w.wait_event("desired_rejected")
    assert "expired" in rejected.message

    # The same generation sealed again (what the controller's re-publish does) installs.
    w.publish_desired(
        _sealed(signer, v1, device_id=a.device_id, generation=1, expires=now_ms() + 600_000)
    )
    w.wait_status(lambda s: s.active_release == v1.ref, what=f"active on {v1.ref}")
    # Re-sealed once more with a fresh expiry: same generation, so nothing new to do; the next
    # generation arriving after it proves it was taken as a redelivery, not refused.
    w.publish_desired(
        _sealed(signer, v1, device_id=a.device_id, generation=1, expires=now_ms() + 900_000)
    )
    v2 = signer.release(digits_model.onnx_bytes, version="2.0.0")
    offer(w, signer, artifacts, v2, 2)
    w.wait_status(lambda s: s.active_release == v2.ref, what=f"active on {v2.ref}")
    assert [e.message for e in w.events if e.kind == "desired_rejected"] == [rejected.message]
    assert [e.generation for e in w.events if e.kind == "install_started"] == [1, 2]


# --- state.json lost or corrupt ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_the_agent_restarts_on_its_verified_slot_when_state_json_is_lost(
    damage: str,
    tmp_path: Path,
    broker: Broker,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: digits.TrainedModel,
) -> None:
    device_id = unique_id()
    p = AgentProcess(
        device_id=device_id,
        data_dir=tmp_path / device_id,
        broker_url=broker.url,
        controller=artifacts.address,
        key_file=signer.key_file,
    )
    w = watch(device_id)
    try:
        p.start()
        install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
        install(w, signer, artifacts, digits_model.onnx_bytes, version="2.0.0", generation=2)
        assert p.terminate() == 0
        state_json = p.data_dir / "state.json"
        if damage == "deleted":
            state_json.unlink()
        else:
            state_json.write_text('{"version": 1, "generation_')
        p.start()
        assert _serving(p) == "digits:2.0.0"
        rebuilt = w.wait_event("state_rebuilt")
        assert "g2" in rebuilt.message and rebuilt.generation == 2
        state = StateFile(state_json).load()
        assert state.generation_applied == 2
        assert state.active is not None and state.active.release == "digits:2.0.0"
        assert state.previous is not None and state.previous.release == "digits:1.0.0"
        assert sorted(d.name for d in (p.data_dir / "slots").iterdir()) == ["g1", "g2"]
        if damage == "corrupt":
            assert (p.data_dir / "state.json.corrupt").exists()
        # The proven generation holds: a replay of generation 1 is stale.
        w.publish_desired(
            signer.desired(
                signer.release(digits_model.onnx_bytes), device_id=device_id, generation=1
            )
        )
        stale = wait_for(
            "the replay refused",
            lambda: [e for e in w.events if e.kind == "desired_rejected" and e.generation == 1],
        )
        assert "stale" in stale[0].message
    finally:
        p.kill()
