"""Which ONNX Runtime execution provider a release's session runs on.

A release names its providers in order of preference, with options (``Manifest.providers``;
empty: CPU only). The session is opened on the first one that this ONNX Runtime offers *and*
that initialises: ORT lists CUDA in ``get_available_providers()`` whenever the onnxruntime-gpu
wheel is installed, GPU or not, and a CUDA session without a GPU quietly runs on the CPU, so
the provider that counts is the one the opened session names first (``get_providers()``).
The CPU provider is always the last resort, named or not. Why each provider above the chosen
one was passed over is kept (``Opened.passed_over``): the agent reports it as a
``provider_fallback`` event.

The session gets the chosen provider with every offered one below it in the preference behind
it, so nodes it cannot run go to the next (TensorRT's unsupported subgraphs to CUDA), as ORT
recommends.

TensorRT builds an engine per model, which takes minutes on a Jetson: its engine cache is on
by default and always kept inside the release's slot (``trt_engine_cache_path``), so it goes
with the slot and a release never sees another's engines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgefleet.common import types as t

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TRT_CACHE_DIR = "trt-engines"
"""The TensorRT engine cache's directory inside a slot."""


@dataclass(frozen=True)
class Opened:
    session: Any
    provider: str
    """The provider the session runs on (its first)."""
    passed_over: tuple[str, ...] = ()
    """One line per preferred provider above it that was not used, and why."""

    @property
    def fallback(self) -> str:
        """The ``provider_fallback`` event's message ("" when the first preference runs)."""
        if not self.passed_over:
            return ""
        return f"running on {self.provider}: " + "; ".join(self.passed_over)


def options_for(provider: t.ExecutionProvider, *, slot_dir: Path) -> dict[str, str]:
    """The options ORT gets for ``provider``: the release's, plus the slot's engine cache."""
    options = dict(provider.options)
    if provider.name == TENSORRT:
        cache = slot_dir / TRT_CACHE_DIR
        cache.mkdir(parents=True, exist_ok=True)
        options.setdefault("trt_engine_cache_enable", "1")
        options["trt_engine_cache_path"] = str(cache)
    return options


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def open_session(
    path: Path,
    preference: Sequence[t.ExecutionProvider],
    *,
    slot_dir: Path,
    make_options: Any,
    available: Sequence[str] | None = None,
) -> Opened:
    """Open ``path`` on the first provider of ``preference`` that runs here, else on the CPU.

    ``make_options``: a fresh ``ort.SessionOptions`` for each try (ORT may change the one it
    was given). Raises what ORT raised when not even the CPU provider opens the model.
    """
    offered = tuple(ort.get_available_providers() if available is None else available)
    order = list(preference)
    if all(p.name != CPU for p in order):
        order.append(t.ExecutionProvider(CPU))
    passed_over: list[str] = []
    for i, p in enumerate(order):
        if p.name == CPU:  # always there; what it raises is the model's fault
            session = ort.InferenceSession(
                str(path), make_options(), providers=[(CPU, dict(p.options))]
            )
            if passed_over:
                log.warning("%s: running on %s: %s", path, CPU, "; ".join(passed_over))
            return Opened(session, CPU, tuple(passed_over))
        if p.name not in offered:
            passed_over.append(f"{p.name} is not in this ONNX Runtime ({ort.__version__})")
            continue
        # the providers below it stay behind it: ORT gives each the nodes those above it
        # cannot run (TensorRT's unsupported subgraphs to CUDA, the rest to the CPU)
        below = [q for q in order[i + 1 :] if q.name in offered or q.name == CPU]
        chain = [(q.name, options_for(q, slot_dir=slot_dir)) for q in (p, *below)]
        if all(q.name != CPU for q in below):
            chain.append((CPU, {}))
        try:
            session = ort.InferenceSession(str(path), make_options(), providers=chain)
        except Exception as exc:  # ORT raises its own classes, all plain Exceptions
            passed_over.append(f"{p.name} failed: {_short(exc)}")
            continue
        actual = session.get_providers()[0]
        if actual == p.name:
            return Opened(session, p.name, tuple(passed_over))
        passed_over.append(f"{p.name} did not initialise (the session runs on {actual})")
    raise AssertionError("unreachable: the CPU provider ends every preference")
