"""``edgectl model``: register ONNX models with the controller, list and compress them.

``model add`` streams the file in chunks; the controller checks that it is ONNX and reads its
input/output signature, so a bad file comes back as the controller's one-line reason.
``model compress`` runs the controller's accuracy-gated search over compression recipes
within a time budget, shows its progress per candidate (with the controller's estimate of what
is left), then a table of every candidate; the winner becomes the next version of the model.
Exit code 3 when no candidate passes the gate. ``--variants`` also registers a model per
hardware class from the candidates and prints the ``release create`` arguments for them.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from edgefleet.common.durations import parse_duration
from edgefleet.edgectl import output, plotfile, shell

if TYPE_CHECKING:  # protobuf: loaded when a command runs or shows its help, not for --help
    from edgefleet.v1 import controller_pb2 as pb

EXIT_NOT_PASSED = 3


def escape(text: str) -> str:
    """rich's ``escape`` (markup shown as written), imported on first use: not for --help."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


app = typer.Typer(
    help="Register and list ONNX models.\n\nEach upload of a name becomes its next version; "
    "releases pack one version.",
    no_args_is_help=True,
)

Json = shell.Json


@app.command("add")
def add(
    ctx: typer.Context,
    *,
    path: Annotated[
        Path, typer.Argument(help="The .onnx file to upload.", show_default=False, metavar="PATH")
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name", "-n", help="Model name (a-z 0-9 . _ -).", show_default=False, metavar="NAME"
        ),
    ],
    description: Annotated[
        str, typer.Option("--description", "-d", help="Free text.", metavar="TEXT")
    ] = "",
    as_json: Json = False,
) -> None:
    """Upload an ONNX model as the next version of --name.

    Streams the file to the controller, which checks it is a valid ONNX model and records
    its inputs and outputs; a file that is not ONNX is refused with the reason.
    """
    from edgefleet.common.types import validate_name  # not for --help

    validate_name("model", name)
    if not path.is_file():
        shell.fail(f"no such file: {path}")
    size = path.stat().st_size
    progress = output.transfer_progress("uploading {task.description}", quiet=as_json)
    with progress, shell.controller(ctx) as client:
        task = progress.add_task(path.name, total=size)
        from edgefleet.edgectl.client import file_chunks  # grpc: not for --help

        chunks = file_chunks(path, on_chunk=lambda n: progress.advance(task, n))
        model = client.upload_model(chunks, name=name, size=size, description=description)
    if as_json:
        output.print_json(output.model_dict(model))
        return
    output.console.print(
        f"registered [bold]{model.name}[/] version {model.version} "
        f"({output.size_text(model.size)}, {model.digest})"
    )
    output.console.print(f"  inputs:  {output.specs_text(model.inputs)}", markup=False)
    output.console.print(f"  outputs: {output.specs_text(model.outputs)}", markup=False)


@app.command("list")
def list_models(
    ctx: typer.Context,
    *,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Only this model.", metavar="NAME")
    ] = "",
    as_json: Json = False,
) -> None:
    """List registered models and their versions."""
    with shell.controller(ctx) as client:
        models = client.list_models(name)
    if as_json:
        output.print_json([_model_dict(m) for m in models])
        return
    t = output.table(
        "NAME",
        "VERSION",
        "FROM",
        "SIZE",
        "TRANSFER",
        "OPSET",
        "INPUTS",
        "OUTPUTS",
        "DIGEST",
        "CREATED",
    )
    for m in models:
        t.add_row(
            m.name,
            str(m.version),
            f"v{m.parent_version}" if m.parent_version else "-",
            output.size_text(m.size),
            output.size_text(m.transfer_size) if m.transfer_size else "-",
            str(m.opset),
            output.specs_text(m.inputs),
            output.specs_text(m.outputs),
            m.digest.removeprefix("sha256:")[:12],
            output.when(m.created_at_ms),
        )
    output.print_table(t, empty="no models")


