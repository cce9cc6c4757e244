"""The version the agent reports (DeviceStatus.agent_version) is the installed package's."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from edgefleet.agent import daemon


def test_agent_version_is_what_importlib_metadata_says() -> None:
    assert daemon.agent_version() == metadata.version("edgefleet")


def test_agent_version_without_an_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.sys, "path", [])
    assert daemon.agent_version() == "0.0.0"


def test_agent_version_reads_the_first_dist_info_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for root, version in (("a", "9.8.7"), ("b", "1.2.3")):
        info = tmp_path / root / f"edgefleet-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.4\nName: edgefleet\nVersion: {version}\n\nVersion: 0.0.1\n"
        )
    (tmp_path / "empty").mkdir()
    paths = [str(tmp_path / "empty"), str(tmp_path / "a"), str(tmp_path / "b")]
    monkeypatch.setattr(daemon.sys, "path", paths)
    assert daemon.agent_version() == "9.8.7"
