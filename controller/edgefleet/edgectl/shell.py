"""The CLI's shell: global settings carried in the typer context, and one-line errors.

Every command reaches the controller through ``controller(ctx)``. Errors raised on purpose
(``EdgeFleetError``, which includes ``RpcFailed``) and click's usage errors end as one line
``error: ...`` on stderr and a non-zero exit code, never a traceback. ``EdgectlGroup`` does
this for the root command, so it holds under ``edgectl`` and under typer's ``CliRunner`` alike.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import typer
from typer.core import TyperGroup

from edgefleet.common import rpc
from edgefleet.common.errors import EdgeFleetError
from edgefleet.edgectl.client import ControllerClient

DEFAULT_CONTROLLER = "127.0.0.1:50051"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Settings:
    """What the root options say; stored as ``ctx.obj`` for every command."""

    controller: str = DEFAULT_CONTROLLER
    """``HOST:PORT`` of the controller's gRPC API."""
    deadline_s: float = rpc.DEFAULT_DEADLINE_S
    """Deadline of each unary gRPC call, in seconds."""


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings()


def controller(ctx: typer.Context) -> ControllerClient:
    s = settings(ctx)
    return ControllerClient(s.controller, deadline_s=s.deadline_s)


def one_line(text: str) -> str:
    return " ".join(text.split())


def fail(message: str, *, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and leave with ``code``."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


class EdgectlGroup(TyperGroup):
    """The root group: turns every expected failure into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeFleetError as exc:
            fail(str(exc))
        except OSError as exc:  # a file named on the command line: missing, unreadable, ...
            where = f": {exc.filename}" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}")

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            typer.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)
