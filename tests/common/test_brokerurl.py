from __future__ import annotations

import pytest

from edgefleet.common.errors import InvalidInputError
from edgefleet.common.mqttclient import BrokerUrl


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", BrokerUrl("127.0.0.1", 1883)),
        ("mqtts://broker:9999", BrokerUrl("broker", 9999, tls=True)),
        ("mqtt://dev%2D1:p%40ss@h:1", BrokerUrl("h", 1, username="dev-1", password="p@ss")),
    ],
)
def test_parse(url: str, expected: BrokerUrl) -> None:
    assert BrokerUrl.parse(url) == expected


@pytest.mark.parametrize(
    "url", ["http://u:hunter2@h", "mqtt://u:hunter2@h:port", "mqtt://u:hunter2@:1883"]
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        BrokerUrl.parse(url)
    assert "hunter2" not in str(info.value)


def test_redacted() -> None:
    assert BrokerUrl.parse("mqtts://dev:hunter2@h").redacted() == "mqtts://dev:***@h:8883"
