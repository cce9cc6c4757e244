"""Untrusted models cannot reach the controller's secrets (issue 8, item 6).

Attacks, each against a real controller (in-process, real gRPC server, real broker, real ONNX
Runtime, real sandbox processes) or a real agent:

* an ONNX model keeps an initializer in an "external file" named after the controller's
  signing key; on the old controller ``release create --golden`` read the key into the golden
  outputs, which any device can fetch. It is refused at registration, and even a model that
  got past registration finds nothing in the sandbox's empty working directory;
* a model whose inspection exhausts the sandbox's memory, one that burns CPU when its golden
  outputs are computed and one that hangs: each fails its own request, the controller serves
  the next one;
* an agent is sent (signed, so by a controller that trusted it) a model that reads a file next
  to it: it refuses the model before ONNX Runtime loads it, and keeps serving the old one.

Plus what the sandbox process sees (no cwd of ours, no key file open, no data dir in argv or
the environment) and a table of the places an external tensor can hide.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.common.externaldata import check_embedded, external_tensors, refuse_external
from edgefleet.common.types import TensorSpec
from edgefleet.controller import releasegolden
from edgefleet.controller.config import SandboxSettings
from edgefleet.controller.errors import SandboxError
from edgefleet.controller.sandbox import Sandbox
from edgefleet.demo import digits
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.conftest import (  # noqa: F401 - the agent tests' fixtures, used below
    StartAgent,
    artifacts,
    signer,
    start_agent,
    watch,
)
from tests.agent.helpers import ArtifactServer, Signer, Watcher, install, predict
from tests.conftest import Broker
from tests.controller import support
from tests.security import untrusted_probes as probes

OPSET = 17
DEADLINE = 60.0


# --- models --------------------------------------------------------------------------------


def _external(name: str, dtype: int, dims: list[int], location: str, **entries: int) -> Any:
    tensor = TensorProto(name=name, data_type=dtype, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **{k: str(v) for k, v in entries.items()}}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    return model.SerializeToString()


def exfiltrating(location: str, size: int) -> bytes:
    """``y = x + w`` where ``w`` is ``size`` bytes of the file at ``location``: feed zeros and
    the file comes back as the output."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "exfiltrate",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [size])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [size])],
        [_external("w", TensorProto.UINT8, [size], location, length=size)],
    )
    return _model(graph)


