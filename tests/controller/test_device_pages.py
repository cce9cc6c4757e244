"""Paged listings through the real operator API (issue 11 item 4: 10,000 devices).

A real controller on a Mosquitto of the test's own (so its 1,000-odd retained statuses reach no
other test's controller) registers more devices than one page holds. ``ListDevices`` pages by
(fleet, device id): each page is ``page_size`` devices (0 = 500, capped at 1,000) with a token
for the next and the total; every device comes once, in order; a token the server did not give,
or one given for another fleet, is INVALID_ARGUMENT. ``edgectl devices list`` shows the first
page and says how many more there are; ``--all`` pages through every one. ``GetRollout`` lists
``device_limit`` devices and counts every device by state, and the newest device changes
(every phase change).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import grpc
import pytest

from edgefleet.controller.db import Database
from edgefleet.controller.rollouts import engine, strategy
from edgefleet.controller.rollouts.engine import RolloutPhase, TargetState
from edgefleet.controller.rollouts.history import Kind, transitions
from edgefleet.controller.rollouts.rows import RolloutRecord
from edgefleet.controller.rollouts.store import RolloutStore
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker, mosquitto_available
from tests.controller import support
from tests.controller.support import NEW
from tests.edgectl.conftest import Edgectl

BIG = 1_050  # more than the cap (1,000) and than two default pages (500)
SMALL = 3


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path_factory.mktemp("pages-broker"))
    b.start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def crowded(
    tmp_path_factory: pytest.TempPathFactory, own_broker: Broker
) -> Iterator[tuple[support.Running, str, str]]:
    """A controller with ``BIG`` devices in one fleet and ``SMALL`` in another (one for the
    module: registering them is the slow part)."""
    data = tmp_path_factory.mktemp("pages-controller") / "data"
    ctl = support.start(support.settings(data, own_broker.url))
    device = support.Device(own_broker.url)
    big, small = support.unique("big"), support.unique("small")
    try:
        for i in range(BIG):
            device.status(f"{big}-{i:04d}", big)
        for i in range(SMALL):
            device.status(f"{small}-{i}", small)
        support.eventually(
            lambda: (
                _page(ctl, big, size=1).total == BIG and _page(ctl, small, size=1).total == SMALL
            ),
            timeout=120,
            what=f"{BIG + SMALL} devices registered",
        )
        yield ctl, big, small
    finally:
        device.close()
        ctl.stop()


def _page(
    ctl: support.Running, fleet: str = "", *, size: int = 0, token: str = ""
) -> pb.ListDevicesResponse:
    request = pb.ListDevicesRequest(fleet=fleet, page_size=size, page_token=token)
    return ctl.stub.ListDevices(request, timeout=30)


def _pages(ctl: support.Running, fleet: str, *, size: int) -> list[pb.ListDevicesResponse]:
    pages = [_page(ctl, fleet, size=size)]
    while pages[-1].next_page_token:
        pages.append(_page(ctl, fleet, size=size, token=pages[-1].next_page_token))
        assert len(pages) <= BIG, "the pages never end"
    return pages


def test_pages_cover_every_device_once_in_order(crowded: tuple[support.Running, str, str]) -> None:
    ctl, big, small = crowded
    pages = _pages(ctl, big, size=400)
    assert [len(p.devices) for p in pages] == [400, 400, 250]
    assert all(p.total == BIG for p in pages)
    assert all(p.next_page_token for p in pages[:-1]) and not pages[-1].next_page_token
    ids = [d.device_id for p in pages for d in p.devices]
    assert ids == [f"{big}-{i:04d}" for i in range(BIG)]
    assert {d.fleet for p in pages for d in p.devices} == {big}

    # Every fleet: by fleet, then id, the small fleet's devices where their name sorts.
    every = _pages(ctl, "", size=1000)
    listed = [(d.fleet, d.device_id) for p in every for d in p.devices]
    assert listed == sorted(listed) and len(listed) == len(set(listed))
    assert {f for f, _ in listed} >= {big, small}
    assert sum(f == big for f, _ in listed) == BIG and sum(f == small for f, _ in listed) == SMALL
    assert every[0].total == len(listed)


def test_the_server_caps_and_defaults_the_page_size(
    crowded: tuple[support.Running, str, str],
) -> None:
    ctl, big, small = crowded
    capped = _page(ctl, big, size=5000)
    assert len(capped.devices) == 1000 and capped.next_page_token and capped.total == BIG
    default = _page(ctl, big)
    assert len(default.devices) == 500 and default.next_page_token
    whole = _page(ctl, small, size=SMALL)
    assert len(whole.devices) == SMALL and not whole.next_page_token


def test_a_token_the_server_did_not_give_is_invalid_argument(
    crowded: tuple[support.Running, str, str],
) -> None:
    ctl, big, small = crowded
    forged = base64.urlsafe_b64encode(json.dumps(["other", big, big, "x"]).encode()).decode()
    for token in ("not-a-token", "!!!", forged):
        err = support.rpc_error(partial(_page, ctl, big, size=10, token=token))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err.message
        assert "page_token" in err.message
    # A real token, but given for another fleet's listing.
    token = _page(ctl, big, size=10).next_page_token
    err = support.rpc_error(lambda: _page(ctl, small, size=10, token=token))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert big in err.message


def test_edgectl_lists_the_first_page_and_says_how_many_more(
    crowded: tuple[support.Running, str, str],
) -> None:
    ctl, big, _ = crowded
    edgectl = Edgectl(ctl.api, token=ctl.token)

    first = edgectl("devices", "list", "--fleet", big, "--json")
    assert first.exit_code == 0, first.stderr
    assert [d["device_id"] for d in json.loads(first.stdout)] == [
        f"{big}-{i:04d}" for i in range(500)
    ]
    assert f"{BIG - 500:,} more devices of {BIG:,}: --all lists them" in first.stderr

    every = edgectl("devices", "list", "--fleet", big, "--json", "--all")
    assert every.exit_code == 0, every.stderr
    assert len(json.loads(every.stdout)) == BIG and "more device" not in every.stderr

    few = edgectl("devices", "list", "--fleet", big, "--limit", "10")
    assert few.exit_code == 0, few.stderr
    assert f"{big}-0009" in few.stdout and f"{big}-0010" not in few.stdout
    assert f"{BIG - 10:,} more devices" in few.stderr


def test_get_rollout_lists_device_limit_devices_and_counts_them_all(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, _ = agents.fleet(ctl, 5)
    started = ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet), timeout=30)
    support.wait_phase(ctl.stub, started.rollout_id, "succeeded")

    some = ctl.stub.GetRollout(pb.RolloutRef(rollout_id=started.rollout_id, device_limit=2))
    assert [d.device_id for d in some.devices] == [f"{fleet}-d0", f"{fleet}-d1"]
    assert some.devices_total == 5 and dict(some.device_counts) == {"healthy": 5}
    assert some.history  # the transitions stay

    every = ctl.stub.GetRollout(pb.RolloutRef(rollout_id=started.rollout_id))
    assert len(every.devices) == 5 and every.devices_total == 5


def test_the_store_pages_a_rollout_and_bounds_its_device_changes(tmp_path: Path) -> None:
    """``RolloutStore.page`` reads the first targets and counts all; ``history`` with
    ``device_changes`` keeps every phase change but only the newest device changes."""
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        db.create_schema()
        store = RolloutStore(db)
        ids = [f"d{i:02d}" for i in range(30)]
        r = engine.start("ro-1", "f", "m:1", strategy.parse(), ids)
        first = RolloutRecord(r, "all-at-once", 1, 1)
        store.save(None, first, [], issued_at_ms=1, transitions=transitions(None, r, at_ms=1))
        targets = tuple(
            replace(x, state=TargetState.SENT if i % 3 else TargetState.HEALTHY, generation=1)
            for i, x in enumerate(r.targets)
        )
        moved = replace(first, rollout=replace(r, targets=targets, phase=RolloutPhase.WAVE))
        changes = transitions(r, moved.rollout, at_ms=2)
        store.save(first, moved, [], issued_at_ms=2, transitions=changes)

        page = store.page("ro-1", device_limit=4)
        assert [x.device_id for x in page.record.rollout.targets] == ids[:4]
        assert dict(page.counts) == {"healthy": 10, "sent": 20} and page.total == 30
        assert page.steps == (30,)

        every = store.history("ro-1")
        assert sum(h.kind is Kind.DEVICE for h in every) == 30
        bounded = store.history("ro-1", device_changes=5)
        newest = [h.device_id for h in every if h.kind is Kind.DEVICE][-5:]
        assert [h.device_id for h in bounded if h.kind is Kind.DEVICE] == newest
        assert [h for h in bounded if h.kind is not Kind.DEVICE] == [
            h for h in every if h.kind is not Kind.DEVICE
        ]
    finally:
        db.dispose()
