"""Predict errors that blame the right party (``edgefleet.agent.blame``).

What ONNX Runtime raises at run time for a caller's inconsistent inputs is INVALID_ARGUMENT
with ORT's message, counted as ``reason="invalid_input"``, never a runtime failure of the
release's health window and never forwarded; what it raises for inputs that fit the model and
agree with each other is the release's failure and still rolls it back. Real ONNX Runtime on
models built here, real agents (in-process and a real ``edge-agent`` process) on a real broker.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent import blame
from edgefleet.agent.errors import InferenceFailedError, RefusedInputError
from edgefleet.agent.runtime import LoadedModel, ModelRuntime, spec_of
from edgefleet.common import types as t
from edgefleet.controller.rollouts import engine, rows, strategy
from edgefleet.controller.rollouts.engine import Report, RolloutPhase
from tests.agent.conftest import RunningAgent, Spawn, StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Release,
    Signer,
    Watcher,
    active_on,
    offer,
    predict,
    wait_for,
)

F32 = np.float32
P = t.InstallPhase

# --- the pure rules --------------------------------------------------------------------------


class Fail(Exception):
    """Named like ORT's class for its status FAIL (``onnxruntime_pybind11_state.Fail``)."""


class InvalidArgument(Exception):
    """Named like ORT's class for its status INVALID_ARGUMENT."""


BROADCAST = Fail(
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Add node. "
    "Name:'' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/math/"
    "element_wise_ops.h:563 void onnxruntime::BroadcastIterator::Init(ptrdiff_t, ptrdiff_t) "
    "axis == 1 || axis == largest was false. Attempting to broadcast an axis by a dimension "
    "other than 1. 3 by 5\n"
)
NO_MEMORY = Fail(
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running "
    "ConstantOfShape node. Name:'fill' Status Message: /onnxruntime_src/onnxruntime/core/"
    "framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, "
    "onnxruntime::Stream*) Failed to allocate memory for requested buffer of size 4096"
)
OUT_OF_RANGE = InvalidArgument(
    "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running "
    "Gather node. Name:'' Status Message: indices element out of data bounds, idx=7 must be "
    "within the inclusive range [-4,3]"
)
SEQ = {"ids": ("batch", "seq"), "mask": ("batch", "seq")}
UNNAMED = {"ids": (None, None), "mask": (None, None)}


@pytest.mark.parametrize(
    ("exc", "declared", "got", "expected"),
    [
        # ORT's INVALID_ARGUMENT: the inputs, whatever their shapes
        (OUT_OF_RANGE, SEQ, {"ids": (1, 4), "mask": (1, 4)}, ""),
        # the model names the dimension alike: the inputs, whatever ORT says
        (
            BROADCAST,
            SEQ,
            {"ids": (1, 3), "mask": (1, 5)},
            "inputs 'ids' and 'mask' disagree on dimension 'seq': 3 vs 5",
        ),
        (
            NO_MEMORY,
            SEQ,
            {"ids": (2, 3), "mask": (1, 3)},
            "inputs 'ids' and 'mask' disagree on dimension 'batch': 2 vs 1",
        ),
        # unnamed dimensions: a shape failure with inputs differing at a dynamic axis
        (
            BROADCAST,
            UNNAMED,
            {"ids": (1, 3), "mask": (1, 5)},
            "inputs 'ids' and 'mask' differ in dynamic axis 1: 3 vs 5",
        ),
        # the release's: inputs that agree, memory, a single input that fits
        (BROADCAST, SEQ, {"ids": (1, 3), "mask": (1, 3)}, None),
        (BROADCAST, UNNAMED, {"ids": (1, 3), "mask": (1, 3)}, None),
        (NO_MEMORY, UNNAMED, {"ids": (1, 3), "mask": (1, 5)}, None),
        (BROADCAST, {"pixels": (None, 64)}, {"pixels": (2, 64)}, None),
        (RuntimeError("bad allocation"), UNNAMED, {"ids": (1, 3), "mask": (1, 5)}, None),
        # a fixed axis is ORT's to check, never a disagreement
        (BROADCAST, {"a": (3,), "b": (5,)}, {"a": (3,), "b": (5,)}, None),
    ],
)
def test_blame(
    exc: Exception,
    declared: dict[str, blame.Dims],
    got: dict[str, tuple[int, ...]],
    expected: str | None,
) -> None:
    assert blame.blame(exc, declared=declared, got=got) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            BROADCAST,
            "Add node: Attempting to broadcast an axis by a dimension other than 1. 3 by 5",
        ),
        (NO_MEMORY, "ConstantOfShape node 'fill': Failed to allocate memory for requested buffer"),
        (OUT_OF_RANGE, "Gather node: indices element out of data bounds, idx=7 must be within"),
        (
            InvalidArgument(
                "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: a "
                "for the following indices\n index: 0 Got: 5 Expected: 4\n Please fix"
            ),
            "Got invalid dimensions for input: a for the following indices index: 0 Got: 5",
        ),
        (Fail("\x1b[31mred\x00 \u0085text\r\n"), "[31mred text"),
        (Fail(""), "Fail"),
    ],
)
def test_runtime_message_is_orts_words_on_one_line(exc: Exception, expected: str) -> None:
    message = blame.runtime_message(exc)
    assert message.startswith(expected), message
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", message)


