"""The CLI's shell: global settings carried in the typer context, and one-line errors.

Every command reaches the controller through ``controller(ctx)``, with the operator's token
from ``EDGECTL_TOKEN``, else the file ``EDGECTL_TOKEN_FILE`` names, else ``token_file`` in
the config file (``$EDGECTL_CONFIG``, default ``~/.config/edgefleet/edgectl.toml``, which may
also name the ``controller``); never from the command line, where ``ps`` would show it.
The CA the operator API's TLS certificate must chain to comes from ``--ca-file``, else
``EDGECTL_CA_FILE``, else ``ca_file`` in the config file (a ``--tls`` controller writes it as
``api-ca.pem`` in its data dir); with none the channel is plaintext (``--insecure`` controllers).
Errors raised on purpose (``EdgeFleetError``, which includes ``RpcFailed``) and click's usage
errors end as one line ``error: ...`` on stderr and a non-zero exit code, never a traceback.
``EdgectlGroup`` does this for the root command, so it holds under ``edgectl`` and under
typer's ``CliRunner`` alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from edgefleet.common.deadlines import DEFAULT_DEADLINE_S
from edgefleet.common.errors import EdgeFleetError, InvalidInputError
from edgefleet.edgectl import output

if TYPE_CHECKING:  # grpc is loaded by the first command that calls, not for --help
    from edgefleet.edgectl.client import ControllerClient

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
"""The ``--json`` option of the commands that print JSON for scripts."""
OnlyFleet = Annotated[str, typer.Option("--fleet", "-f", help="Only this fleet.", metavar="FLEET")]
"""The ``--fleet`` option of the listings that show one fleet or (its default, "") all."""
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file", help="Write the token to FILE (0600) instead of stdout.", metavar="FILE"
    ),
]
"""The ``--token-file`` option of the commands that make a token shown once (``keep_token``)."""
DEFAULT_CONTROLLER = "127.0.0.1:50052"  # the controller's operator API (--api)
COMMAND_ORDER = (
    "keys", "model", "release", "deploy", "rollout", "rollback", "devices", "device", "top",
    "events",
    "predict", "operator", "audit", "demo",
)  # fmt: skip
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Settings:
    """What the root options say; stored as ``ctx.obj`` for every command."""

    controller: str = DEFAULT_CONTROLLER
    """``HOST:PORT`` of the controller's operator API."""
    deadline_s: float = DEFAULT_DEADLINE_S
    """Deadline of each unary gRPC call, in seconds."""
    token: str = field(default="", repr=False)
    """The operator's bearer token (``EDGECTL_TOKEN``); empty = read ``token_file``."""
    token_file: Path | None = None
    """File holding the token (``EDGECTL_TOKEN_FILE``, or the config file's ``token_file``)."""
    ca_file: Path | None = None
    """CA bundle the operator API's certificate must chain to (TLS); None: plaintext."""

    def read_token(self) -> str:
        if self.token or self.token_file is None:
            return self.token.strip()
        try:
            return self.token_file.expanduser().read_text().strip()
        except OSError as exc:
            raise InvalidInputError(f"cannot read token file {self.token_file}: {exc}") from None


def config_path(env: Mapping[str, str]) -> Path:
    if env.get("EDGECTL_CONFIG"):
        return Path(env["EDGECTL_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "edgefleet" / "edgectl.toml"


def load_settings(
    *,
    controller: str,
    deadline_s: float,
    ca_file: str = "",
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Root options, then the environment, then the config file, then the defaults."""
    env = os.environ if env is None else env
    path = config_path(env)
    config: dict[str, object] = {}
    if path.is_file():
        import tomllib  # only where there is a config file: not for --help

        try:
            config = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(f"cannot read {path}: {exc}") from None
    for key in ("controller", "token_file", "ca_file"):
        if not isinstance(config.get(key, ""), str):
            raise InvalidInputError(f"{path}: {key} must be a string")
    token_file: Path | None = None
    if env.get("EDGECTL_TOKEN_FILE"):
        token_file = Path(env["EDGECTL_TOKEN_FILE"])
    elif config.get("token_file"):
        token_file = path.parent / Path(str(config["token_file"])).expanduser()
    ca: Path | None = None
    if ca_file or env.get("EDGECTL_CA_FILE"):
        ca = Path(ca_file or env["EDGECTL_CA_FILE"]).expanduser()
    elif config.get("ca_file"):
        ca = path.parent / Path(str(config["ca_file"])).expanduser()
    return Settings(
        controller=controller or str(config.get("controller") or DEFAULT_CONTROLLER),
        deadline_s=deadline_s,
        token=env.get("EDGECTL_TOKEN", ""),
        token_file=token_file,
        ca_file=ca,
    )


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings()


def controller(ctx: typer.Context) -> ControllerClient:
    s = settings(ctx)
    from edgefleet.edgectl.client import ControllerClient

    return ControllerClient(
        s.controller, token=s.read_token(), deadline_s=s.deadline_s, ca_file=s.ca_file
    )


def keep_token(token: str, token_file: Path | None) -> dict[str, str]:
    """Write a token just made to ``token_file`` (0600 before the token goes in), if given;
    what ``--json`` shows of it: nothing once it is in the file, else the token."""
    if token_file is None:
        return {"token": token}
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.touch(mode=0o600, exist_ok=True)
    token_file.chmod(0o600)
    token_file.write_text(token + "\n")
    return {}


def one_line(text: str) -> str:
    """``text`` on one line, without the escape sequences a device's message may carry."""
    return " ".join(output.plain(text).split())


def fail(message: str, *, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and leave with ``code``."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def _exit_for(exc: BaseException) -> int:
    """Print the one line an exception deserves; return the exit code."""
    if isinstance(exc, EdgeFleetError):
        typer.echo(f"error: {one_line(str(exc))}", err=True)
        return EXIT_FAILED
    if isinstance(exc, OSError):  # a file named on the command line: missing, unreadable, ...
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {one_line(exc.strerror or str(exc))}{where}", err=True)
        return EXIT_FAILED
    if isinstance(exc, typer.TyperException):  # click's usage and parameter errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return EXIT_USAGE
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
        return exc.exit_code
    typer.echo("error: aborted", err=True)  # typer.Abort
    return EXIT_INTERRUPTED


class EdgectlGroup(TyperGroup):
    """The root group: every expected failure ends as one line on stderr, not a traceback.

    Runs typer's main loop in non-standalone mode and does the standalone part here, so
    that ``EdgeFleetError``s (``RpcFailed`` among them) and usage errors print alike.
    Lists commands in the order an operator uses them.
    """

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        names = super().list_commands(ctx)
        order = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: order.get(n, len(order)))

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
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except (EdgeFleetError, OSError, typer.TyperException, typer.Abort) as exc:
            sys.exit(_exit_for(exc))
        sys.exit(rv if isinstance(rv, int) else 0)
