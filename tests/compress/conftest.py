"""Fixtures for the compression tests: the digits MLP and a small digits CNN, with data."""

from __future__ import annotations

import pytest

from edgefleet.controller.compress import samples
from edgefleet.controller.compress.evaluating import EvalSet
from edgefleet.demo import digits


@pytest.fixture(scope="session")
def cnn(digits_data: digits.DigitsData) -> samples.TrainedCnn:
    return samples.train_cnn(digits_data, epochs=6)


@pytest.fixture(scope="session")
def cnn_eval(digits_data: digits.DigitsData) -> EvalSet:
    return EvalSet.from_arrays({"pixels": samples.images(digits_data.x_test)}, digits_data.y_test)


@pytest.fixture(scope="session")
def cnn_cal(digits_data: digits.DigitsData) -> tuple[dict[str, object], ...]:
    x = samples.images(digits_data.x_train[:512])
    return EvalSet.from_arrays({"pixels": x}, batch_size=128).batches  # type: ignore[return-value]


@pytest.fixture(scope="session")
def mlp_eval(digits_data: digits.DigitsData) -> EvalSet:
    return EvalSet.from_arrays({"pixels": digits_data.x_test}, digits_data.y_test)


@pytest.fixture(scope="session")
def mlp_cal(digits_data: digits.DigitsData) -> tuple[dict[str, object], ...]:
    return EvalSet.from_arrays({"pixels": digits_data.x_train[:512]}, batch_size=128).batches  # type: ignore[return-value]
