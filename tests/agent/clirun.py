"""``edge-agent`` run in this process as its console script runs it, for tests.

The agent's command line is argparse (no typer on a device), so typer's ``CliRunner`` cannot
drive it; ``invoke`` is its counterpart: the real ``cli.cli`` with its output captured, an
environment of the test's own, and a usage error's ``SystemExit`` turned into the status.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefleet.agent import cli


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(args: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
    """``edge-agent ARGS`` with ``env`` laid over this process's environment."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.cli(list(args), env={**os.environ, **(env or {})})
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            code = exc.code if isinstance(exc.code, int) else 2
    return Result(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())
