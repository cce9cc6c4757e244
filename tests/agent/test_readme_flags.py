"""The README's agent table names every flag of ``edge-agent run --help``, and its default.

The flags come from the command itself (the argparse parser ``--help`` prints), the defaults
from ``AgentSettings``: a flag added, renamed or removed, or a default changed, without the
README following fails here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent import cli, config
from tests.agent.clirun import invoke

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = "| flag / key | default | meaning |"


def table() -> dict[str, tuple[str, str]]:
    """README agent table: each flag -> (its row's default cell, the whole row)."""
    lines = README.read_text().splitlines()
    assert lines.count(HEADER) == 1, f"README.md has no single agent table {HEADER!r}"
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[lines.index(HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3 and all(cells), f"a row needs flag, default and meaning: {line}"
        for flag in re.findall(r"--[a-z][a-z0-9-]*", cells[0]):
            assert flag not in rows, f"{flag} has two rows"
            rows[flag] = (cells[1], line)
    return rows


def run_options() -> list[argparse.Action]:
    (commands,) = [a for a in cli.parser({})._actions if isinstance(a, argparse._SubParsersAction)]
    command = commands.choices["run"]
    return [a for a in command._actions if a.option_strings and a.dest != "help"]


def default_of(option: argparse.Action) -> Any:
    """The setting's default behind ``option`` (None: the option has no setting)."""
    flat = config.ALIASES.get(option.dest, option.dest)
    if flat not in config.KEYS:
        return None
    section, name, _ = config.KEYS[flat]
    settings = config.AgentSettings()
    return getattr(getattr(settings, section) if section else settings, name)


def written(value: Any) -> str | None:
    """How a default is written in the table ("on"/"off", 300 not 300.0), None: not checked
    (none, empty, a collection: the row says it in words)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int | Path):
        return str(value)
    return value if isinstance(value, str) and value else None


def test_every_flag_of_edge_agent_run_is_in_the_readme_with_its_default() -> None:
    rows = table()
    options = run_options()
    flags = {flag for o in options for flag in o.option_strings}
    assert {"--mqtt", "--fetch-deadline", "--predict-workers", "--log-level"} <= flags
    missing = sorted(flags - set(rows))
    assert not missing, f"README.md's agent table lacks {missing}"
    unknown = sorted(set(rows) - flags)
    assert not unknown, f"README.md's agent table names flags edge-agent run lacks: {unknown}"
    for option in options:
        expected = written(default_of(option))
        if expected is None:
            continue
        cell, row = rows[option.option_strings[0]]
        alone = rf"(?<![\w./]){re.escape(expected)}(?![\w./])"  # 300 is not in 3000
        assert re.search(alone, cell), (
            f"{option.option_strings[0]}: default {expected!r} not in {row!r}"
        )


@pytest.mark.parametrize("flag", ["--mqtt", "--fetch-deadline", "--predict-workers", "--log-level"])
def test_the_help_lists_the_flags_the_readme_documents(flag: str) -> None:
    """``--help`` really shows what the table is checked against (not only the definitions)."""
    result = invoke(["run", "--help"])
    assert result.exit_code == 0, result.output
    assert flag in result.output
