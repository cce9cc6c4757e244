"""``edgectl release``: signed, versioned releases of a registered model."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.common.types import HealthPolicy, validate_name, validate_version
from edgefleet.edgectl import output, shell

app = typer.Typer(
    help="Create and list signed releases.\n\nA release NAME:VERSION (semver) packs one "
    "version of the model NAME with its manifest and health policy, signed by the active key.",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("create")
def create(
    ctx: typer.Context,
    *,
    name: Annotated[
        str, typer.Argument(help="Model name; the release has the same name.", metavar="NAME")
    ],
    version: Annotated[
        str,
        typer.Option(
            "--version", "-v", help="Semver of the release, e.g. 1.0.0.", metavar="SEMVER"
        ),
    ],
    model_version: Annotated[
        int,
        typer.Option(
            "--model-version",
            help="Registry version of the model; 0 = the newest.",
            min=0,
            metavar="N",
        ),
    ] = 0,
    latency_budget_ms: Annotated[
        float | None,
        typer.Option(
            "--latency-budget-ms",
            help="Devices refuse the release when the p50 of its smoke inferences is slower.",
            min=0.0,
            metavar="MS",
        ),
    ] = None,
    notes: Annotated[
        str, typer.Option("--notes", help="Free text kept with the release.", metavar="TEXT")
    ] = "",
    as_json: Json = False,
) -> None:
    """Create release NAME:VERSION from a registered model version.

    Packs the newest version of model NAME (or --model-version) into a signed, immutable
    release that deploy can roll out.
    """
    validate_name("release", name)
    validate_version(version)
    health = (
        None if latency_budget_ms is None else HealthPolicy(latency_budget_ms=latency_budget_ms)
    )
    with shell.controller(ctx) as client:
        release = client.create_release(
            name, version, model_version=model_version, health=health, notes=notes
        )
    if as_json:
        output.print_json(output.release_dict(release))
        return
    output.console.print(
        f"released [bold]{release.name}:{release.version}[/] "
        f"(model version {release.manifest.model_version}, signed by {release.key_id})"
    )
    output.console.print(f"  manifest: {release.manifest_digest}", markup=False)


@app.command("list")
def list_releases(
    ctx: typer.Context,
    *,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Only releases of this name.", metavar="NAME")
    ] = "",
    as_json: Json = False,
) -> None:
    """List releases, newest last."""
    with shell.controller(ctx) as client:
        releases = client.list_releases(name)
    if as_json:
        output.print_json([output.release_dict(r) for r in releases])
        return
    t = output.table("RELEASE", "MODEL", "BUDGET", "MANIFEST", "KEY", "CREATED")
    for r in releases:
        budget = r.manifest.health.latency_budget_ms
        t.add_row(
            f"{r.name}:{r.version}",
            str(r.manifest.model_version),
            f"{budget:g} ms" if budget else "-",
            r.manifest_digest.removeprefix("sha256:")[:12],
            r.key_id,
            output.when(r.created_at_ms),
        )
    output.print_table(t, empty="no releases")
