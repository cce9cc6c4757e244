"""``percentiles`` gives what ``numpy.percentile`` gives, bit for bit, without loading numpy.ma."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgefleet.agent.percentiles import percentiles


def test_the_same_floats_as_numpy() -> None:
    rng = np.random.default_rng(10)
    for trial in range(3000):
        values = rng.exponential(size=int(rng.integers(1, 200))) * 10 ** rng.uniform(-6, 6)
        if trial % 3 == 0:
            values = np.round(values, 2)  # ties
        qs = [0.0, 50.0, 95.0, 99.0, 100.0, float(rng.uniform(0, 100))]
        assert percentiles(values, qs) == np.percentile(values, qs).tolist()
    assert percentiles([3.0, 1.0, 2.0], (50,)) == [2.0]


def test_no_values_or_a_percentile_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentiles([], (50,))
    with pytest.raises(ValueError, match="not in"):
        percentiles([1.0], (101,))


def test_it_does_not_import_numpy_ma() -> None:
    code = (
        "import sys\n"
        "from edgefleet.agent.percentiles import percentiles\n"
        "percentiles([1.0, 2.0, 3.0], (50, 95, 99))\n"
        "assert 'numpy.ma' not in sys.modules, 'numpy.ma was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
