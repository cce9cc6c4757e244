"""Whose fault a failed ONNX Runtime run is: the caller's inputs, or the release.

``runtime.ModelRuntime`` asks after ONNX Runtime raised on inputs that passed the signature
checks (names, dtypes, ranks, fixed dimensions). The inputs are to blame (``blame`` returns a
string; the agent answers INVALID_ARGUMENT with ORT's message, counts it as
``reason="invalid_input"`` and in telemetry's ``refused`` (never in its error rate, never as a
runtime failure in a health window), and never forwards the request: a neighbour would fail
the same way) when

1. ORT says so: its status is INVALID_ARGUMENT (``InvalidArgument``: an index out of range, an
   expand shape the input cannot take, ...);
2. two inputs disagree on a dimension the model names alike (``input_ids`` and
   ``attention_mask``, both ``[batch, sequence]``, sent with different lengths): the model's
   own contract says they must agree; or
3. ORT failed on a shape (a broadcast, reshape, concat or matmul that does not fit) and two
   inputs differ in the size of a dynamic dimension at the same axis: a guess where the model
   does not name its dimensions, but the usual way a caller's inputs are inconsistent.

Anything else is the release's (``None``: INTERNAL, a runtime failure): inputs that fit the
model's declared signature and agree with each other, and still make it fail (a Reshape to a
fixed batch, memory exhausted), are what a broken release does to traffic its signature
accepts, and the health window rolls it back for them. Rule 3 can blame a caller for a model
whose inputs legitimately differ in length (an encoder's and a decoder's) and that also fails
on a shape; such a release's failures then show in telemetry's ``refused`` count and the
``invalid_input`` metric, not in the error rate the rollout's ``--max-error-rate`` gate reads.

``runtime_message`` is ORT's message as a caller reads it: without ORT's prefix, C++ source
locations and failed assertions, one line, no control characters, at most ``MAX_MESSAGE``
characters. Pure: exception type names, messages and shapes; no ONNX Runtime import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

MAX_MESSAGE = 400
"""Characters of ORT's message kept in an error (it names a node and sizes well within)."""

Dims = Sequence[int | str | None]
"""A model input's declared shape as ORT gives it: sizes, symbolic names, None (unnamed)."""

_INPUT_STATUSES = frozenset({"InvalidArgument"})  # ORT exception classes that blame the input
_READ_AT_MOST = 4096  # of a message, before any pattern runs on it
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_NODE = re.compile(
    r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: "
)
# "/src/.../element_wise_ops.h:563 void onnxruntime::X::Init(ptrdiff_t) axis == 1 was false. "
_SOURCE = re.compile(
    r"(?:\S*/)?\w+\.(?:h|hpp|cc|cpp):\d+ "
    r"(?:[\w:<>,&*~ ]{1,200}\([^()]{0,200}\)(?: const)? )?"
    r"(?:[^.]{0,200}? was false\. )?"
)
_SHAPE = re.compile(r"broadcast|reshape|dimension|shape|rank", re.IGNORECASE)
_RESOURCE = re.compile(r"allocat|out of memory", re.IGNORECASE)


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line without control characters, cut to ``limit`` characters."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def runtime_message(exc: BaseException) -> str:
    """ORT's message of ``exc`` for a person: "Add node: Attempting to broadcast ... 3 by 5"."""
    text = " ".join(_CONTROL.sub(" ", str(exc)[:_READ_AT_MOST]).split())
    text = _PREFIX.sub("", text)
    text = _NODE.sub(lambda m: f"{m[1]} node {m[2]!r}: " if m[2] else f"{m[1]} node: ", text)
    return bounded(_SOURCE.sub("", text)) or type(exc).__name__


def shape_failure(message: str) -> bool:
    """Whether ORT's ``message`` says a shape did not fit (not that memory ran out)."""
    return bool(_SHAPE.search(message)) and not _RESOURCE.search(message)


def _fitting(
    declared: Mapping[str, Dims], got: Mapping[str, tuple[int, ...]]
) -> list[tuple[str, Dims, tuple[int, ...]]]:
    return [
        (name, dims, got[name])
        for name, dims in declared.items()
        if name in got and len(got[name]) == len(dims)
    ]


def named_disagreement(
    declared: Mapping[str, Dims], got: Mapping[str, tuple[int, ...]]
) -> str | None:
    """Two inputs whose sizes differ on a dimension the model names alike, in words."""
    seen: dict[str, tuple[str, int]] = {}  # dimension name -> (first input, its size)
    for name, dims, shape in _fitting(declared, got):
        for dim, size in zip(dims, shape, strict=True):
            if not isinstance(dim, str) or not dim:
                continue
            first, first_size = seen.setdefault(dim, (name, size))
            if first_size != size:
                return (
                    f"inputs {first!r} and {name!r} disagree on dimension {dim!r}: "
                    f"{first_size} vs {size}"
                )
    return None


def axis_disagreement(
    declared: Mapping[str, Dims], got: Mapping[str, tuple[int, ...]]
) -> str | None:
    """Two inputs whose sizes differ on a dynamic dimension at the same axis, in words."""
    seen: dict[int, tuple[str, int]] = {}  # axis -> (first input dynamic there, its size)
    for name, dims, shape in _fitting(declared, got):
        for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if isinstance(dim, int) and dim >= 0:
                continue  # fixed: ORT checked it
            first, first_size = seen.setdefault(axis, (name, size))
            if first_size != size:
                return (
                    f"inputs {first!r} and {name!r} differ in dynamic axis {axis}: "
                    f"{first_size} vs {size}"
                )
    return None


def blame(
    exc: BaseException, *, declared: Mapping[str, Dims], got: Mapping[str, tuple[int, ...]]
) -> str | None:
    """Why the caller's inputs caused ``exc`` ("" when ORT's message says it all), or None when
    the release is to blame. ``declared``: the model's inputs; ``got``: the request's shapes."""
    if type(exc).__name__ in _INPUT_STATUSES or isinstance(exc, ValueError):
        return named_disagreement(declared, got) or ""
    named = named_disagreement(declared, got)
    if named is not None:
        return named
    if shape_failure(str(exc)[:_READ_AT_MOST]):
        return axis_disagreement(declared, got)
    return None