def looping() -> bytes:
    """``y = x + 10**15`` counted one by one: a model that runs (practically) forever."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "count",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "yes", "x"], ["y"], body=body)],
        "forever",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [
            numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "yes"),
        ],
    )
    return _model(graph)


def heavy(megabytes: int) -> bytes:
    """A valid model whose one weight is ``megabytes`` MiB: cheap to run, big to parse."""
    weight = np.zeros(megabytes << 18, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(weight)])],
        [numpy_helper.from_array(weight, "w")],
    )
    return _model(graph)


def self_reading() -> bytes:
    """The digits signature; the scores' bias is the first 10 bytes of the file beside the
    model (``model.onnx``: the slot's copy of the model itself). Finite outputs, so the old
    agent's health check passed it."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "zeros"], ["scaled"]),
            helper.make_node("Cast", ["stolen"], ["bias"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["scaled", "bias"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "self-reading",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [
            numpy_helper.from_array(np.zeros((64, 10), np.float32), "zeros"),
            _external("stolen", TensorProto.UINT8, [10], "model.onnx", offset=0, length=10),
        ],
    )
    return _model(graph)


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# --- controllers ---------------------------------------------------------------------------


StartController = Callable[..., support.Running]


@pytest.fixture
def untrusted_ctl(tmp_path: Path, broker: Broker) -> Iterator[StartController]:
    """Start a controller in ``tmp_path`` (also the working directory, so that the data dir
    ``edgefleet-data`` is where the default setup puts it) with the given sandbox limits."""
    started: list[support.Running] = []

    def start(*, max_model_bytes: int = 64 << 20, **limits: Any) -> support.Running:
        base = support.settings(
            tmp_path / "edgefleet-data", broker.url, max_model_bytes=max_model_bytes
        )
        running = support.start(dataclasses.replace(base, sandbox=SandboxSettings(**limits)))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _signing_key(ctl: support.Running, data_dir: Path) -> Path:
    key = ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    path = data_dir / "keys" / f"{key.key_id}.pem"
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----"), path
    return path


def _still_serves(ctl: support.Running, model: digits.TrainedModel) -> None:
    """The controller takes the next upload, and computes golden outputs: it is up, and its
    sandbox works."""
    if not ctl.stub.ListKeys(pb.ListKeysRequest(), timeout=DEADLINE).keys:
        ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    name = support.unique("digits")
    assert support.upload(ctl.stub, name, model.onnx_bytes).version == 1
    golden_data = _npz(pixels=np.zeros((2, 64), np.float32))
    request = pb.CreateReleaseRequest(name=name, version="1.0.0", golden=golden_data)
    assert ctl.stub.CreateRelease(request, timeout=DEADLINE).manifest.golden_size > 0


# --- the exfiltration ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["relative", "parent", "absolute"])
def test_a_model_naming_the_signing_key_as_external_data_is_refused_at_registration(
    untrusted_ctl: StartController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    ctl = untrusted_ctl()
    key = _signing_key(ctl, tmp_path / "edgefleet-data")
    secret = key.read_bytes()
    location = {
        "relative": f"edgefleet-data/keys/{key.name}",  # against the controller's cwd
        "parent": f"../keys/{key.name}",  # against a model stored in blobs/
        "absolute": str(key),
    }[where]
    model = exfiltrating(location, len(secret))

    failure = support.rpc_error(lambda: support.upload(ctl.stub, "thief", model))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert f"model keeps tensor 'w' in external file {location!r}" in failure.message, failure
    assert "save_as_external_data=False" in failure.message
    assert not list(ctl.stub.ListModels(pb.ListModelsRequest(name="thief")).models)
    for blob in (tmp_path / "edgefleet-data" / "blobs").rglob("*"):
        assert not blob.is_file() or secret not in blob.read_bytes(), f"the key is in {blob}"


def test_golden_outputs_of_a_model_that_got_past_registration_never_hold_key_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Belt and braces, for a model registered before the check existed: golden outputs refuse
    it in the sandbox too; and were it run there, the sandbox's empty directory holds nothing
    for it to read."""
    keys = tmp_path / "edgefleet-data" / "keys"
    keys.mkdir(parents=True)
    secret = b"-----BEGIN PRIVATE KEY-----\nnot-a-key-but-a-secret\n-----END PRIVATE KEY-----\n"
    (keys / "k1.pem").write_bytes(secret)
    monkeypatch.chdir(tmp_path)
    model = exfiltrating("edgefleet-data/keys/k1.pem", len(secret))
    spec = (TensorSpec("x", "uint8", (len(secret),)),)
    out = (TensorSpec("y", "uint8", (len(secret),)),)
    data = _npz(x=np.zeros((len(secret),), np.uint8))

    with pytest.raises(InvalidInputError, match=r"in external file 'edgefleet-data/keys/k1\.pem'"):
        releasegolden.normalize_isolated(Sandbox(), data, model=model, inputs=spec, outputs=out)

    with pytest.raises(InvalidInputError) as unread:  # the run itself, with no check before it
        Sandbox().call(
            releasegolden.normalize,
            data,
            model=model,
            inputs=spec,
            outputs=out,
            what="golden outputs",
        )
    assert secret not in str(unread.value).encode()
    assert "the model fails on the golden inputs" in str(unread.value)
    assert "edgefleet-data/keys/k1.pem" in str(unread.value)  # not found where it runs


# --- crashes, limits, hangs ----------------------------------------------------------------


def test_a_model_whose_inspection_runs_out_of_memory_fails_only_its_upload(
    untrusted_ctl: StartController, digits_model: digits.TrainedModel
) -> None:
    # A sandbox child starts as a copy of the fork server: measure that, allow 96 MiB more.
    baseline = Sandbox().call(probes.address_space, what="probe")
    ctl = untrusted_ctl(memory_bytes=baseline + (96 << 20), max_model_bytes=256 << 20)

    failure = support.rpc_error(
        lambda: support.upload(ctl.stub, "heavy", heavy(128), chunk=1 << 20)
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.message.startswith("model inspection "), failure
    assert "out of memory" in failure.message or "crashed" in failure.message, failure
    assert not list(ctl.stub.ListModels(pb.ListModelsRequest(name="heavy")).models)
    _still_serves(ctl, digits_model)


def _release_with_golden(ctl: support.Running, name: str) -> support.Failure:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    support.upload(ctl.stub, name, looping())
    request = pb.CreateReleaseRequest(
        name=name, version="1.0.0", golden=_npz(x=np.zeros((1,), np.float32))
    )
    return support.rpc_error(lambda: ctl.stub.CreateRelease(request, timeout=DEADLINE))


def test_a_model_that_burns_cpu_is_stopped_by_the_cpu_limit(
    untrusted_ctl: StartController, digits_model: digits.TrainedModel
) -> None:
    ctl = untrusted_ctl(cpu_s=1, timeout_s=DEADLINE - 10)
    failure = _release_with_golden(ctl, "spinner")
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.message == "golden outputs used up its 1 s of CPU (SIGXCPU)", failure
    _still_serves(ctl, digits_model)


def test_a_model_that_hangs_times_out_and_fails_only_its_request(
    untrusted_ctl: StartController, digits_model: digits.TrainedModel
) -> None:
    ctl = untrusted_ctl(timeout_s=1, search_s=2)
    failure = _release_with_golden(ctl, "hanger")
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.message == "golden outputs timed out after 1 s", failure

    # A compression search of it (in a sandbox of its own, under its own time limit).
    request = pb.CompressRequest(
        name="hanger", recipe="int8-dynamic", eval_data=_npz(x=np.zeros((1,), np.float32))
    )
    stuck = support.rpc_error(lambda: list(ctl.stub.CompressModel(request, timeout=DEADLINE)))
    assert stuck.code == grpc.StatusCode.INVALID_ARGUMENT, stuck
    assert stuck.message == "compression search timed out after 2 s", stuck
    _still_serves(ctl, digits_model)


def test_a_cancelled_compression_stops_its_sandbox_at_once(
    untrusted_ctl: StartController,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    """Compressions run one at a time. A caller that gives up on the search of a model that
    never finishes must not keep the next one waiting behind it."""
    ctl = untrusted_ctl()
    support.upload(ctl.stub, "spinner", looping())
    spinning = ctl.stub.CompressModel(
        pb.CompressRequest(
            name="spinner", recipe="int8-dynamic", eval_data=_npz(x=np.zeros((1,), np.float32))
        ),
        timeout=DEADLINE,
    )
    assert "timing spinner version 1" in next(spinning).message
    spinning.cancel()

    name = support.unique("digits")
    support.upload(ctl.stub, name, digits_model.onnx_bytes)
    request = pb.CompressRequest(
        name=name,
        recipe="int8-dynamic",
        eval_data=_npz(pixels=digits_data.x_test, labels=digits_data.y_test),
        max_accuracy_drop=5.0,
    )
    stream = list(ctl.stub.CompressModel(request, timeout=DEADLINE))
    assert stream[-1].WhichOneof("update") == "result", stream[-1]


# --- the agent -----------------------------------------------------------------------------


def test_the_agent_refuses_an_external_data_model_before_loading_it(
    start_agent: StartAgent,  # noqa: F811 - the imported fixtures, by name
    watch: Callable[[str], Watcher],  # noqa: F811
    signer: Signer,  # noqa: F811
    artifacts: ArtifactServer,  # noqa: F811
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    thief = self_reading()
    artifacts.put(thief)
    w.publish_desired(
        signer.desired(signer.release(thief, version="1.1.0"), device_id=a.device_id, generation=2)
    )
    failed = w.wait_event("install_failed", generation=2)
    assert "model keeps tensor 'stolen' in external file 'model.onnx'" in failed.message, failed
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]


# --- the sandbox itself --------------------------------------------------------------------


def test_the_sandbox_knows_nothing_of_the_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "edgefleet-data"
    (data_dir / "keys").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEFLEET_SECRET_PATH", str(data_dir))
    monkeypatch.setattr(sys, "argv", ["edge-controller", "run", "--data-dir", str(data_dir)])
    with (data_dir / "keys" / "k1.pem").open("wb") as open_key:
        open_key.write(b"secret")
        view = Sandbox().call(probes.child_view, what="probe")

    assert view["cwd"] != str(tmp_path) and view["listing"] == []
    assert not Path(view["cwd"]).exists()  # removed once the call is over
    assert str(tmp_path) not in repr(view), view
    assert not any(target.endswith(".pem") for target in view["fds"].values()), view["fds"]
    assert "EDGEFLEET_SECRET_PATH" not in view["env"]


def test_errors_the_task_raises_come_back_as_raised_and_a_crash_as_sandbox_error() -> None:
    sandbox = Sandbox(SandboxSettings(timeout_s=DEADLINE))
    x, y = TensorSpec("x", "float32", (1,)), TensorSpec("y", "float32", (1,))
    with pytest.raises(InvalidInputError, match="the model fails on the golden inputs"):
        releasegolden.normalize_isolated(
            sandbox, _npz(x=np.zeros(1, np.float32)), model=b"junk", inputs=(x,), outputs=(y,)
        )
    with pytest.raises(SandboxError, match=r"^probe crashed \(signal 6, SIGABRT\)$"):
        sandbox.call(os.abort, what="probe")


def test_a_streamed_call_emits_asks_and_returns_with_one_process_at_a_time() -> None:
    sandbox = Sandbox(SandboxSettings(processes=1, search_s=DEADLINE, timeout_s=DEADLINE))

    def answer(question: int) -> int:
        if question < 0:
            raise NotFoundError("device", "d9")
        return question * 2

    events = sandbox.stream(probes.conversation, 3, what="probe", answer=answer)
    assert list(events) == [0, 1, 2, (42, "device", "d9")]
    assert sandbox.call(os.getpid, what="probe") != os.getpid()  # its turn was given back


# --- where external tensors hide -----------------------------------------------------------


def _graph_with(node: onnx.NodeProto, initializers: Sequence[Any] = ()) -> onnx.GraphProto:
    return helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        list(initializers),
    )


def _ext(name: str = "w") -> Any:
    return _external(name, TensorProto.FLOAT, [1], f"{name}.bin")


def _in_main() -> onnx.ModelProto:
    return helper.make_model(_graph_with(helper.make_node("Add", ["x", "w"], ["y"]), [_ext()]))


def _in_constant() -> onnx.ModelProto:
    node = helper.make_node("Constant", [], ["y"], value=_ext())
    return helper.make_model(_graph_with(node))


def _in_subgraph() -> onnx.ModelProto:
    inner = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["z"])],
        "inner",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [_ext()],
    )
    plain = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "plain",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    nested = helper.make_graph(
        [helper.make_node("If", ["c"], ["z"], then_branch=plain, else_branch=inner)],
        "nested",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    outer = helper.make_node("If", ["c"], ["y"], then_branch=nested, else_branch=plain)
    return helper.make_model(_graph_with(outer))


def _in_sparse() -> onnx.ModelProto:
    graph = _graph_with(helper.make_node("Identity", ["x"], ["y"]))
    sparse = helper.make_sparse_tensor(_ext("values"), _ext("indices"), [4])
    graph.sparse_initializer.append(sparse)
    return helper.make_model(graph)


def _in_function() -> onnx.ModelProto:
    function = helper.make_function(
        "local",
        "f",
        ["a"],
        ["b"],
        [helper.make_node("Constant", [], ["b"], value=_ext())],
        [helper.make_opsetid("", OPSET)],
    )
    model = helper.make_model(_graph_with(helper.make_node("f", ["x"], ["y"], domain="local")))
    model.functions.append(function)
    return model


@pytest.mark.parametrize(
    ("build", "found"),
    [
        (_in_main, [("w", "w.bin")]),
        (_in_constant, [("w", "w.bin")]),
        (_in_subgraph, [("w", "w.bin")]),  # the else branch of the then branch
        (_in_sparse, [("values", "values.bin"), ("indices", "indices.bin")]),
        (_in_function, [("w", "w.bin")]),
    ],
)
def test_external_tensors_are_found_wherever_they_hide(
    build: Callable[[], onnx.ModelProto], found: list[tuple[str, str]]
) -> None:
    model = build()
    assert list(external_tensors(model)) == found
    with pytest.raises(InvalidInputError, match="embed it"):
        check_embedded(model)
    # the agent's walk over the serialized bytes (no onnx there) finds the first of them too
    name, location = found[0]
    with pytest.raises(InvalidInputError, match=f"{name!r} in external file {location!r}"):
        refuse_external(model.SerializeToString())


def test_an_embedded_model_passes(digits_model: digits.TrainedModel) -> None:
    model = onnx.load_model_from_string(digits_model.onnx_bytes)
    assert list(external_tensors(model)) == []
    check_embedded(model)
    refuse_external(digits_model.onnx_bytes)
    # bytes that are no protobuf message (cut short, garbage) pass: ONNX Runtime refuses them
    refuse_external(digits_model.onnx_bytes[: len(digits_model.onnx_bytes) // 2])
    refuse_external(b"\xff" * 64)
