"""The artifact's weight file: every weight `main` takes, packed bytes as they are.

A small binary format both Python and the C++ runner read without TVM's serializer
(the wheel's runtime headers lack what `Tensor::Load` needs):

    "EFW1", u32 count, then per tensor:
        u8 type code (DLPack: 0 int, 1 uint, 2 float), u8 bits, u16 lanes,
        u32 ndim, i64 shape[ndim], u64 offset, u64 nbytes, u32 name length, name
    then the data, each tensor starting at a 64-byte boundary (offsets are absolute).

All numbers are little-endian. Same arrays in, same bytes out.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from edgefold.errors import EdgefoldError

MAGIC = b"EFW1"
ALIGN = 64
_CODES = {"i": 0, "u": 1, "f": 2, "b": 1}


def _dtype_fields(dtype: np.dtype) -> tuple[int, int]:
    dtype = np.dtype(dtype)
    if dtype.kind not in _CODES:
        raise EdgefoldError(f"weight dtype {dtype} cannot be stored")
    return _CODES[dtype.kind], dtype.itemsize * 8


def _numpy_dtype(code: int, bits: int) -> np.dtype:
    kind = {0: "i", 1: "u", 2: "f"}[code]
    return np.dtype(f"{kind}{bits // 8}")


def write_weights(path: Path, names: list[str], arrays: list[np.ndarray]) -> int:
    """Write the weight file; returns its size in bytes."""
    header = bytearray(MAGIC + struct.pack("<I", len(arrays)))
    entries = []
    for name, array in zip(names, arrays):
        array = np.require(array, requirements="C")
        entries.append((name.encode(), array))
    # Header size first (offsets depend on it), then the data layout.
    header_size = len(header) + sum(4 + 4 + 8 * a.ndim + 8 + 8 + 4 + len(n) for n, a in entries)
    offset = _aligned(header_size)
    layout = []
    for name, array in entries:
        layout.append(offset)
        offset = _aligned(offset + array.nbytes)
    for (name, array), start in zip(entries, layout):
        code, bits = _dtype_fields(array.dtype)
        header += struct.pack("<BBHI", code, bits, 1, array.ndim)
        header += struct.pack(f"<{array.ndim}q", *array.shape)
        header += struct.pack("<QQI", start, array.nbytes, len(name)) + name
    with open(path, "wb") as handle:
        handle.write(header)
        for (name, array), start in zip(entries, layout):
            handle.write(b"\0" * (start - handle.tell()))
            handle.write(array.tobytes())
        end = handle.tell()
    return end


def _aligned(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def read_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, array) pairs; arrays are read-only views of a memory map."""
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if data[:4] != MAGIC:
        raise EdgefoldError(f"{path} is not an edgefold weight file")
    (count,) = struct.unpack_from("<I", data, 4)
    cursor, found = 8, []
    for _ in range(count):
        code, bits, _lanes, ndim = struct.unpack_from("<BBHI", data, cursor)
        cursor += 8
        shape = struct.unpack_from(f"<{ndim}q", data, cursor)
        cursor += 8 * ndim
        offset, nbytes, name_length = struct.unpack_from("<QQI", data, cursor)
        cursor += 20
        name = bytes(data[cursor:cursor + name_length]).decode()
        cursor += name_length
        if offset + nbytes > len(data):
            raise EdgefoldError(f"{path} is truncated (tensor {name!r} runs past the end)")
        array = np.frombuffer(data, dtype=_numpy_dtype(code, bits), count=nbytes * 8 // bits, offset=offset)
        found.append((name, array.reshape(shape)))
    return found
