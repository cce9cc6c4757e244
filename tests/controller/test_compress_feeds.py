"""Models without a shared sample axis through a real controller: a recurrent model with a
scalar input compressed over a stream of feeds (``--carry state=stateN``) whose eval data is
larger than one message of the controller's API (sent in chunks over ``UploadData``, with the
limit named when it is passed), and the same model released with golden data in the feeds
layout, passing its canary on a real agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.agent import goldenset as agent_golden
from edgefleet.common import feeds
from edgefleet.common.artifacts import BlobStore
from edgefleet.edgectl.app import app
from edgefleet.edgectl.client import ControllerClient
from edgefleet.v1 import controller_pb2 as pb
from tests.compress.test_feeds import CARRY, _by_hand, recurrent, stream, to_npz
from tests.conftest import Broker
from tests.controller import support
from tests.controller.test_compressed_release import real_agent

MESSAGE = (1 << 20) + (64 << 10)  # the API's one-message limit here: a chunk and its framing
EVAL_LIMIT = 4 << 20
DEADLINE = 120.0


@pytest.fixture
def small_ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    s = support.settings(tmp_path / "data", broker.url)
    s = replace(
        s,
        api=replace(s.api, max_message_bytes=MESSAGE),
        registry=replace(s.registry, max_eval_bytes=EVAL_LIMIT),
    )
    running = support.start(s)
    yield running
    running.stop()


def test_a_recurrent_model_compresses_over_a_stream_of_feeds_sent_in_chunks(
    small_ctl: support.Running, tmp_path: Path
) -> None:
    name = support.unique("vad")
    support.upload(small_ctl.stub, name, recurrent())
    data = to_npz(feeds.join(stream(8, length=4000)))  # 8 feeds of x [4000+, 16], sr, state
    assert MESSAGE < len(data) < EVAL_LIMIT
    with pytest.raises(grpc.RpcError) as inline:  # one message: over the API's limit
        list(
            small_ctl.stub.CompressModel(
                pb.CompressRequest(name=name, eval_data=data, carry=["state=stateN"]),
                timeout=DEADLINE,
            )
        )
    assert inline.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    path = tmp_path / "stream.npz"
    path.write_bytes(data)
    runner = CliRunner(env={"EDGECTL_TOKEN": small_ctl.token})
    result = runner.invoke(
        app,
        [
            "--controller",
            small_ctl.api,
            "model",
            "compress",
            name,
            "--eval-data",
            str(path),
            "--carry",
            "state=stateN",
            "--recipe",
            "int8-dynamic",
            "--objective",
            "size",
            "--max-accuracy-drop",
            "20",
            "--golden",
            "always",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["winner"] == "int8-dynamic", report

    (child,) = [
        m
        for m in small_ctl.stub.ListModels(pb.ListModelsRequest(name=name)).models
        if m.parent_version
    ]
    small_ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    info = small_ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name=name, version="2.0.0", model_version=child.version),
        timeout=DEADLINE,
    )
    golden = BlobStore(small_ctl.controller.settings.blobs_dir).read(info.manifest.golden_digest)
    parsed = agent_golden.parse(golden)  # the compressed feeds, as a device reads them
    assert parsed.rows == 8 and parsed.steps[0][0]["sr"].ndim == 0
    assert set(parsed.steps[3][1]) == {"y", "stateN"} and parsed.tolerances
    # one stream on the device: feed 0 gives the state, later feeds take the model's own
    assert parsed.carry == CARRY and "state" in parsed.steps[0][0]
    assert all("state" not in inputs for inputs, _ in parsed.steps[1:])

    client = ControllerClient(small_ctl.api, token=small_ctl.token)
    with pytest.raises(Exception, match=str(EVAL_LIMIT)):  # the limit, in the refusal
        client.upload_data(b"\0" * (EVAL_LIMIT + 1))


def _canary_succeeds(ctl: support.Running, broker: Broker, tmp_path: Path, release: str) -> None:
    """Deploy ``release`` as a one-device canary to a real agent of a fleet of its own: the
    rollout succeeds (its golden check passed on the device) and the agent runs it."""
    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, _):
        answer = ctl.stub.Deploy(
            pb.DeployRequest(
                release=release,
                fleet=fleet,
                strategy=pb.RolloutStrategy(strategy_kind=pb.STRATEGY_KIND_CANARY, canary="1"),
            ),
            timeout=DEADLINE,
        )
        support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")
        runtime = agent.predictor.current
        assert runtime is not None and runtime.release == release


def test_a_model_with_a_scalar_input_passes_its_canary_on_golden_feeds(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    name = support.unique("vad")
    support.upload(ctl.stub, name, recurrent())
    given = stream(4)
    for feed in given[1:]:
        feed["state"] = np.full((2, 1, 8), 0.25, np.float32)  # golden feeds are whole
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    info = ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name=name, version="1.0.0", golden=to_npz(feeds.join(given))),
        timeout=DEADLINE,
    )
    assert info.manifest.golden_digest
    _canary_succeeds(ctl, broker, tmp_path, f"{name}:1.0.0")

    wrong = feeds.join(given) | {feeds.key(0, "sr"): np.array(16000, np.int32)}
    with pytest.raises(grpc.RpcError, match="feed0 input 'sr'"):
        ctl.stub.CreateRelease(
            pb.CreateReleaseRequest(name=name, version="1.0.1", golden=to_npz(wrong)),
            timeout=DEADLINE,
        )


def test_golden_feeds_of_a_recurrent_model_are_checked_as_one_stream_on_a_canary(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    """``carry/state`` = ``stateN`` in the golden data: the controller computes the expected
    outputs along the stream (later feeds leave the state out), the agent checks them so."""
    name = support.unique("vad")
    model = recurrent()
    support.upload(ctl.stub, name, model)
    given = stream(5)  # only feed 0 gives the state
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    with pytest.raises(grpc.RpcError, match="lacks input 'state'"):  # no carry: feeds are whole
        ctl.stub.CreateRelease(
            pb.CreateReleaseRequest(name=name, version="0.9.0", golden=to_npz(feeds.join(given))),
            timeout=DEADLINE,
        )
    streamed = feeds.join(given, feeds.carry_arrays(CARRY))
    info = ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name=name, version="1.0.0", golden=to_npz(streamed)),
        timeout=DEADLINE,
    )
    golden = agent_golden.parse(
        BlobStore(ctl.controller.settings.blobs_dir).read(info.manifest.golden_digest)
    )
    assert golden.carry == CARRY and all("state" not in i for i, _ in golden.steps[1:])
    for (_, expected), (y, state_n) in zip(golden.steps, _by_hand(model, given), strict=True):
        np.testing.assert_allclose(expected["stateN"], state_n, atol=1e-6)
        np.testing.assert_allclose(expected["y"], y, atol=1e-6)

    _canary_succeeds(ctl, broker, tmp_path, f"{name}:1.0.0")

    bad = streamed | {"carry/state": np.array("no-such-output")}
    with pytest.raises(grpc.RpcError, match="'no-such-output' an output"):
        ctl.stub.CreateRelease(
            pb.CreateReleaseRequest(name=name, version="1.0.1", golden=to_npz(bad)),
            timeout=DEADLINE,
        )
