"""Rollouts at rest: the strategy's JSON and wire forms, the schema migration of an older
database, and the fleet metrics computed from stored telemetry."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.controller import api
from edgefleet.controller.db import Database
from edgefleet.controller.devices.metrics import device_families
from edgefleet.controller.devices.rows import DeviceView
from edgefleet.controller.rollouts import codec, strategy
from edgefleet.controller.rollouts.store import RolloutStore
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support

STRATEGIES = [
    strategy.parse(),
    strategy.parse(kind="canary"),
    strategy.parse(
        kind="canary",
        canary="12.5%",
        waves="25%,50%",
        max_parallel=3,
        bake="1.5m",
        device_timeout="90s",
        max_failures="2",
        max_latency_ratio=2.0,
        max_error_rate=0.01,
    ),
    strategy.parse(kind="canary", canary="2", waves="4,8", max_failures="33.3333%"),
]


@pytest.mark.parametrize("s", STRATEGIES)
def test_a_strategy_survives_json_and_the_wire(s: strategy.Strategy) -> None:
    assert codec.strategy_from_json(codec.strategy_to_json(s)) == s
    echoed = api.strategy_to_pb(s.kind.value, s)
    assert api.strategy(pb.DeployRequest(strategy=echoed)) == s


def test_an_unset_or_empty_strategy_is_all_at_once_with_the_defaults() -> None:
    assert api.strategy(pb.DeployRequest()) == strategy.Strategy()
    assert api.strategy(pb.DeployRequest(strategy=pb.RolloutStrategy())) == strategy.Strategy()
    assert codec.strategy_from_json(None) == strategy.Strategy()


def test_a_database_from_before_staged_rollouts_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema as the first controller made it
        conn.executescript(
            """
            CREATE TABLE rollouts (
                rollout_id VARCHAR(40) NOT NULL PRIMARY KEY, release VARCHAR(200) NOT NULL,
                fleet VARCHAR(63) NOT NULL, strategy VARCHAR(32) NOT NULL,
                created_at_ms BIGINT NOT NULL);
            CREATE INDEX ix_rollouts_fleet ON rollouts (fleet);
            CREATE TABLE rollout_targets (
                rollout_id VARCHAR(40) NOT NULL REFERENCES rollouts (rollout_id),
                device_id VARCHAR(63) NOT NULL, generation BIGINT NOT NULL,
                PRIMARY KEY (rollout_id, device_id));
            INSERT INTO rollouts VALUES ('ro-old', 'digits:1.0.0', 'f1', 'all_at_once', 1000);
            INSERT INTO rollout_targets VALUES ('ro-old', 'd1', 4);
            """
        )
    conn.close()
    db = Database(f"sqlite:///{path}")
    try:
        db.create_schema()
        db.create_schema()  # and again: nothing left to add
        store = RolloutStore(db)
        rec = store.load("ro-old")
        unfinished = store.unfinished_ids()
    finally:
        db.dispose()

    assert (rec.kind, rec.rollout.phase, rec.rollout.release) == (
        "all-at-once",
        "succeeded",
        "digits:1.0.0",
    )
    assert [(x.device_id, x.generation, x.state) for x in rec.rollout.targets] == [
        ("d1", 4, "sent")
    ]
    assert (rec.rollout.strategy, rec.updated_at_ms) == (strategy.Strategy(), 1000)
    assert unfinished == []


NOW = 10_000_000


def view(
    device: str, x: t.Telemetry | None, *, received: int = NOW, online: bool = True
) -> DeviceView:
    return DeviceView(
        device_id=device,
        fleet="f",
        active_release="digits:1.0.0",
        online=online,
        telemetry=x,
        telemetry_received_ms=received,
    )


def telemetry(device: str, **kw: Any) -> t.Telemetry:
    base = t.Telemetry(device, "digits:1.0.0", 10.0, 300, 3, 4.0, 8.0, 12.0)
    return replace(base, **kw)


def samples(devices: list[DeviceView]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in device_families(devices, now_ms=NOW):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[(s.name.removeprefix("edgefleet_device_"), s.labels["device"])] = s.value
    return out


def test_device_metrics_come_from_each_window_s_own_counts() -> None:
    got = samples(
        [
            view("d1", telemetry("d1", power_w=5.5, energy_per_inference_j=0.18)),
            view("d2", telemetry("d2", window_s=5.0, requests=50, errors=0, at_ms=1)),  # skewed
            view("d3", None, online=False),
            view("d4", telemetry("d4"), received=NOW - 61_000),  # stale: 3 windows, 60 s
            view("d5", telemetry("d5", window_s=0.0)),
        ]
    )
    assert got == {
        ("online", "d1"): 1.0,
        ("online", "d2"): 1.0,
        ("online", "d3"): 0.0,
        ("online", "d4"): 1.0,
        ("online", "d5"): 1.0,
        ("latency_p50_seconds", "d1"): 0.004,
        ("latency_p95_seconds", "d1"): 0.008,
        ("requests_per_second", "d1"): 30.0,
        ("errors_per_second", "d1"): 0.3,
        ("power_watts", "d1"): 5.5,
        ("energy_per_inference_joules", "d1"): 0.18,
        ("latency_p50_seconds", "d2"): 0.004,
        ("latency_p95_seconds", "d2"): 0.008,
        ("requests_per_second", "d2"): 10.0,
        ("errors_per_second", "d2"): 0.0,
    }


def test_one_scrape_of_the_controller_covers_the_fleet(
    ctl: support.Running, device: support.Device
) -> None:
    fleet = support.unique("fleet")
    ids = [f"{fleet}-d0", f"{fleet}-d1"]
    for dev in ids:
        device.status(dev, fleet, phase=t.InstallPhase.ACTIVE, active_release="digits:1.0.0")
    far_future = 4_102_444_800_000  # a device clock in 2100
    device.publish(
        topics.telemetry(ids[0]),
        support.wire_bytes(telemetry(ids[0], power_w=4.0, at_ms=far_future)),
        qos=0,
    )
    presence = t.Presence(ids[0], fleet, online=True)
    device.publish(
        topics.presence(fleet, ids[0]), wire.presence_to_pb(presence).SerializeToString()
    )

    def scrape() -> dict[tuple[str, str], float] | None:
        got: dict[tuple[str, str], float] = {}
        text = generate_latest(ctl.controller.metrics.registry).decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("edgefleet_device_") and s.labels.get("fleet") == fleet:
                    got[(s.name.removeprefix("edgefleet_device_"), s.labels["device"])] = s.value
        ready = ("power_watts", ids[0]) in got and ("online", ids[1]) in got
        return got if ready and got.get(("online", ids[0])) == 1.0 else None

    got = support.eventually(scrape, what="the fleet's device metrics")
    assert got[("online", ids[1])] == 0.0
    assert got[("requests_per_second", ids[0])] == 30.0
    assert ("requests_per_second", ids[1]) not in got, "no telemetry, no figures"
