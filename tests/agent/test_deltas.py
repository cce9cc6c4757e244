"""Delta installs against a real broker, a real ArtifactService and real ONNX Runtime: a release
that fine-tunes one layer moves only the chunks that changed, and nothing unverified is used.

Each test acts as the controller: it chunks the model as the controller does
(``chunking.split``), serves every chunk as a blob of its own, and signs the chunk list in the
manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from edgefleet.agent.metrics import AgentMetrics
from edgefleet.common import chunking, digests, signing, wire
from edgefleet.common import types as t
from tests.agent.conftest import StartAgent
from tests.agent.helpers import ArtifactServer, Release, Signer, Watcher, active_on
from tests.deltas.models import INPUTS, OUTPUTS, mlp


def chunked_release(
    signer: Signer, artifacts: ArtifactServer, model: bytes, version: str
) -> Release:
    """Sign ``model`` as a chunked release and serve its chunks (not the whole blob)."""
    plain = signer.release(model, version=version, name="mlp", inputs=INPUTS, outputs=OUTPUTS)
    pieces = chunking.split(model)
    for _, data in pieces:
        artifacts.put(data)
    manifest = replace(plain.manifest, model_chunks=tuple(c for c, _ in pieces))
    payload = wire.encode_manifest(manifest)
    env = signing.sign(payload, signing.MANIFEST_TYPE, signer.key)
    return Release(manifest, env, digests.of_bytes(payload), model)


def downloaded(metrics: AgentMetrics) -> float:
    """The agent's artifact-download counter: every byte it fetched, whole blobs or chunks."""
    return float(metrics.registry.get_sample_value("edgefleet_download_bytes_total") or 0)


def test_one_layer_release_fetches_only_the_changed_chunks(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    base, tuned = mlp(), mlp(tuned_layer=3)
    v1 = chunked_release(signer, artifacts, base, "1.0.0")
    w.publish_desired(signer.desired(v1, device_id=a.device_id, generation=1))
    w.wait_status(active_on(v1.ref), what="active on v1")
    assert downloaded(a.agent.metrics) == len(base)  # nothing held yet: every chunk fetched

    v2 = chunked_release(signer, artifacts, tuned, "1.1.0")
    held = {c.digest for c in v1.manifest.model_chunks}
    changed = [c for c in v2.manifest.model_chunks if c.digest not in held]
    before = len(artifacts.fetches)
    w.publish_desired(signer.desired(v2, device_id=a.device_id, generation=2))
    w.wait_status(active_on(v2.ref), what="active on v2")

    fetched = {d for d, _ in artifacts.fetches[before:]}
    assert fetched == {c.digest for c in changed}
    delta = sum(c.size for c in changed)
    assert downloaded(a.agent.metrics) == len(base) + delta
    assert 0 < delta < len(tuned) // 4  # one layer of eight, and the chunks at its edges
    assert digests.of_file(a.data_dir / "slots" / "g2" / "model.onnx") == digests.of_bytes(tuned)
    event = w.wait_event("delta_fetched", generation=2)
    assert f"{len(changed)} of {len(v2.manifest.model_chunks)} chunks fetched" in event.message


def test_a_corrupt_chunk_is_caught_and_never_installed(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    v1 = chunked_release(signer, artifacts, mlp(), "1.0.0")
    w.publish_desired(signer.desired(v1, device_id=a.device_id, generation=1))
    w.wait_status(active_on(v1.ref), what="active on v1")

    tuned = mlp(tuned_layer=5)
    v2 = chunked_release(signer, artifacts, tuned, "1.1.0")
    held = {c.digest for c in v1.manifest.model_chunks}
    changed = next(c for c in v2.manifest.model_chunks if c.digest not in held)
    lie = bytearray(artifacts.store.read(changed.digest))
    lie[len(lie) // 2] ^= 0xFF  # same size, other bytes: the source lies
    artifacts.put_as(changed.digest, bytes(lie))
    w.publish_desired(signer.desired(v2, device_id=a.device_id, generation=2))

    failed = w.wait_event("install_failed", generation=2)
    assert "IntegrityError" in failed.message and changed.digest in failed.message
    status = w.wait_status(lambda s: s.phase is t.InstallPhase.FAILED, what="failed")
    assert status.active_release == v1.ref
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]
