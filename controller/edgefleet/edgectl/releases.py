"""``edgectl release``: signed, versioned releases of a registered model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.common.durations import parse_duration
from edgefleet.edgectl import oci_cmd, output, shell

if TYPE_CHECKING:  # the domain types and protobuf: loaded when a command runs, not for --help
    from edgefleet.common.types import ExecutionProvider
    from edgefleet.v1 import common_pb2, controller_pb2

app = typer.Typer(
    help="Create and list signed releases.\n\nA release NAME:VERSION (semver) packs one "
    "version of the model NAME with its manifest and health policy, signed by the active key.",
    no_args_is_help=True,
)

Json = shell.Json


SHORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "acl": "ACLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def parse_providers(text: str) -> tuple[ExecutionProvider, ...]:
    """``--providers``: ``NAME[:KEY=VALUE...]`` comma-separated, in order of preference."""
    from edgefleet.common.types import ExecutionProvider

    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, *pairs = item.split(":")
        name = SHORT_PROVIDERS.get(name.strip().lower(), name.strip())
        options = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise typer.BadParameter(
                    f"{pair!r} in {item!r} is not KEY=VALUE", param_hint="--providers"
                )
            options[key.strip()] = value.strip()
        out.append(ExecutionProvider(name, options))
    return tuple(out)


def providers_text(providers: Iterable[common_pb2.ExecutionProvider]) -> str:
    """``TensorrtExecutionProvider(trt_fp16_enable=1) > CPUExecutionProvider``."""
    return " > ".join(
        p.name
        + (f"({','.join(f'{k}={v}' for k, v in sorted(p.options.items()))})" if p.options else "")
        for p in providers
    )


def parse_variant(text: str) -> controller_pb2.VariantRequest:
    """``--variant``: ``NAME=MODEL[:VERSION][@REQ[+REQ...]][/PROVIDERS]``."""
    from edgefleet.v1 import common_pb2, controller_pb2

    name, sep, rest = text.partition("=")
    spec, _, tail = rest.partition("@") if "@" in rest else rest.partition("/")
    requires, _, providers = tail.partition("/") if "@" in rest else ("", "", tail)
    model, _, version = spec.partition(":")
    if not (sep and name.strip() and model.strip()) or not (version or "0").isdigit():
        raise typer.BadParameter(
            f"{text!r} is not NAME=MODEL[:VERSION][@REQ[+REQ...]][/PROVIDERS]",
            param_hint="--variant",
        )
    return controller_pb2.VariantRequest(
        name=name.strip(),
        model=model.strip(),
        model_version=int(version or 0),
        requires=[r.strip() for r in requires.split("+") if r.strip()],
        providers=[
            common_pb2.ExecutionProvider(name=p.name, options=dict(p.options))
            for p in parse_providers(providers)
        ],
    )


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
            help="Devices refuse the release when the median of its check inferences is "
            "slower, and roll it back when live p95 is slower during its health window.",
            min=0.0,
            metavar="MS",
        ),
    ] = None,
    golden: Annotated[
        Path | None,
        typer.Option(
            "--golden",
            help="An .npz of golden inputs (named as the model's inputs, or input/NAME) and "
            "optional expected outputs (expected/OUTPUT); missing expectations are computed "
            "from the model. Or feeds in the model's own shapes (feed0/NAME, feed1/NAME, ..., "
            "scalars allowed; optional feedK/expected/OUTPUT), each run alone. At most 32 MiB. "
            "Devices check the release against it before and after activation.",
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE.npz",
        ),
    ] = None,
    health_window: Annotated[
        str | None,
        typer.Option(
            "--health-window",
            help="How long devices watch the release after activating it (30s, 5m), rolling "
            "back by themselves when it fails; default: no window.",
            metavar="DURATION",
        ),
    ] = None,
    max_load_failures: Annotated[
        int | None,
        typer.Option(
            "--max-load-failures",
            help="Loads or runtime failures after which devices roll the release back (default 3).",
            min=1,
            metavar="K",
        ),
    ] = None,
    golden_max_abs_error: Annotated[
        float | None,
        typer.Option(
            "--golden-max-abs-error",
            help="Largest absolute error of float golden outputs (default 1e-4).",
            min=0.0,
            metavar="X",
        ),
    ] = None,
    golden_min_agreement: Annotated[
        float | None,
        typer.Option(
            "--golden-min-agreement",
            help="Share of golden rows whose top-1 class must match (default 1.0).",
            min=0.0,
            max=1.0,
            metavar="Y",
        ),
    ] = None,
    notes: Annotated[
        str, typer.Option("--notes", help="Free text kept with the release.", metavar="TEXT")
    ] = "",
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="Where devices run it: onnxruntime (in the agent's process) or container "
            "(in Docker, from an image built on the controller host: the runtime base "
            "edgefleet/runtime:latest plus a layer with the model and golden data; its "
            "digest is signed in the manifest).",
            metavar="onnxruntime|container",
        ),
    ] = "onnxruntime",
    image: Annotated[
        str,
        typer.Option(
            "--image",
            help="With --runtime container: your own image (in the controller host's Docker) "
            "instead of a built one; it must serve the agent's InferenceService and "
            "grpc.health.v1 on port 50051.",
            metavar="REF",
        ),
    ] = "",
    providers: Annotated[
        str,
        typer.Option(
            "--providers",
            help="ONNX Runtime execution providers in order of preference, comma-separated, "
            "each NAME[:KEY=VALUE...] with its provider options, e.g. "
            '"TensorrtExecutionProvider:trt_fp16_enable=1,CUDAExecutionProvider,'
            'CPUExecutionProvider" (short names: tensorrt, cuda, openvino, xnnpack, acl, '
            "cpu). Signed in the manifest; a device opens the model on the first one its "
            "ONNX Runtime offers and that initialises, else on the CPU, and reports a "
            "provider_fallback event when that is not the first. TensorRT's engine cache "
            "is kept in the release's slot on the device. Default: the CPU only.",
            metavar="PROVIDERS",
        ),
    ] = "",
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="A model variant for a hardware class, NAME=MODEL[:VERSION][@REQ[+REQ...]]"
            "[/PROVIDERS] (repeatable, tried in order): registered model MODEL (VERSION 0 or "
            "none: its newest), with the release model's inputs and outputs, for devices "
            "meeting every REQ: arch:x86_64|aarch64|armv7l, cpu:FEATURE (avx2, avx512, vnni, "
            "amx, f16c, neon, dotprod, fp16, i8mm, sve), gpu, provider:NAME (the device's ONNX "
            "Runtime offers it); PROVIDERS as in --providers. E.g. "
            "fp16=digits-fp16@gpu+provider:CUDAExecutionProvider/cuda,cpu or "
            "int8=digits-int8@cpu:vnni. A device runs the first that fits, else the default "
            "model, and `devices list` shows which.",
            metavar="VARIANT",
        ),
    ] = None,
    profile_on: Annotated[
        list[str] | None,
        typer.Option(
            "--profile-on",
            help="Time the default model and each --variant that fits this device's reported "
            "hardware on the device, through its agent (its Benchmark call: each on its own "
            "providers, two interleaved rounds), and sign the fastest as the choice of the "
            "device's hardware class: devices with its arch and the same of the variants' "
            "requirements run it, first fit otherwise. Repeatable, one device per class.",
            metavar="DEVICE",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create release NAME:VERSION from a registered model version.

    Packs the newest version of model NAME (or --model-version) into a signed, immutable
    release that deploy can roll out. With --runtime container, devices with Docker run it as
    a container; `release push` puts its image in a registry next to the release.
    """
    from edgefleet.common.types import HealthPolicy, validate_name, validate_version

    validate_name("release", name)
    validate_version(version)
    given: dict[str, Any] = {
        "latency_budget_ms": latency_budget_ms,
        "health_window_s": None
        if health_window is None
        else parse_duration(health_window, what="--health-window"),
        "max_load_failures": max_load_failures,
        "golden_max_abs_error": golden_max_abs_error,
        "golden_min_agreement": golden_min_agreement,
    }
    given = {k: v for k, v in given.items() if v is not None}
    health = HealthPolicy(**given) if given else None
    golden_bytes = golden.read_bytes() if golden is not None else b""
    if runtime not in ("onnxruntime", "container"):
        raise typer.BadParameter("onnxruntime or container", param_hint="--runtime")
    if image and runtime != "container":
        raise typer.BadParameter("needs --runtime container", param_hint="--image")
    preference = parse_providers(providers)
    if preference and runtime != "onnxruntime":
        raise typer.BadParameter("for --runtime onnxruntime only", param_hint="--providers")
    with shell.controller(ctx) as client:
        release = client.create_release(
            name,
            version,
            model_version=model_version,
            health=health,
            notes=notes,
            golden=golden_bytes,
            runtime="" if runtime == "onnxruntime" else runtime,
            image=image,
            providers=preference,
            variants=[parse_variant(v) for v in variant or ()],
            profile_on=profile_on or (),
        )
    m = release.manifest
    if as_json:
        info = output.release_dict(release)
        info |= {
            "golden_digest": m.golden_digest,
            "golden_size": m.golden_size,
            "health_window_s": m.health.health_window_s,
            "max_load_failures": m.health.max_load_failures,
            "runtime": m.runtime or "onnxruntime",
            "image": m.image,
            "variants": [
                {"name": v.name, "model_digest": v.model_digest, "requires": list(v.requires)}
                for v in m.variants
            ],
            "preferences": [
                {
                    "arch": p.arch,
                    "holds": list(p.holds),
                    "variant": p.variant or None,
                    "measured_on": p.measured_on,
                    "timings": [
                        {"variant": x.variant or None, "p50_ms": x.p50_ms, "providers": x.providers}
                        for x in p.timings
                    ],
                }
                for p in m.preferences
            ],
        }
        output.print_json(info)
        return
    output.console.print(
        f"released [bold]{release.name}:{release.version}[/] "
        f"(model version {m.model_version}, signed by {release.key_id})"
    )
    output.console.print(f"  manifest: {release.manifest_digest}", markup=False)
    if m.golden_digest:
        output.console.print(f"  golden:   {m.golden_digest} ({m.golden_size} bytes)", markup=False)
    if m.health.health_window_s:
        output.console.print(f"  health window: {m.health.health_window_s:g}s", markup=False)
    if m.image:
        output.console.print(f"  image:    {m.image} (runtime {m.runtime})", markup=False)
    if m.providers:
        output.console.print(f"  providers: {providers_text(m.providers)}", markup=False)
    for v in m.variants:
        needs = " + ".join(v.requires) or "any device"
        output.console.print(f"  variant {v.name}: {v.model_digest} for {needs}", markup=False)
    for p in m.preferences:
        cls = " + ".join((p.arch, *p.holds))
        timed = ", ".join(f"{x.variant or 'default'} {x.p50_ms:.3f} ms" for x in p.timings)
        output.console.print(
            f"  on {cls} (measured on {p.measured_on}): {p.variant or 'the default'} ({timed})",
            markup=False,
        )


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


app.command("export")(oci_cmd.export)
app.command("push")(oci_cmd.push)