def test_runtime_message_is_bounded() -> None:
    message = blame.runtime_message(Fail("shape " * 10_000))
    assert len(message) == blame.MAX_MESSAGE and message.endswith("…")


# --- real ONNX Runtime -----------------------------------------------------------------------


def onnx_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int | str]],
    outputs: dict[str, list[int | str] | None],
    initializers: dict[str, np.ndarray] | None = None,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "blame",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def pair_model(dims: tuple[str, str] = ("seq", "seq")) -> bytes:
    """``y = a + b`` (a broadcast that fails when their lengths differ) and ``z = y`` as rows of
    two (a Reshape that fails for an odd length, however well the inputs agree)."""
    return onnx_model(
        [
            helper.make_node("Add", ["a", "b"], ["y"]),
            helper.make_node("Reshape", ["y", "rows_of_two"], ["z"]),
        ],
        {"a": [dims[0]], "b": [dims[1]]},
        {"y": [dims[0]], "z": ["rows", 2]},
        {"rows_of_two": np.array([-1, 2], np.int64)},
    )


PAIR_INPUTS = (t.TensorSpec("a", "float32", (-1,)), t.TensorSpec("b", "float32", (-1,)))
PAIR_OUTPUTS = (t.TensorSpec("y", "float32", (-1,)), t.TensorSpec("z", "float32", (-1, 2)))


