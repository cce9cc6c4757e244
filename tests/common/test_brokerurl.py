from __future__ import annotations

import pytest

from edgefleet.common.errors import InvalidInputError
from edgefleet.common.mqttclient import BrokerUrl, parse_urls


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


def test_a_list_of_nodes() -> None:
    assert parse_urls("mqtt://a:1, mqtt://b:2,") == (BrokerUrl("a", 1), BrokerUrl("b", 2))
    assert parse_urls("mqtt://a") == (BrokerUrl("a", 1883),)


@pytest.mark.parametrize("urls", ["", " , ", "mqtt://a:1,mqtts://b:2"])
def test_a_bad_list_of_nodes(urls: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_urls(urls)
