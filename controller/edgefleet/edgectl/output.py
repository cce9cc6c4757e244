"""How edgectl prints: rich tables for people, plain JSON for scripts (``--json``).

Tables go to stdout; progress and notes go to stderr, so ``--json`` output stays parseable.
The ``*_dict`` functions fix the JSON shape of each thing (phases as ``"active"``, 64-bit
numbers as numbers), independent of protobuf's JSON mapping.

Strings a device chose (ids, releases, last errors, event messages, endpoints, rollout reasons
quoting them) never reach the terminal as they came: ``plain`` drops ANSI escape sequences and
turns control characters into spaces, ``safe`` also escapes rich markup, so ``[/]`` or
``[bold]`` in a device's message prints as written instead of crashing or restyling the output.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # protobuf and rich: loaded when a command prints, not for --help
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from edgefleet.v1 import common_pb2, mqtt_pb2
    from edgefleet.v1 import controller_pb2 as pb

    console: Console
    """stdout's console (tables)."""
    err_console: Console
    """stderr's console (progress, notes)."""
else:

    def __getattr__(name: str) -> Any:
        """``console`` and ``err_console``, made on first use: ``edgectl --help`` does not
        import rich (about a fifth of its start-up)."""
        if name not in ("console", "err_console"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from rich.console import Console

        made = globals()[name] = Console(
            stderr=name == "err_console", highlight=False, soft_wrap=True
        )
        return made


PHASE_STYLES = {"active": "green", "failed": "red", "rolled_back": "red"}

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \\), two-byte ESC sequences, 8-bit CSI
_ANSI = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_]?)"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
)


def _console(name: str) -> Console:
    """This module's ``console`` or ``err_console`` (made on first use)."""
    made: Console = getattr(sys.modules[__name__], name)
    return made


def plain(text: str) -> str:
    """``text`` safe for a terminal: ANSI escape sequences dropped, control characters spaces."""
    from edgefleet.common import wire  # numpy and the protobuf codecs: not for --help

    return wire.CONTROL_CHARS.sub(" ", _ANSI.sub("", text))


def safe(text: str) -> str:
    """``plain(text)`` with rich markup escaped: what to put in a table cell or a marked-up line."""
    from rich.markup import escape

    return escape(plain(text))


def print_json(value: Any, *, compact: bool = False) -> None:
    """JSON on stdout; ``compact`` keeps it on one line (tensors would take one line a number)."""
    import json  # not for --help

    print(json.dumps(value, indent=None if compact else 2))


def note(text: str) -> None:
    """A remark for the person at the terminal (stderr; never mixed into ``--json``)."""
    _console("err_console").print(text)


def when(ms: int) -> str:
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def phase_name(value: int) -> str:
    from edgefleet.common import wire

    phase = wire.phase_from_pb(value)
    return str(phase) if phase is not None else ""


def styled_phase(value: int) -> str:
    name = phase_name(value) or "-"
    style = PHASE_STYLES.get(name)
    return f"[{style}]{name}[/]" if style else name


def size_text(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - unreachable


def specs_text(specs: Iterable[common_pb2.TensorSpec]) -> str:
    from edgefleet.common import wire

    return wire.describe_specs(wire.specs_from_pb(specs))


# identifiers and times read badly when broken; free text and specs may fold
_NO_WRAP = frozenset(
    {
        "DEVICE",
        "NAME",
        "RELEASE",
        "ACTIVE RELEASE",
        "VERSION",
        "KEY ID",
        "CREATED",
        "TIME",
        "GEN",
        "ROLLOUT",
        "PHASE",
        "STATE",
        "STEP",
        "FLEET",
        "KIND",
        "AGE",
        "INSTALL",
    }
)


def table(*columns: str, title: str | None = None) -> Table:
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=c in _NO_WRAP)
    return t


def print_table(t: Table, *, empty: str) -> None:
    """The table, or ``empty`` (e.g. "no devices") when it has no rows."""
    if t.row_count:
        _console("console").print(t)
    else:
        _console("console").print(f"[dim]{empty}[/]")


# --- JSON shapes --------------------------------------------------------------------------


def transfer_progress(label: str = "{task.description}", *, quiet: bool) -> Progress:
    """A transient bar on stderr for bytes moving (bar, size, speed, time left); ``label``
    names each task; ``quiet`` (--json, --quiet): drawn nowhere."""
    from rich.progress import (  # rich: not for --help
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console("err_console"),
        transient=True,
        disable=quiet,
    )


def spec_dict(s: common_pb2.TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}


def key_dict(k: pb.KeyInfo) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "active": k.active,
        "created": k.created,
        "created_at_ms": k.created_at_ms,
        "retired_at_ms": k.retired_at_ms,
        "revoked_at_ms": k.revoked_at_ms,
        "trusted_until_ms": k.trusted_until_ms,
        "public_key_pem": k.public_key_pem,
    }


def model_dict(m: pb.RegisteredModel) -> dict[str, Any]:
    return {
        "name": m.name,
        "version": m.version,
        "digest": m.digest,
        "size": m.size,
        "opset": m.opset,
        "description": m.description,
        "created_at_ms": m.created_at_ms,
        "inputs": [spec_dict(s) for s in m.inputs],
        "outputs": [spec_dict(s) for s in m.outputs],
    }


