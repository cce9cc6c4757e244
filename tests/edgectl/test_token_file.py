"""``--token-file`` of ``edgectl operator add`` and ``edgectl device enroll`` (one
``shell.keep_token``): the token made once goes into the file, 0600 even where a wider file
was there before, and neither on stdout nor in ``--json``; without the option ``--json``
carries it. The operator's token in the file is the one the controller made: it signs in.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.controller import support
from tests.edgectl.conftest import Edgectl

FLEET = "token-file-tests"


def _make(command: str, name: str) -> list[str]:
    if command == "operator":
        return ["operator", "add", name, "--role", "viewer"]
    return ["device", "enroll", name, "--fleet", FLEET]


@pytest.mark.parametrize("command", ["operator", "device"])
@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("there_before", [False, True])
def test_the_token_goes_into_the_file_only(
    edgectl: Edgectl, tmp_path: Path, command: str, as_json: bool, there_before: bool
) -> None:
    token_file = tmp_path / "secrets" / "token"
    if there_before:
        token_file.parent.mkdir()
        token_file.write_text("old\n")
        token_file.chmod(0o644)
    name = support.unique("tf")
    argv = [*_make(command, name), "--token-file", str(token_file)]
    result = edgectl(*argv, *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    text = token_file.read_text()
    token = text.removesuffix("\n")
    assert token and "\n" not in token and text == token + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in result.stdout
    if as_json:
        assert "token" not in json.loads(result.stdout)
    else:
        assert str(token_file) in result.stdout + result.stderr
    if command == "operator":
        as_operator = Edgectl(edgectl.address, token=token, ca_file=edgectl.ca_file)
        signed_in = as_operator("operator", "whoami", "--json")
        assert signed_in.exit_code == 0, signed_in.output
        assert json.loads(signed_in.stdout)["name"] == name


@pytest.mark.parametrize("command", ["operator", "device"])
def test_without_a_token_file_json_carries_the_token(edgectl: Edgectl, command: str) -> None:
    result = edgectl(*_make(command, support.unique("tf")), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["token"]
