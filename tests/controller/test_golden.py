"""Golden data with releases: checked against the model, completed with ONNX Runtime, signed.

``releasegolden.normalize`` directly for the checks (real ONNX Runtime, no server), then
``CreateRelease`` on a real controller for storage, the signed manifest and the errors.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgefleet.common import desired, digests
from edgefleet.common import types as t
from edgefleet.common.artifacts import BlobStore
from edgefleet.common.errors import InvalidInputError
from edgefleet.controller import releasegolden
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.edgectl.app import app
from edgefleet.v1 import common_pb2
from edgefleet.v1 import controller_pb2 as pb
from tests.agent import faults
from tests.controller import support

INPUTS = (t.TensorSpec("pixels", "float32", (-1, 64)),)
OUTPUTS = (
    t.TensorSpec("probabilities", "float32", (-1, 10)),
    t.TensorSpec("label", "int64", (-1,)),
)


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    cast(Any, np.savez)(buf, **{k.replace("__", "/"): v for k, v in arrays.items()})
    return buf.getvalue()


def load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def normalize(data: bytes, model: bytes) -> dict[str, np.ndarray]:
    return load(releasegolden.normalize(data, model=model, inputs=INPUTS, outputs=OUTPUTS))


def test_missing_expected_outputs_are_computed_with_onnx_runtime(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    x = digits_data.x_test[:16]
    got = normalize(npz(pixels=x), digits_model.onnx_bytes)
    want = faults.run(digits_model.onnx_bytes, x)
    assert sorted(got) == ["expected/label", "expected/probabilities", "input/pixels"]
    np.testing.assert_array_equal(got["input/pixels"], x)
    np.testing.assert_array_equal(got["expected/label"], want["label"])
    np.testing.assert_array_equal(got["expected/probabilities"], want["probabilities"])


def test_given_expectations_are_kept_and_the_result_is_deterministic(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    x, truth = digits_data.x_test[:16], digits_data.y_test[:16]
    data = npz(input__pixels=x, expected__label=truth)
    first = releasegolden.normalize(
        data, model=digits_model.onnx_bytes, inputs=INPUTS, outputs=OUTPUTS
    )
    again = releasegolden.normalize(
        data, model=digits_model.onnx_bytes, inputs=INPUTS, outputs=OUTPUTS
    )
    assert first == again  # same data, same digest
    got = load(first)
    np.testing.assert_array_equal(got["expected/label"], truth)
    assert got["expected/probabilities"].shape == (16, 10)


def test_a_model_fixed_at_batch_one_is_run_row_by_row(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    model = onnx.load_model_from_string(digits_model.onnx_bytes)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = model.SerializeToString()
    x = digits_data.x_test[:5]
    got = load(
        releasegolden.normalize(
            npz(pixels=x),
            model=fixed,
            inputs=(t.TensorSpec("pixels", "float32", (1, 64)),),
            outputs=(
                t.TensorSpec("probabilities", "float32", (1, 10)),
                t.TensorSpec("label", "int64", (1,)),
            ),
        )
    )
    np.testing.assert_array_equal(
        got["expected/label"], faults.run(digits_model.onnx_bytes, x)["label"]
    )


X = np.zeros((4, 64), np.float32)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("not an npz", b"pixels,1,2,3\n", "golden data is not a readable .npz file"),
        (
            "missing input",
            npz(expected__label=np.zeros(4, np.int64)),
            "golden data lacks input 'pixels' (the model takes pixels: float32[?,64])",
        ),
        (
            "unknown bare name",
            npz(pixels=X, image=X),
            "golden array 'image' is not an input of the model (pixels: float32[?,64])",
        ),
        (
            "unknown input/ name",
            npz(input__pixels=X, input__image=X),
            "golden input 'image' is not an input of the model",
        ),
        ("given twice", npz(pixels=X, input__pixels=X), "golden input 'pixels' is given twice"),
        (
            "wrong dtype",
            npz(pixels=X.astype(np.float64)),
            "golden input 'pixels' has dtype float64 (pixels: float64[4,64]); "
            "the model has pixels: float32[?,64]",
        ),
        (
            "wrong shape",
            npz(pixels=np.zeros((4, 32), np.float32)),
            "golden input 'pixels' has shape [4, 32]; the model has pixels: float32[?,64]",
        ),
        (
            "rows disagree",
            npz(pixels=X, expected__label=np.zeros(3, np.int64)),
            "golden arrays disagree on the number of rows: 'label' has 3, the first input has 4",
        ),
        (
            "unknown expected output",
            npz(pixels=X, expected__logits=X),
            "golden expected output 'logits' is not an output of the model (probabilities, label)",
        ),
        (
            "expected output of the wrong dtype",
            npz(pixels=X, expected__label=np.zeros(4, np.int32)),
            "golden expected output 'label' has dtype int32",
        ),
        ("no rows", npz(pixels=np.zeros((0, 64), np.float32)), "at least one row"),
    ],
)
def test_golden_data_that_does_not_fit_is_refused(
    name: str, data: bytes, message: str, digits_model: TrainedModel
) -> None:
    with pytest.raises(InvalidInputError) as err:
        normalize(data, digits_model.onnx_bytes)
    assert message in str(err.value), name


def test_a_model_that_outputs_nan_on_its_golden_inputs_is_refused(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    bad = faults.nan_scores(digits_model.onnx_bytes)
    with pytest.raises(InvalidInputError, match="NaN or infinity in 'probabilities'"):
        normalize(npz(pixels=digits_data.x_test[:4]), bad)


# --- CreateRelease ---------------------------------------------------------------------------


def create(ctl: support.Running, version: str, **fields: Any) -> pb.ReleaseInfo:
    request = pb.CreateReleaseRequest(name="digits", version=version, **fields)
    return ctl.stub.CreateRelease(request, timeout=30)


def test_release_with_golden_data_names_it_in_the_signed_manifest(
    ctl: support.Running, digits_model: TrainedModel, digits_data: DigitsData, tmp_path: Path
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    health = common_pb2.HealthPolicy(
        health_window_s=30, latency_budget_ms=5, golden_min_agreement=0.9, max_load_failures=2
    )
    x = digits_data.x_test[:32]
    info = create(ctl, "1.0.0", golden=npz(pixels=x), health=health)

    m = info.manifest
    assert m.golden_digest.startswith("sha256:") and m.golden_size > 0
    assert (m.health.health_window_s, m.health.golden_min_agreement) == (30, 0.9)
    assert (m.health.max_load_failures, m.health.golden_max_abs_error) == (2, 1e-4)
    stored = BlobStore(tmp_path / "data" / "blobs").read(m.golden_digest)
    assert digests.of_bytes(stored) == m.golden_digest and len(stored) == m.golden_size
    arrays = load(stored)
    np.testing.assert_array_equal(
        arrays["expected/label"], faults.run(digits_model.onnx_bytes, x)["label"]
    )
    signed = ctl.controller.releases.get(t.ReleaseRef("digits", "1.0.0")).signed_manifest
    manifest, digest = desired.open_manifest(signed, support.trust(ctl.stub))
    assert digest == info.manifest_digest
    assert (manifest.golden_digest, manifest.golden_size) == (m.golden_digest, m.golden_size)

    plain = create(ctl, "1.0.1")  # without golden data: smoke inference only, as before
    assert (plain.manifest.golden_digest, plain.manifest.golden_size) == ("", 0)


def test_bad_golden_data_or_policy_is_invalid_argument(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)

    shape = support.rpc_error(
        lambda: create(ctl, "1.0.0", golden=npz(pixels=np.zeros((2, 8), np.float32)))
    )
    assert shape.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "golden input 'pixels' has shape [2, 8]" in shape.details()
    assert "pixels: float32[?,64]" in shape.details()

    policy = support.rpc_error(
        lambda: create(ctl, "1.0.0", health=common_pb2.HealthPolicy(golden_min_agreement=1.5))
    )
    assert policy.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "golden min agreement must be in 0..1" in policy.details()
    assert not ctl.stub.ListReleases(pb.ListReleasesRequest(name="digits"), timeout=5).releases


def test_edgectl_release_create_with_golden_data(
    ctl: support.Running, digits_model: TrainedModel, digits_data: DigitsData, tmp_path: Path
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    path = tmp_path / "golden.npz"
    path.write_bytes(npz(pixels=digits_data.x_test[:8], expected__label=digits_data.y_test[:8]))
    args = [
        "--controller", ctl.api, "release", "create", "digits", "--version", "2.0.0",
        "--golden", str(path), "--health-window", "45s", "--max-load-failures", "2",
        "--golden-max-abs-error", "0.001", "--golden-min-agreement", "0.75", "--json",
    ]  # fmt: skip
    runner = CliRunner(env={"EDGECTL_TOKEN": ctl.token})
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["golden_digest"].startswith("sha256:") and info["golden_size"] > 0
    assert (info["health_window_s"], info["max_load_failures"]) == (45, 2)
    release = ctl.controller.releases.get(t.ReleaseRef("digits", "2.0.0"))
    h = release.manifest.health
    assert (h.golden_max_abs_error, h.golden_min_agreement) == (0.001, 0.75)

    bad = runner.invoke(app, [*args[:6], "2.0.1", "--health-window", "soon"])
    assert bad.exit_code != 0 and "--health-window" in bad.stderr