def release_dict(r: pb.ReleaseInfo) -> dict[str, Any]:
    m = r.manifest
    return {
        "name": r.name,
        "version": r.version,
        "release": f"{r.name}:{r.version}",
        "manifest_digest": r.manifest_digest,
        "key_id": r.key_id,
        "created_at_ms": r.created_at_ms,
        "model_version": m.model_version,
        "model_digest": m.model_digest,
        "model_size": m.model_size,
        "runtime": m.runtime,
        "latency_budget_ms": m.health.latency_budget_ms,
        "inputs": [spec_dict(s) for s in m.inputs],
        "outputs": [spec_dict(s) for s in m.outputs],
        "providers": [{"name": p.name, "options": dict(p.options)} for p in m.providers],
    }


def telemetry_dict(x: mqtt_pb2.Telemetry) -> dict[str, Any]:
    return {
        "release": x.release,
        "window_s": x.window_s,
        "requests": x.requests,
        "errors": x.errors,
        "refused": x.refused,
        "p50_ms": x.p50_ms,
        "p95_ms": x.p95_ms,
        "p99_ms": x.p99_ms,
        "power_w": x.power_w if x.HasField("power_w") else None,
        "cpu_percent": x.cpu_percent,
        "memory_bytes": x.memory_bytes,
        "at_ms": x.at_ms,
    }


def container_dict(c: mqtt_pb2.ContainerStatus) -> dict[str, Any]:
    return {
        "release": c.release,
        "container_id": c.container_id,
        "state": c.state,
        "image": c.image,
        "restarts": c.restarts,
        "cpu_seconds": c.cpu_seconds,
        "memory_bytes": c.memory_bytes,
        "memory_limit_bytes": c.memory_limit_bytes,
    }


def container_state(c: mqtt_pb2.ContainerStatus) -> str:
    style = "green" if c.state == "running" else "red"
    return f"[{style}]{safe(c.state) or '?'}[/]"


def container_cell(c: mqtt_pb2.ContainerStatus) -> str:
    """One short table cell: state, memory in use, restarts when there were any."""
    cell = container_state(c)
    if c.state == "running":
        cell += f" {size_text(c.memory_bytes)}"
    if c.restarts:
        cell += f" [yellow]{c.restarts} restarts[/]"
    return cell


def hardware_dict(h: mqtt_pb2.Hardware) -> dict[str, Any]:
    return {
        "arch": h.arch,
        "cpu_features": list(h.cpu_features),
        "cores": h.cores,
        "memory_bytes": h.memory_bytes,
        "gpus": [{"name": g.name, "memory_bytes": g.memory_bytes} for g in h.gpus],
        "providers": list(h.providers),
        "board": h.board,
        "onnxruntime_version": h.onnxruntime_version,
    }


def short_provider(name: str) -> str:
    """``CUDAExecutionProvider`` as ``CUDA``."""
    return name.removesuffix("ExecutionProvider")


def hardware_cell(h: mqtt_pb2.Hardware) -> str:
    """One short table cell: arch, cores, memory, int8 features, GPUs (``x86_64 8c 16G vnni``)."""
    parts = [safe(h.arch) or "?"]
    if h.cores:
        parts.append(f"{h.cores}c")
    if h.memory_bytes:
        parts.append(f"{h.memory_bytes / 2**30:.0f}G")
    int8 = [f for f in h.cpu_features if f in ("vnni", "dotprod", "amx", "i8mm")]
    if int8:
        parts.append(safe(",".join(int8)))
    if h.gpus:
        parts.append(f"{len(h.gpus)} GPU" if len(h.gpus) == 1 else f"{len(h.gpus)} GPUs")
    return " ".join(parts)


def provider_cell(d: pb.DeviceInfo) -> str:
    """The active release's provider, after its model variant ("int8 on CPU") when it runs
    one; yellow "(fallback)" when not its first preference."""
    if not d.active_provider:
        return safe(d.active_variant) or "-"
    cell = safe(short_provider(d.active_provider))
    if d.active_variant:
        cell = f"{safe(d.active_variant)} on {cell}"
    return f"[yellow]{cell} (fallback)[/]" if d.provider_fallback else cell


def device_dict(d: pb.DeviceInfo) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "fleet": d.fleet,
        "labels": dict(d.labels),
        "online": d.online,
        "phase": phase_name(d.phase),
        "active_release": d.active_release,
        "previous_release": d.previous_release,
        "target_release": d.target_release,
        "generation_applied": d.generation_applied,
        "generation_desired": d.generation_desired,
        "last_error": d.last_error,
        "predict_endpoint": d.predict_endpoint,
        "last_seen_ms": d.last_seen_ms,
        "telemetry": telemetry_dict(d.telemetry) if d.HasField("telemetry") else None,
        "container": container_dict(d.container) if d.HasField("container") else None,
        "hardware": hardware_dict(d.hardware) if d.HasField("hardware") else None,
        "active_provider": d.active_provider,
        "provider_fallback": d.provider_fallback,
        "active_variant": d.active_variant,
    }


def event_dict(e: mqtt_pb2.DeviceEvent) -> dict[str, Any]:
    return {
        "at_ms": e.at_ms,
        "device_id": e.device_id,
        "kind": e.kind,
        "release": e.release,
        "generation": e.generation,
        "phase": phase_name(e.phase),
        "message": e.message,
    }
