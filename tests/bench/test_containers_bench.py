"""The container bench, run small: a real agent, dockerd, registry and broker; the five figures.

Skips, saying why, where Docker, the runtime base image, ``docker-registry`` or Mosquitto is
missing (``bench/containers.py``'s own check); ``.ci/run`` installs and starts them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.test_simfleet import load

KEYS = {"container_p50_us", "inproc_p50_us", "switch_s", "pulled_bytes", "image_bytes"}


def test_the_container_bench_writes_its_five_figures(tmp_path: Path) -> None:
    bench = load("containers")
    why = bench.missing()
    if why:
        pytest.skip(why)
    out = tmp_path / "containers.json"
    assert bench.main(["--iterations", "20", "--out", str(out)]) is True
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    assert result["container_p50_us"] > 0 and result["inproc_p50_us"] > 0
    assert result["switch_s"] > 0
    assert 0 < result["pulled_bytes"] < result["image_bytes"]  # the base layers were not pulled