class GoldenChoice(StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


def _check_plot(path: Path | None) -> Path | None:
    """Refuse a --plot suffix before the search, not after it."""
    from edgefleet.edgectl.compress_plot import plot_paths  # not for --help

    return plotfile.check_plot(path, plot_paths)


def _check_objective(word: str) -> str:
    """A word of controller.proto's ``Objective``, refused here in one line naming them."""
    from edgefleet.common import enumwords  # protobuf: not for --help

    try:
        enumwords.objective_value(word)
    except ValueError:
        choices = ", ".join(enumwords.objective_words())
        raise typer.BadParameter(f"{word!r} is not one of {choices}") from None
    return word


class CompressCommand(TyperCommand):
    """``model compress``, whose ``--objective`` metavar is the words of controller.proto's
    ``Objective``: filled in from the generated enum when the command's help, usage or parser
    is made, so that building the command tree (``edgectl --help``) loads no protobuf."""

    def get_params(self, ctx: typer.Context) -> list[Any]:  # type: ignore[override]
        from edgefleet.common import enumwords  # protobuf: not for edgectl --help

        params = super().get_params(ctx)
        for param in params:
            if param.name == "objective":
                param.metavar = "|".join(enumwords.objective_words())
        return params


@app.command("compress", cls=CompressCommand)
def compress(
    ctx: typer.Context,
    *,
    name: Annotated[
        str, typer.Argument(help="The model to compress.", show_default=False, metavar="NAME")
    ],
    version: Annotated[
        int, typer.Option("--version", help="Version to compress; 0 = the newest.", min=0)
    ] = 0,
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe",
            "-r",
            help="'auto', or pipelines separated by commas, steps by '+': "
            "int8-dynamic,prune-structured-30+cluster-5bit+huffman",
            metavar="RECIPE",
        ),
    ] = "auto",
    eval_data: Annotated[
        Path,
        typer.Option(
            "--eval-data",
            help=".npz: batched (the model's inputs by name, or 'inputs', samples on the "
            "first axis; optional 'labels') or feeds (feedK/INPUT arrays in the model's own "
            "shapes, optional feedK/labels). Over 1 MiB it is sent in chunks (the "
            "controller's limit: registry.max_eval_bytes, 2 GiB by default).",
            show_default=False,
            metavar="FILE.npz",
        ),
    ],
    max_drop: Annotated[
        float,
        typer.Option(
            "--max-accuracy-drop",
            help="Most points a candidate may lose, per metric: top1/accuracy: percentage "
            "points of samples whose class changed; cosine: 100 x (1 - mean cosine "
            "similarity), so 1 = cosine >= 0.99; mse: MSE in percent of the original "
            "output's mean square; max-abs: max abs error in percent of the original's "
            "largest value.",
            min=0.0,
            metavar="POINTS",
        ),
    ] = 1.0,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="KIND[:ARG] for the primary output or OUTPUT=KIND[:ARG] (repeat, or "
            "separate by commas, to judge several outputs: the worst drop counts). KIND: "
            "auto, top1, cosine, mse, max-abs, iou[:THRESHOLD] (binarised at > THRESHOLD, "
            "default 0.5), seq[:ctc] (argmax sequences equal; ctc: repeats collapsed, blank "
            "0 dropped). auto: top1 for [N,C] class scores (accuracy with labels), iou for "
            "[N,1,H,W] maps in [0,1], seq for [N,T,C]/[T,N,C] class scores, max-abs for "
            "one value per sample, else cosine.",
            metavar="[OUTPUT=]KIND[:ARG]",
        ),
    ] = None,
    metric_module: Annotated[
        str,
        typer.Option(
            "--metric-module",
            help="Your own metric: a .py file or importable module and its function "
            "score(reference, candidate) -> [0, 1] (dicts of output name -> array over the "
            "eval set; higher is better; FUNCTION default 'score'). Its source is sent as "
            "text and runs on the controller only in a seccomp-confined sandbox process (no "
            "files, network or processes); it may import numpy and a few standard modules.",
            metavar="PATH_OR_MODULE[:FUNCTION]",
        ),
    ] = "",
    time_budget: Annotated[
        str,
        typer.Option(
            "--time-budget",
            help="Wall-clock time for the whole search (90s, 10m, 1h; 0 = none). "
            "Candidates run cheapest first; one that would not finish in time is not "
            "started, and the best that passed so far wins.",
            metavar="DURATION",
        ),
    ] = "10m",
    golden: Annotated[
        GoldenChoice,
        typer.Option(
            "--golden",
            help="Golden data for the winner's releases, from the winner itself with "
            "per-output tolerances measured on it: auto = attach when the tolerances hold "
            "(integer outputs stable, each tolerance <= 10% of the output's range).",
        ),
    ] = GoldenChoice.AUTO,
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="What the winner must improve most.",  # metavar: CompressCommand's
            callback=_check_objective,
        ),
    ] = "balanced",
    profile_on: Annotated[
        str,
        typer.Option(
            "--profile-on",
            help="Time candidates on this device, through its agent.",
            metavar="DEVICE",
        ),
    ] = "",
    cores: Annotated[
        int,
        typer.Option(
            "--cores",
            help="The speed gate's second thread count: the cores of the device class the "
            "model is for (0 = the timing host's: the controller's CPUs, or the --profile-on "
            "device's). Candidates are timed against the original at 1 thread and at this.",
            min=0,
            metavar="N",
        ),
    ] = 0,
    carry: Annotated[
        list[str] | None,
        typer.Option(
            "--carry",
            help="Run the eval feeds in order as one stream: output OUT of each feed is input "
            "IN of the next (the first feed gives the initial IN); scored over every step's "
            "outputs. Repeat for several states.",
            metavar="IN=OUT",
        ),
    ] = None,
    variants: Annotated[
        bool,
        typer.Option(
            "--variants",
            help="Also register a model per hardware class from the candidates the search ran, "
            "judged on accuracy alone (speed here says little about another class): the "
            "release's default (fp32 arithmetic: the winner, else the best passing fp32 "
            "candidate, else this version), fp16 for devices with a GPU (CUDA, then the CPU; "
            "the fp16 candidate) and int8 for CPUs with VNNI or dot-product instructions (the "
            "best int8 candidate, as variants int8-vnni and int8-dotprod), and print the "
            "`edgectl release create` arguments that release them. Registered before the "
            "winner, which stays the newest version. Exit code 3 only when neither a winner "
            "nor a variant was registered.",
        ),
    ] = False,
    report_out: Annotated[
        Path | None,
        typer.Option("--report-out", help="Write the Markdown report here.", metavar="FILE.md"),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a chart of every candidate here (.png or .svg; the other format is "
            "written beside it): size against accuracy, latency as marker size, the gate "
            "drawn and the winner marked.",
            metavar="FILE.png",
            callback=_check_plot,
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Compress a model version: try each recipe's candidates, keep the best that passes.

    A candidate passes when its metric drops by at most --max-accuracy-drop points on
    --eval-data and (unless --objective size) it is not slower than the original beyond the
    noise (--objective latency: faster beyond it), timed interleaved with the original at 1
    thread and at --cores threads. The search
    stops at --time-budget with the best candidate so far. The winner is registered as the
    next version of NAME; with no winner nothing is registered, the report is still printed,
    and the exit code is 3.

    --eval-data: an .npz with one array per model input (samples on the first axis), or
    'inputs' for a single-input model; 'broadcast/NAME' arrays (and 0-d arrays) are given
    once and fed with every sample (a sample rate, a recurrent state); optional 'labels'.
    Or a list of feeds, each in the model's own shapes: feed0/NAME, feed1/NAME, ... (scalars
    and a different length per feed allowed; optional feedK/labels). --carry state=stateN
    feeds each step's stateN to the next step's state.
    """
    if not eval_data.is_file():
        shell.fail(f"no such file: {eval_data}")
    metrics, hook = _metric_request(metric or [], metric_module)
    budget_s = parse_duration(time_budget, what="--time-budget")
    data = eval_data.read_bytes()
    from edgefleet.edgectl.client import COMPRESS_DEADLINE_S  # grpc: not for --help

    root = ctx.find_root()
    source = root.get_parameter_source("deadline")  # the root's --deadline, unless given
    explicit = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    deadline = (
        shell.settings(ctx).deadline_s
        if explicit
        else max(COMPRESS_DEADLINE_S, 2 * budget_s + 300)
        if budget_s
        else 24 * 3600.0
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=output.err_console,
        transient=True,
        disable=as_json,
    )
    result: pb.CompressResult | None = None
    with progress, shell.controller(ctx) as client:
        task = progress.add_task(f"compressing {name}", total=None)
        for msg in client.compress_model(
            name,
            eval_data=data,
            version=version,
            recipe=recipe,
            max_accuracy_drop=max_drop,
            objective=objective,
            profile_on=profile_on,
            deadline_s=deadline,
            time_budget_s=budget_s,
            metric=metrics,
            metric_module=hook,
            golden=golden.value,
            cores=cores,
            carry=carry or [],
            variants=variants,
        ):
            progress.update(task, total=msg.total or None, completed=msg.done)
            kind = msg.WhichOneof("update")
            if kind == "message":
                progress.update(task, description=escape(msg.message))
            elif kind == "candidate" and not as_json:
                c = msg.candidate
                mark = "[green]pass[/]" if c.passed_gate else "[red]fail[/]"
                progress.console.print(
                    f"{mark} {escape(c.candidate)} ({c.seconds:.1f} s): {escape(c.verdict)}"
                )
                progress.update(
                    task,
                    description=f"compressing {name}: about {msg.remaining_s:.0f} s left",
                )
            elif kind == "result":
                result = msg.result
    if result is None:
        shell.fail("the controller ended the compression without a result")
    if report_out is not None:
        report_out.write_text(result.report_markdown)
    if as_json:
        output.print_json(_result_dict(result))
    else:
        _print_result(result, max_drop=max_drop)
        if variants:
            _print_variants(result)
    if plot is not None:
        _write_plot(result, plot, max_drop=max_drop, as_json=as_json)
    if not result.passed and not result.variants:
        raise typer.Exit(EXIT_NOT_PASSED)


def release_args(result: pb.CompressResult) -> list[str]:
    """The ``edgectl release create NAME --version SEMVER`` arguments that release the
    compression's default model with its variants (--variants); [] without them."""
    if not result.HasField("variant_default"):
        return []
    from edgefleet.edgectl.releases import SHORT_PROVIDERS  # not for --help

    short = {full: name for name, full in reversed(SHORT_PROVIDERS.items())}
    args = ["--model-version", str(result.variant_default.model.version)]
    for v in result.variants:
        spec = f"{v.name}={v.model.name}:{v.model.version}"
        if v.requires:
            spec += "@" + "+".join(v.requires)
        if v.providers:
            spec += "/" + ",".join(short.get(p.name, p.name) for p in v.providers)
        args += ["--variant", spec]
    return args


def _print_variants(result: pb.CompressResult) -> None:
    def line(who: str, v: pb.CompressVariant) -> str:
        text = f"  {who:<13} {v.model.name} version {v.model.version} ({v.candidate})"
        if v.requires:
            text += " for " + " and ".join(v.requires)
        if v.providers:
            text += ", on " + " > ".join(p.name for p in v.providers)
        return text

    lines = ["variants (judged on accuracy alone):"]
    if result.HasField("variant_default"):
        lines.append(line("default", result.variant_default))
    lines += [line(v.name, v) for v in result.variants]
    print_ = output.console.print
    for text in lines:
        print_(text, markup=False, highlight=False, soft_wrap=True)
    for note in result.variant_notes:
        output.note(escape(note))
    if result.HasField("variant_default"):
        name = result.variant_default.model.name
        print_(
            f"release them with: edgectl release create {name} --version SEMVER "
            + " ".join(release_args(result)),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _metric_request(
    metric: list[str], metric_module: str
) -> tuple[str, tuple[str, str, str] | None]:
    """--metric joined by commas ("" = auto), and --metric-module's (source, function, file)."""
    metrics = ",".join(m.strip() for m in metric if m.strip() and m.strip() != "auto")
    if not metric_module:
        return metrics, None
    from edgefleet.edgectl.metric_source import MetricSourceError, read_metric_module

    try:
        hook = read_metric_module(metric_module)
    except (MetricSourceError, OSError) as exc:
        shell.fail(f"--metric-module: {exc}")
    return metrics, (hook.source, hook.function, hook.origin)


def _write_plot(result: pb.CompressResult, path: Path, *, max_drop: float, as_json: bool) -> None:
    from edgefleet.edgectl.compress_plot import write_compress_plot  # not for --help

    try:
        written = write_compress_plot(result, path, max_drop=max_drop)
    except OSError as exc:
        shell.fail(f"could not write the chart: {exc}")
    text = "chart: " + ", ".join(str(p) for p in written)
    if as_json:
        output.note(text)  # stdout is the JSON
    else:
        output.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_result(result: pb.CompressResult, *, max_drop: float) -> None:
    nt = max((c.speed_threads_nt for c in result.candidates), default=0)
    t = output.table(
        "CANDIDATE",
        "TECHNIQUES",
        "SIZE",
        "TRANSFER",
        "P50 MS",
        "SPEED 1T",
        f"SPEED {nt or 'N'}T",
        "METRIC",
        "DROP",
        "GATE",
        "VERDICT",
    )
    for c in (result.original, *result.candidates):
        skipped = c.size_bytes == 0
        won = c.candidate == result.winner
        if c.candidate == "original":
            gate = "-"
        elif skipped:
            gate = "SKIP"
        else:
            gate = "[green]PASS[/]" if c.passed_gate else "[red]FAIL[/]"
        t.add_row(
            ("* " if won else "") + escape(c.candidate),
            "+".join(c.techniques),
            output.size_text(c.size_bytes) if not skipped else "-",
            output.size_text(c.transfer_bytes) if not skipped else "-",
            _num(c.p50_ms, "{:.3f}"),
            _speed(c.speed_ratio, c.speed_ratio_low, c.speed_ratio_high),
            _speed(c.speed_ratio_nt, c.speed_ratio_nt_low, c.speed_ratio_nt_high),
            _metric_cell(c),
            _num(c.drop, "{:.2f}"),
            gate,
            escape(c.verdict),
            style="bold green" if won else ("dim" if skipped else None),
        )
    output.console.print(t)
    judged = result.original.outputs
    if judged:
        output.console.print(
            "metric per output: "
            + "; ".join(f"{escape(o.output)}: {escape(o.metric)}" for o in judged)
            + (" (a candidate's drop is the worst of them)" if len(judged) > 1 else ""),
            highlight=False,
        )
    if result.passed:
        m = result.model
        transfer = f", transfer {output.size_text(m.transfer_size)}" if m.transfer_size else ""
        output.console.print(
            f"winner [bold green]{result.winner}[/]: registered [bold]{m.name}[/] "
            f"version {m.version} (compressed from version {m.parent_version}; "
            f"{output.size_text(m.size)}{transfer}, {m.digest})"
        )
    else:
        output.note(
            f"no candidate passed the gate (max drop {max_drop:g} points, not slower): "
            "nothing registered"
        )


def _metric_cell(c: pb.CompressCandidate) -> str:
    """``iou>0.5 0.9731``; several judged outputs: one line each, with its drop."""
    if len(c.outputs) <= 1:
        return escape(f"{c.metric} {_num(c.value, '{:.4f}')}")
    return "\n".join(
        escape(f"{o.output}: {o.metric} {_num(o.value, '{:.4f}')} ({_num(o.drop, '{:.2f}')})")
        for o in c.outputs
    )


def _speed(ratio: float, low: float, high: float) -> str:
    """``0.62x [0.60-0.65]``: candidate/original latency (< 1 faster) and its 95% interval."""
    return f"{ratio:.2f}x [{low:.2f}-{high:.2f}]" if ratio > 0 else "-"


def _num(x: float, fmt: str) -> str:
    return "-" if math.isnan(x) else fmt.format(x)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _model_dict(m: pb.RegisteredModel) -> dict[str, Any]:
    return {
        **output.model_dict(m),
        "parent_version": m.parent_version,
        "compressed": m.compressed,
        "transfer_size": m.transfer_size,
    }


def _candidate_dict(c: pb.CompressCandidate) -> dict[str, Any]:
    return {
        "candidate": c.candidate,
        "techniques": list(c.techniques),
        "size_bytes": c.size_bytes,
        "transfer_bytes": c.transfer_bytes,
        "p50_ms": _finite(c.p50_ms),
        "metric": c.metric,
        "value": _finite(c.value),
        "drop": _finite(c.drop),
        "outputs": [
            {
                "output": o.output,
                "metric": o.metric,
                "value": _finite(o.value),
                "drop": _finite(o.drop),
            }
            for o in c.outputs
        ],
        "passed_gate": c.passed_gate,
        "verdict": c.verdict,
        "seconds": c.seconds,
        "speed_ratio": c.speed_ratio or None,
        "speed_ratio_ci": [c.speed_ratio_low, c.speed_ratio_high] if c.speed_ratio else None,
        "speed_rounds": c.speed_rounds,
        "speed_ratio_nt": c.speed_ratio_nt or None,
        "speed_ratio_nt_ci": (
            [c.speed_ratio_nt_low, c.speed_ratio_nt_high] if c.speed_ratio_nt else None
        ),
        "speed_rounds_nt": c.speed_rounds_nt,
        "speed_threads_nt": c.speed_threads_nt or None,
    }


def _result_dict(r: pb.CompressResult) -> dict[str, Any]:
    return {
        "passed": r.passed,
        "winner": r.winner or None,
        "model": _model_dict(r.model) if r.HasField("model") else None,
        "original": _candidate_dict(r.original),
        "candidates": [_candidate_dict(c) for c in r.candidates],
        "variant_default": (
            _variant_dict(r.variant_default) if r.HasField("variant_default") else None
        ),
        "variants": [_variant_dict(v) for v in r.variants],
        "variant_notes": list(r.variant_notes),
        "release_args": release_args(r),
    }


def _variant_dict(v: pb.CompressVariant) -> dict[str, Any]:
    return {
        "name": v.name or None,
        "candidate": v.candidate,
        "requires": list(v.requires),
        "providers": [p.name for p in v.providers],
        "model": _model_dict(v.model),
    }
