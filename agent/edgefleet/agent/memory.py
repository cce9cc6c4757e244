"""Handing the C heap's free pages back to the kernel, so an idle agent's resident set is what
it holds, not what a model load once needed.

Loading a model in ONNX Runtime parses the file, optimises the graph and pre-packs weights:
it frees more than it keeps (about half the model's size again for an 8 MB MatMul model), but
glibc's malloc keeps freed memory in its arenas. ``release_free_heap`` (glibc's
``malloc_trim(0)``, which also releases free pages in the middle of the heap) returns it;
``ModelRuntime.load`` calls it after each load. Where the C library has no ``malloc_trim``
(musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` in this process, or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel; False where this C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
