"""The pure health decisions and golden comparison as tables; no sockets, no runtime."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, cast

import grimp
import numpy as np
import pytest

from edgefleet.agent import goldenset, health
from edgefleet.agent import reconcile as r
from edgefleet.agent.state import DeviceState, HealthWindow, SlotInfo, StateFile
from edgefleet.common import types as t
from edgefleet.common.types import InstallPhase as P
from tests.agent.faults import golden_npz

H = health
BUDGET = t.HealthPolicy(latency_budget_ms=10.0, max_load_failures=3)
FAST = H.Latency(samples=20, median_ms=2.0, p95_ms=4.0)


# --- before activation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "policy", "problems", "latency", "says"),
    [
        ("all good", BUDGET, (), FAST, ""),
        ("no budget: any latency", t.HealthPolicy(), (), H.Latency(20, 900.0, 990.0), ""),
        ("golden problems first", BUDGET, ("output 'y': bad",), FAST, "output 'y': bad"),
        (
            "median over the budget",
            BUDGET,
            (),
            H.Latency(20, 30.0, 31.0),
            "median latency 30.000 ms (p95 31.000 ms, 20 runs) is over the budget of 10 ms",
        ),
        ("p95 over but median within: the median is judged", BUDGET, (), H.Latency(20, 9, 50), ""),
    ],
)
def test_precheck(
    name: str, policy: t.HealthPolicy, problems: tuple[str, ...], latency: H.Latency, says: str
) -> None:
    assert H.precheck_problem(policy, output_problems=problems, latency=latency) == says, name


# --- the window ---------------------------------------------------------------------------------


def live(samples: int, p95: float) -> H.Latency:
    return H.Latency(samples, p95 / 2, p95)


@pytest.mark.parametrize(
    ("name", "checkup", "verdict"),
    [
        ("early, healthy: watch", H.Checkup(elapsed_s=1.0, live=live(100, 5)), H.Watch(3.0)),
        ("last stretch: watch until the end", H.Checkup(elapsed_s=29.0), H.Watch(1.0)),
        ("window over, healthy: passed", H.Checkup(elapsed_s=30.0, live=live(5, 5)), H.Passed()),
        (
            "p95 over the budget",
            H.Checkup(elapsed_s=1.0, live=live(20, 31)),
            H.RollBack(
                "live p95 latency 31.000 ms over 20 Predict calls is over the budget of 10 ms"
            ),
        ),
        (
            "too few live samples to judge",
            H.Checkup(elapsed_s=30.0, live=live(19, 500)),
            H.Passed(),
        ),
        (
            "golden outputs wrong",
            H.Checkup(elapsed_s=30.0, output_problems=("output 'label': top-1 agreement 0.1",)),
            H.RollBack("golden check failed: output 'label': top-1 agreement 0.1"),
        ),
        (
            "crash loop before anything else",
            H.Checkup(
                elapsed_s=1.0, output_problems=("x",), runtime_failures=3, last_failure="boom"
            ),
            H.RollBack(
                "crash loop: the runtime failed 3 times in the health window (limit 3); last: boom"
            ),
        ),
        (
            "runtime failures under the limit",
            H.Checkup(elapsed_s=1, runtime_failures=2),
            H.Watch(3),
        ),
    ],
)
def test_window_verdicts(name: str, checkup: H.Checkup, verdict: H.Verdict) -> None:
    assert H.judge_window(BUDGET, checkup, duration_s=30.0) == verdict, name


def test_no_budget_means_no_latency_verdict_and_zero_limit_means_the_default() -> None:
    policy = t.HealthPolicy(max_load_failures=0)
    assert H.failure_limit(policy) == H.DEFAULT_MAX_LOAD_FAILURES == 3
    checkup = H.Checkup(elapsed_s=5.0, live=live(1000, 1e6), runtime_failures=2)
    assert H.judge_window(policy, checkup, duration_s=5.0) == H.Passed()


@pytest.mark.parametrize(
    ("duration", "interval"), [(0.5, 0.25), (3.0, 0.3), (30.0, 3.0), (600.0, 5.0)]
)
def test_checkups_are_about_ten_per_window(duration: float, interval: float) -> None:
    assert H.check_interval(duration) == pytest.approx(interval)


# --- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "window_open", "failures", "last", "plan"),
    [
        ("nothing wrong: load", False, 0, "", H.LoadActive()),
        ("under the limit: load again", False, 2, "oom", H.LoadActive()),
        (
            "restarted in the window: never passed",
            True,
            0,
            "",
            H.RollBack(
                "the agent restarted during the health window of d:2.0.0, which never passed"
            ),
        ),
        (
            "died loading it K times",
            False,
            3,
            "",
            H.RollBack(
                "crash loop: d:2.0.0 failed to load 3 times (the agent died while loading it)"
            ),
        ),
        (
            "failed to load K times",
            False,
            3,
            "ORT refused",
            H.RollBack("crash loop: d:2.0.0 failed to load 3 times; last: ORT refused"),
        ),
    ],
)
def test_start_plans(
    name: str, window_open: bool, failures: int, last: str, plan: H.StartPlan
) -> None:
    got = H.start_plan(
        BUDGET,
        release="d:2.0.0",
        window_open=window_open,
        load_failures=failures,
        last_failure=last,
    )
    assert got == plan, name


# --- golden comparison --------------------------------------------------------------------------

LABELS = np.array([1, 2, 3, 4], np.int64)
SCORES = np.eye(4, 10, k=1, dtype=np.float32)  # argmax: 1, 2, 3, 4
VALUES = np.array([0.5, 1.5, 2.5, 3.5], np.float32)


def compare(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], **kw: float
) -> list[str]:
    return goldenset.compare(
        expected,
        actual,
        max_abs_error=kw.get("max_abs_error", 1e-4),
        min_agreement=kw.get("min_agreement", 1.0),
    )


@pytest.mark.parametrize(
    ("name", "actual", "kw", "problems"),
    [
        ("identical", {"label": LABELS, "scores": SCORES, "y": VALUES}, {}, []),
        (
            "one label of four differs",
            {"label": np.array([1, 2, 3, 9]), "scores": SCORES, "y": VALUES},
            {},
            ["output 'label': top-1 agreement 0.750 is below 1 (1 of 4 golden rows differ)"],
        ),
        (
            "three of four agree is enough at 0.75",
            {"label": np.array([1, 2, 3, 9]), "scores": SCORES, "y": VALUES},
            {"min_agreement": 0.75},
            [],
        ),
        (
            "scores judged by argmax, not by value",
            {"label": LABELS, "scores": SCORES * 3 + 0.1, "y": VALUES},
            {},
            [],
        ),
        (
            "scores with another argmax",
            {"label": LABELS, "scores": SCORES[::-1].copy(), "y": VALUES},
            {},
            ["output 'scores': top-1 agreement 0.000 is below 1 (4 of 4 golden rows differ)"],
        ),
        (
            "regression output off by 0.01",
            {"label": LABELS, "scores": SCORES, "y": VALUES + 0.01},
            {},
            ["output 'y': max abs error 0.01 is over 0.0001"],
        ),
        (
            "within a looser tolerance",
            {"label": LABELS, "scores": SCORES, "y": VALUES + 0.01},
            {"max_abs_error": 0.02},
            [],
        ),
        (
            "NaN fails even where nothing is expected",
            {"label": LABELS, "scores": SCORES, "y": VALUES, "extra": np.array([np.nan])},
            {},
            ["output 'extra' holds NaN or infinity (1 of 1 values)"],
        ),
        (
            "infinity in an expected output",
            {"label": LABELS, "scores": SCORES, "y": np.array([0.5, np.inf, 2.5, 3.5])},
            {},
            ["output 'y' holds NaN or infinity (1 of 4 values)"],
        ),
        (
            "missing output",
            {"label": LABELS, "scores": SCORES},
            {},
            ["output 'y' is missing"],
        ),
        (
            "wrong shape",
            {"label": LABELS, "scores": SCORES, "y": VALUES[:2]},
            {},
            ["output 'y' has shape [2], expected [4]"],
        ),
    ],
)
def test_golden_comparison(
    name: str, actual: dict[str, np.ndarray], kw: dict[str, float], problems: list[str]
) -> None:
    expected: dict[str, np.ndarray] = {"label": LABELS, "scores": SCORES, "y": VALUES}
    assert compare(expected, actual, **kw) == problems, name


def test_a_one_column_float_output_is_a_value_not_a_class() -> None:
    want = VALUES.reshape(4, 1)
    assert compare({"p": want}, {"p": want + 0.5}) == [
        "output 'p': max abs error 0.5 is over 0.0001"
    ]


def test_golden_parsing() -> None:
    data = golden_npz({"pixels": np.zeros((3, 64), np.float32)}, {"label": LABELS[:3]})
    g = goldenset.parse(data)
    assert g.rows == 3 and set(g.inputs) == {"pixels"} and set(g.expected) == {"label"}
    assert g.feed(1, 2)["pixels"].shape == (1, 64)
    with pytest.raises(goldenset.GoldenDataError, match=r"not a readable \.npz"):
        goldenset.parse(b"PK\x03\x04 nonsense")
    with pytest.raises(goldenset.GoldenDataError, match="no input/<name> array"):
        goldenset.parse(golden_npz({}, {"label": LABELS}))
    with pytest.raises(goldenset.GoldenDataError, match="share their first dimension"):
        goldenset.parse(golden_npz({"pixels": np.zeros((3, 64), np.float32)}, {"label": LABELS}))
    buf = io.BytesIO()
    cast(Any, np.savez)(buf, **{"input/x": np.array([object()], dtype=object)})
    with pytest.raises(goldenset.GoldenDataError):
        goldenset.parse(buf.getvalue())


# --- the install plan of a release with golden data ----------------------------------------------

DIGEST = "sha256:" + "ab" * 32
GOLDEN = "sha256:" + "ef" * 32
SRC = "ctl:50051"


def desired_with_golden(window_s: float = 0.0) -> t.DesiredState:
    manifest = t.Manifest(
        name="digits",
        version="1.2.0",
        model_digest=DIGEST,
        model_size=1000,
        inputs=(t.TensorSpec("pixels", "float32", (-1, 64)),),
        outputs=(),
        health=t.HealthPolicy(health_window_s=window_s),
        golden_digest=GOLDEN,
        golden_size=300,
    )
    return t.DesiredState(
        device_id="d1",
        fleet="f",
        generation=5,
        release=manifest.ref,
        manifest_digest="sha256:" + "cd" * 32,
        manifest=manifest,
        artifact_sources=(SRC,),
    )


def observed(phase: P, **facts: object) -> r.Observed:
    return r.Observed(
        generation_applied=4,
        install=r.Progress(generation=5, phase=phase, **facts),  # type: ignore[arg-type]
    )


FETCH_MODEL = r.Fetch(5, DIGEST, 1000, (SRC,))
VERIFY_MODEL = r.Verify(5, DIGEST, 1000)
FETCH_GOLDEN = r.Fetch(5, GOLDEN, 300, (SRC,))
VERIFY_GOLDEN = r.Verify(5, GOLDEN, 300)
STAGE = r.Stage(5, "g5", DIGEST, GOLDEN)
CHECK = r.HealthCheck(5, "g5", t.HealthPolicy())
ACTIVATE = r.Activate(5, "g5", "digits:1.2.0")


@pytest.mark.parametrize(
    ("name", "obs", "plan"),
    [
        (
            "fresh: model, then golden data",
            observed(P.FETCHING),
            [FETCH_MODEL, VERIFY_MODEL, FETCH_GOLDEN, VERIFY_GOLDEN, STAGE, CHECK, ACTIVATE],
        ),
        (
            "model stored, golden download cut: resume it",
            observed(P.FETCHING, blob_stored=True, golden_partial_bytes=120),
            [r.Fetch(5, GOLDEN, 300, (SRC,), offset=120), VERIFY_GOLDEN, STAGE, CHECK, ACTIVATE],
        ),
        (
            "golden downloaded, not verified yet",
            observed(P.VERIFYING, blob_stored=True, golden_partial_bytes=300),
            [VERIFY_GOLDEN, STAGE, CHECK, ACTIVATE],
        ),
        (
            "both stored",
            observed(P.VERIFYING, blob_stored=True, golden_stored=True),
            [STAGE, CHECK, ACTIVATE],
        ),
    ],
)
def test_install_plan_with_golden_data(name: str, obs: r.Observed, plan: list[r.Action]) -> None:
    assert r.reconcile(desired_with_golden(), obs, now=0.0) == plan, name


def test_activation_carries_the_window() -> None:
    obs = observed(P.HEALTH_CHECK, blob_stored=True, golden_stored=True, slot_staged=True)
    plan = r.reconcile(desired_with_golden(window_s=30.0), obs, now=0.0)
    assert plan[-1] == r.Activate(5, "g5", "digits:1.2.0", window_s=30.0)


# --- state --------------------------------------------------------------------------------------

G1 = SlotInfo("g1", "d:1.0.0", "sha256:" + "1" * 64, "sha256:" + "2" * 64)
G2 = SlotInfo("g2", "d:2.0.0", "sha256:" + "3" * 64, "sha256:" + "4" * 64, GOLDEN)


def test_state_with_a_window_round_trips_and_rolls_back(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "state.json")
    window = HealthWindow(2, "d:2.0.0", "g2", "g1", 1_700_000_000_000, 30.0, 1, "boom")
    state = DeviceState(
        generation_applied=2,
        phase=P.HEALTH_CHECK,
        active=G2,
        previous=G1,
        window=window,
        load_failures=1,
        load_error="oom",
    )
    f.save(state)
    assert f.load() == state
    assert state.reported_phase is P.HEALTH_CHECK

    back = state.rolled_back("d:2.0.0 failed")
    assert (back.active, back.previous, back.window) == (G1, None, None)
    assert (back.phase, back.last_error, back.generation_applied) == (
        P.ROLLED_BACK,
        "d:2.0.0 failed",
        2,
    )
    assert back.load_failures == 0


def test_a_state_file_from_before_health_windows_still_loads(tmp_path: Path) -> None:
    old = {
        "version": 1,
        "generation_applied": 1,
        "phase": "active",
        "last_error": "",
        "target_release": "d:1.0.0",
        "active": {
            "slot": "g1",
            "release": "d:1.0.0",
            "manifest_digest": G1.manifest_digest,
            "model_digest": G1.model_digest,
        },
        "previous": None,
        "install": None,
    }
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = StateFile(tmp_path / "state.json").load()
    assert state.active == G1 and state.window is None and state.load_failures == 0


@pytest.mark.parametrize("module", ["edgefleet.agent.health", "edgefleet.agent.goldenset"])
def test_the_health_core_imports_no_io_library(module: str) -> None:
    """Like the import-linter contract on ``reconcile``: the decisions stay pure."""
    graph = grimp.build_graph("edgefleet", include_external_packages=True)
    for forbidden in ("paho", "grpc", "onnxruntime", "docker", "sqlalchemy", "edgefleet.v1"):
        if forbidden in graph.modules:
            chain = graph.find_shortest_chain(importer=module, imported=forbidden)
            assert chain is None, f"{module} imports {forbidden}: {' -> '.join(chain or ())}"