def gather_model() -> bytes:
    """``table[indices]``: ORT's own INVALID_ARGUMENT for an index out of range."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "indices"], ["picked"])],
        "gather",
        [
            helper.make_tensor_value_info("table", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"]),
        ],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def runtime_of(model: bytes, tmp_path: Path) -> ModelRuntime:
    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    manifest = t.Manifest(
        name="m",
        version="1.0.0",
        model_digest="sha256:" + "0" * 64,
        model_size=len(model),
        inputs=tuple(spec_of(a) for a in session.get_inputs()),
        outputs=tuple(spec_of(a) for a in session.get_outputs()),
    )
    return ModelRuntime.load(path, LoadedModel("m:1.0.0", "g1", manifest, "sha256:x"))


@pytest.mark.parametrize(
    ("model", "feed", "error", "words"),
    [
        (
            pair_model(),
            {"a": np.zeros(3, F32), "b": np.zeros(5, F32)},
            RefusedInputError,
            ["disagree on dimension 'seq': 3 vs 5", "Add node: Attempting to broadcast", "3 by 5"],
        ),
        (
            pair_model(("n", "m")),
            {"a": np.zeros(3, F32), "b": np.zeros(5, F32)},
            RefusedInputError,
            ["differ in dynamic axis 0: 3 vs 5", "Add node: Attempting to broadcast"],
        ),
        (
            gather_model(),
            {"table": np.zeros(4, F32), "indices": np.array([7], np.int64)},
            RefusedInputError,
            ["Gather node: indices element out of data bounds, idx=7"],
        ),
        (
            pair_model(),
            {"a": np.zeros(3, F32), "b": np.zeros(3, F32)},
            InferenceFailedError,
            ["Reshape node: The input tensor cannot be reshaped to the requested shape"],
        ),
    ],
    ids=["named-dims", "unnamed-dims", "orts-invalid-argument", "the-releases-own-failure"],
)
def test_runtime_refusals_blame_the_inputs_or_the_release(
    tmp_path: Path,
    model: bytes,
    feed: dict[str, np.ndarray],
    error: type[Exception],
    words: list[str],
) -> None:
    rt = runtime_of(model, tmp_path)
    with pytest.raises(error) as caught:
        rt.predict(feed)
    assert type(caught.value) is error
    message = str(caught.value)
    for w in words:
        assert w in message, message
    assert "onnxruntime_src" not in message and "\n" not in message
    fine = {k: np.ones(4, F32) if k != "indices" else np.array([3], np.int64) for k in feed}
    assert rt.predict(fine)  # the model itself runs


# --- real agents -----------------------------------------------------------------------------


def pair_release(signer: Signer, version: str, *, window_s: float = 0.0) -> Release:
    health = t.HealthPolicy(smoke_inference=True, health_window_s=window_s, max_load_failures=3)
    return signer.release(
        pair_model(),
        name="pair",
        version=version,
        health=health,
        inputs=PAIR_INPUTS,
        outputs=PAIR_OUTPUTS,
    )


MISMATCHED = {"a": np.ones(3, F32), "b": np.ones(5, F32)}  # the caller's fault
ODD = {"a": np.ones(3, F32), "b": np.ones(3, F32)}  # the release's: fits, agrees, fails
GOOD = {"a": np.ones(4, F32), "b": np.ones(4, F32)}
REFUSALS = 10  # far beyond the window's limit of 3 runtime failures
COUNTS = ("requests", "errors", "refused")  # of telemetry windows


def refuse(endpoint: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(grpc.RpcError) as err:
            predict(endpoint, MISMATCHED)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        details = err.value.details() or ""
        assert "disagree on dimension 'seq': 3 vs 5" in details, details
        assert "Attempting to broadcast an axis by a dimension other than 1. 3 by 5" in details


def watched_on(release: str) -> Callable[[t.DeviceStatus], bool]:
    return lambda s: s.phase is P.HEALTH_CHECK and s.active_release == release


def metrics_of(a: RunningAgent) -> str:
    url = f"http://127.0.0.1:{a.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_refused_inputs_keep_the_window_healthy_and_are_not_forwarded(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
) -> None:
    neighbour = start_agent()
    a = start_agent()
    wn, w = watch(neighbour.device_id), watch(a.device_id)
    v1 = pair_release(signer, "1.0.0")
    offer(wn, signer, artifacts, v1, 1)
    offer(w, signer, artifacts, v1, 1)
    wn.wait_status(active_on("pair:1.0.0"), what="the neighbour active")
    w.wait_status(active_on("pair:1.0.0"), what="v1 active")
    wait_for(
        "the agent to see its neighbour serving",
        lambda: (
            neighbour.device_id in {n.device_id for n in a.agent.neighbours.online() if n.release}
        ),
    )

    offer(w, signer, artifacts, pair_release(signer, "1.1.0", window_s=3.0), 2)
    w.wait_status(watched_on("pair:1.1.0"), what="v1.1 in its health window")
    refuse(a.endpoint, REFUSALS)
    assert predict(a.endpoint, GOOD).release == "pair:1.1.0"

    passed = w.wait_event("health_window_passed", generation=2)
    assert "healthy for its 3s health window" in passed.message
    w.wait_status(active_on("pair:1.1.0"), what="v1.1 active after its window")
    assert "rolled_back" not in w.kinds()
    text = metrics_of(a)
    assert f'edgefleet_inference_errors_total{{reason="invalid_input"}} {REFUSALS}.0' in text
    assert 'reason="runtime"' not in text
    # answered before the reply: a forwarded request would have reached the neighbour by now
    assert "edgefleet_inference_requests_total 0.0" in metrics_of(neighbour)


def test_refused_inputs_stay_out_of_the_error_rate_the_rollout_gate_reads(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
) -> None:
    """Telemetry counts a caller's refused inputs apart (``refused``), outside ``requests`` and
    ``errors``; the controller's report of that telemetry passes the canary's error-rate gate,
    which the same traffic would fail if refused inputs counted as errors."""
    a = start_agent()
    w = watch(a.device_id)
    offer(w, signer, artifacts, pair_release(signer, "1.0.0"), 1)
    w.wait_status(active_on("pair:1.0.0"), what="v1 active")
    refuse(a.endpoint, REFUSALS)
    good = 3
    for _ in range(good):
        assert predict(a.endpoint, GOOD).release == "pair:1.0.0"
    with pytest.raises(grpc.RpcError) as err:  # the release's own failure: an error
        predict(a.endpoint, ODD)
    assert err.value.code() is grpc.StatusCode.INTERNAL, err.value.details()

    def totals() -> tuple[int, int, int] | None:
        seen = [x for x in w.telemetry if x.release == "pair:1.0.0"]
        requests, errors, refused = (sum(getattr(x, k) for x in seen) for k in COUNTS)
        return (requests, errors, refused) if requests + refused >= good + 1 + REFUSALS else None

    requests, errors, refused = wait_for("telemetry of every request", totals)
    assert (requests, errors, refused) == (good + 1, 1, REFUSALS)
    text = metrics_of(a)  # Prometheus still counts them as failed requests, by reason
    assert f'edgefleet_inference_errors_total{{reason="invalid_input"}} {REFUSALS}.0' in text

    old, new = "pair:0.9.0", "pair:1.0.0"
    rollout = engine.start(
        "r1",
        "lab",
        new,
        strategy.parse(kind="canary", canary="1", max_error_rate=0.3),
        [a.device_id],
    )
    before = {a.device_id: Report(a.device_id, old, "active", 1, 1, metrics_release=old)}
    rollout, [sent] = engine.step(rollout, before, now=0)
    row = (
        a.device_id,
        new,
        "active",
        sent.generation,
        None,
        new,
        requests,
        errors,
        1.0,
        sent.generation,
    )
    reports = {a.device_id: rows.report(row)}
    assert reports[a.device_id].error_rate == pytest.approx(1 / (good + 1))
    passed, _ = engine.step(rollout, reports, now=1)
    assert passed.phase is RolloutPhase.SUCCEEDED, passed.reason
    counted = (*row[:6], requests + refused, errors + refused, *row[8:])  # the old counting
    failed, _ = engine.step(rollout, {a.device_id: rows.report(counted)}, now=1)
    assert failed.phase is RolloutPhase.ROLLING_BACK and "error-rate gate" in failed.reason


@pytest.mark.slow
def test_an_agent_process_counts_runtime_failures_but_not_refused_inputs(
    spawn: Spawn,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
) -> None:
    p = spawn()
    w = watch(p.device_id)
    endpoint = p.start()["predict_endpoint"]
    offer(w, signer, artifacts, pair_release(signer, "1.0.0"), 1)
    w.wait_status(active_on("pair:1.0.0"), what="v1 active")
    offer(w, signer, artifacts, pair_release(signer, "1.1.0", window_s=120.0), 2)
    w.wait_status(watched_on("pair:1.1.0"), what="v1.1 in its health window")

    refuse(endpoint, REFUSALS)
    assert predict(endpoint, GOOD).release == "pair:1.1.0"
    for _ in range(3):  # inputs that fit the model and agree: the release's own failure
        with pytest.raises(grpc.RpcError) as err:
            predict(endpoint, ODD)
        assert err.value.code() is grpc.StatusCode.INTERNAL, err.value.details()
        assert "Reshape node: The input tensor cannot be reshaped" in (err.value.details() or "")

    event = w.wait_event("rolled_back", generation=2)
    # exactly the three runtime failures: none of the refused inputs counted
    assert "the runtime failed 3 times" in event.message, event.message
    assert "Reshape" in event.message, event.message
    w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back")
    assert predict(endpoint, GOOD).release == "pair:1.0.0"
