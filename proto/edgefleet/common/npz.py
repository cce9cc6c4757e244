"""Reading ``.npz`` archives without trusting what they declare (golden data, tensor files).

``np.load`` allocates what each member's header says before it reads a byte of data, and a
zip member may claim any size. ``read`` checks first: at most ``max_arrays`` members, their
uncompressed sizes together at most ``max_bytes``, each member a version 1 or 2 ``.npy``
whose header's shape x itemsize is exactly the bytes that follow it, no object arrays (no
pickles). Only then is each array read, so the memory used is bounded by ``max_bytes``.
Shared contract code: the agent reads golden data with it, and the controller may too.
"""

from __future__ import annotations

import io
import math
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.lib.format as npy
import numpy.typing as npt

if TYPE_CHECKING:
    import zipfile

MAX_BYTES = 1 << 30
"""Default bound on the arrays' bytes together."""
MAX_ARRAYS = 1024
"""Default bound on the number of arrays."""


class NpzError(ValueError):
    """Not an ``.npz`` archive, or one that declares more or other than it holds."""


def read(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_arrays: int = MAX_ARRAYS
) -> dict[str, npt.NDArray[Any]]:
    """Every array in the archive ``data``, by name (without ``.npy``)."""
    import zipfile  # here: an idle agent reads no archive (zipfile is ~0.5 MB of its RSS)

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise NpzError(f"not a readable .npz archive: {exc}") from exc
    with archive:
        members = archive.infolist()
        if len(members) > max_arrays:
            raise NpzError(f".npz archive of {len(members)} arrays (at most {max_arrays})")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise NpzError(f".npz archive declaring {declared} bytes (at most {max_bytes})")
        arrays: dict[str, npt.NDArray[Any]] = {}
        for member in members:
            try:
                with archive.open(member) as f:
                    arrays[member.filename.removesuffix(".npy")] = _array(f, member)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise NpzError(f"{member.filename}: unreadable ({exc})") from exc
    return arrays


def _array(f: IO[bytes], member: zipfile.ZipInfo) -> npt.NDArray[Any]:
    name = member.filename
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise NpzError(f"{name}: unsupported .npy version {version}")
    except ValueError as exc:  # NpzError included
        raise NpzError(f"{name}: not a .npy array ({exc})") from exc
    if dtype.hasobject:
        raise NpzError(f"{name}: object arrays are refused (they would need a pickle)")
    needed = math.prod(int(d) for d in shape) * dtype.itemsize
    header = f.tell()
    if needed != member.file_size - header:
        raise NpzError(
            f"{name}: its header declares {list(shape)} of {dtype} ({needed} bytes) but "
            f"{member.file_size - header} bytes follow it"
        )
    raw = bytearray(needed)  # writable, like np.load's arrays
    got = f.readinto(raw)  # type: ignore[attr-defined]
    if got != needed:
        raise NpzError(f"{name}: {got} of {needed} bytes")
    array = np.frombuffer(raw, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C")
