"""Weight layouts the kernels read, made once at compile time, and the blob that holds them.

A weight [N out, K in] is cut into groups of ROWS (16) output rows. Within a group the
rows are interleaved so that one vector load returns the same inputs of every row
(the vectorized axis is the rows, so no horizontal sums are needed):

    int, 4-bit   W [G, Kp/8, 16] int32: word = 4 bytes of one row, byte t = q[k+t] | q[k+4+t] << 4
    int, 8-bit   W [G, Kp/4, 16] int32: word = 4 bytes of one row, byte t = q[k+t]
    float        W [G, K, 16] of fp32 / fp16 / fp8 bits

Block scales, zero points and minimums follow as [G, KB, 16] in the form they were stored
(fp32, fp16, or uint8 codes with a [G, 16] fp32 step and zero). Kp pads K to the
activation block (32) with zero codes; padded rows have zero scales. All tensors of a
model live in one `Blob`, each at a 64-byte boundary: `weights.bin` of the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgefold.targets.tvm.kernels.isa import ACT_BLOCK, ROWS
from edgefold.targets.tvm.llm.stored_weight import SideTensor, StoredWeight, Unsupported

ALIGN = 64


@dataclass(frozen=True)
class IntFormat:
    """w = S * q + O per block; q unsigned `bits`-bit codes."""

    bits: int
    block: int  # weight block along K, a multiple of ACT_BLOCK; 0 = one block for the whole row
    scale: str  # "f32", "f16", "u8"
    offset: str  # "bias" (O = -bias*S), "zero" (O = -z*S), "min" (O = M - bias*S)
    bias: int  # code bias for "bias" and "min"
    minimum: str = ""  # "f32", "f16", "u8" for offset "min"

    @property
    def key(self) -> str:
        """Short name of the format, e.g. `int4-b32-sf16-bias8`, used in kernel names."""
        block = f"b{self.block}" if self.block else "row"
        extra = f"-m{self.minimum}" if self.offset == "min" else ""
        return f"int{self.bits}-{block}-s{self.scale}-{self.offset}{self.bias}{extra}"


@dataclass(frozen=True)
class FloatFormat:
    """Float weights stored as fp32, fp16 or fp8 (e4m3) bits."""

    dtype: str  # "f32", "f16", "fp8"

    @property
    def key(self) -> str:
        """Short name of the format (its dtype), used in kernel names."""
        return self.dtype


@dataclass
class PackedWeight:
    """A weight in kernel layout: its format, sizes and named streams."""

    fmt: IntFormat | FloatFormat
    n: int
    k: int
    streams: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def groups(self) -> int:
        """Number of 16-row groups (G) the N output rows take."""
        return -(-self.n // ROWS)

    @property
    def kp(self) -> int:
        """K as the kernel iterates it (padded to the activation block for int formats)."""
        return padded_k(self.k) if isinstance(self.fmt, IntFormat) else self.k

    @property
    def weight_blocks(self) -> int:
        """Weight blocks per row along K (KB) for int formats; 0 for float formats."""
        if not isinstance(self.fmt, IntFormat):
            return 0
        return 1 if not self.fmt.block else -(-self.kp // self.fmt.block)

    def nbytes(self) -> int:
        """Total bytes of the packed streams."""
        return sum(a.nbytes for a in self.streams.values())


def padded_k(k: int) -> int:
    """K rounded up to a whole number of activation blocks (32)."""
    return -(-k // ACT_BLOCK) * ACT_BLOCK


def kernel_format(w: StoredWeight) -> IntFormat | FloatFormat:
    """The kernel format that reads a stored weight's bytes as they are; Unsupported if none can."""
    if w.kind in ("fp32", "fp16", "fp8"):
        return FloatFormat({"fp32": "f32", "fp16": "f16", "fp8": "fp8"}[w.kind])
    block = 0 if w.block >= w.k else w.block
    if block and block % ACT_BLOCK:
        raise Unsupported(f"{w.name}: blocks of {block} (the kernels take multiples of {ACT_BLOCK})")
    if w.zero is not None:
        offset, bias = "zero", 0
    elif w.minimum is not None:
        offset, bias = "min", w.bias
    else:
        offset, bias = "bias", w.bias
    return IntFormat(w.bits, block, w.scale.storage, offset, bias, w.minimum.storage if w.minimum is not None else "")


def _group_rows(array: np.ndarray, n: int) -> np.ndarray:
    """[N, ...] -> [G, 16, ...] with zero rows appended."""
    groups = -(-n // ROWS)
    padded = np.zeros((groups * ROWS,) + array.shape[1:], array.dtype)
    padded[:n] = array
    return padded.reshape((groups, ROWS) + array.shape[1:])


def _side_streams(side: SideTensor, n: int, name: str) -> dict[str, np.ndarray]:
    """[N, KB] scale/minimum -> [G, KB, 16] in its storage (+ step/zero per row for uint8)."""
    if side.storage == "u8":
        out = {name: np.ascontiguousarray(_group_rows(side.codes, n).transpose(0, 2, 1))}
        out[f"{name}_step"] = np.ascontiguousarray(_group_rows(side.step.astype(np.float32), n))
        zero = side.zero if side.zero is not None else np.zeros(n, np.uint8)
        out[f"{name}_zero"] = np.ascontiguousarray(_group_rows(zero.astype(np.float32), n))
        return out
    dtype = np.float16 if side.storage == "f16" else np.float32
    return {name: np.ascontiguousarray(_group_rows(side.values.astype(dtype), n).transpose(0, 2, 1))}


def pack(w: StoredWeight, bias: np.ndarray | None = None) -> PackedWeight:
    """The kernel layout of one weight (and its optional per-row bias)."""
    fmt = kernel_format(w)
    packed = PackedWeight(fmt, w.n, w.k)
    if isinstance(fmt, FloatFormat):
        data = {"f32": w.data.astype(np.float32), "f16": w.data.astype(np.float16), "fp8": w.data.astype(np.uint8)}
        packed.streams["W"] = np.ascontiguousarray(_group_rows(data[fmt.dtype], w.n).transpose(0, 2, 1))
    else:
        kp = padded_k(w.k)
        codes = np.zeros((w.n, kp), np.uint8)
        codes[:, :w.k] = w.data
        grouped = _group_rows(codes, w.n)  # [G, 16, Kp]
        groups = grouped.shape[0]
        if w.bits == 4:
            nib = grouped.reshape(groups, ROWS, kp // 8, 2, 4)
            words = (nib[:, :, :, 0, :] | (nib[:, :, :, 1, :] << 4)).astype(np.uint8)  # [G, 16, Kp/8, 4]
        else:
            words = grouped.reshape(groups, ROWS, kp // 4, 4)
        packed.streams["W"] = np.ascontiguousarray(words.transpose(0, 2, 1, 3)).view(np.int32)[..., 0]
        blocks = packed.weight_blocks
        scale = _resize_blocks(w.scale, blocks)
        packed.streams.update(_side_streams(scale, w.n, "S"))
        if fmt.offset == "zero":
            zero = _resize_plain(w.zero, blocks)
            packed.streams["Z"] = np.ascontiguousarray(_group_rows(zero, w.n).transpose(0, 2, 1))
        elif fmt.offset == "min":
            packed.streams.update(_side_streams(_resize_blocks(w.minimum, blocks), w.n, "M"))
    if bias is not None:
        packed.streams["bias"] = _group_rows(bias.astype(np.float32), w.n).reshape(-1)
    return packed


def _resize_blocks(side: SideTensor, blocks: int) -> SideTensor:
    """Side tensors keep [N, KB] with KB = the weight's blocks (1 for a per-row scale)."""
    if side.values.shape[1] == blocks:
        return side
    if blocks == 1:  # one value per row repeated over the row's blocks: take the first
        return SideTensor(side.values[:, :1].copy(), side.storage,
                          None if side.codes is None else side.codes[:, :1].copy(), side.step, side.zero)
    raise Unsupported(f"side tensor with {side.values.shape[1]} blocks, expected {blocks}")


def _resize_plain(values: np.ndarray, blocks: int) -> np.ndarray:
    return values if values.shape[1] == blocks else values[:, :blocks].copy()


def concat_rows(weights: list[StoredWeight], name: str) -> StoredWeight:
    """One weight whose rows are those of `weights` in order (q|k|v, gate|up): they must share a
    kernel format; their inputs are the same."""
    first = weights[0]
    if len({kernel_format(w).key for w in weights}) != 1 or len({w.k for w in weights}) != 1:
        raise Unsupported("different formats")

    def cat(get):
        parts = [get(w) for w in weights]
        return None if parts[0] is None else np.concatenate(parts, axis=0)

    def cat_side(get):
        sides = [get(w) for w in weights]
        if sides[0] is None:
            return None
        return SideTensor(np.concatenate([s.values for s in sides]), sides[0].storage,
                          None if sides[0].codes is None else np.concatenate([s.codes for s in sides]),
                          None if sides[0].step is None else np.concatenate([s.step for s in sides]),
                          None if sides[0].zero is None else np.concatenate(
                              [s.zero if s.zero is not None else np.zeros(s.values.shape[0], np.uint8) for s in sides]))

    return StoredWeight(name, sum(w.n for w in weights), first.k, first.kind, cat(lambda w: w.data), first.bits,
                        first.block, first.bias, cat_side(lambda w: w.scale), cat(lambda w: w.zero),
                        cat_side(lambda w: w.minimum), source={"rows_of": [w.name for w in weights]})


class Blob:
    """All packed tensors of a model in one byte buffer, each at a 64-byte boundary."""

    def __init__(self):
        self._parts: list[np.ndarray] = []
        self.size = 0
        self._seen: dict[tuple, int] = {}
        self._arrays: dict[tuple, np.ndarray] = {}

    def add(self, array: np.ndarray) -> int:
        """Append (or find an identical earlier) array; returns its offset in elements."""
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, hash(array.tobytes()))
        if key in self._seen and np.array_equal(self._arrays[key], array):
            return self._seen[key] // array.dtype.itemsize
        start = -(-self.size // ALIGN) * ALIGN
        if start > self.size:
            self._parts.append(np.zeros(start - self.size, np.uint8))
        self._parts.append(array.reshape(-1).view(np.uint8))
        self.size = start + array.nbytes
        self._seen[key] = start
        self._arrays[key] = array
        return start // array.dtype.itemsize

    def bytes(self) -> np.ndarray:
        """The whole blob as one uint8 array, padded to a 64-byte multiple (the artifact's weights.bin)."""
        total = -(-self.size // ALIGN) * ALIGN
        out = np.zeros(total, np.uint8)
        cursor = 0
        for part in self._parts:
            out[cursor:cursor + part.size] = part
            cursor += part.size
        return out


def add_packed(blob: Blob, packed: PackedWeight) -> dict[str, int]:
    """Put every stream of a packed weight in the blob; returns element offsets by stream name."""
    return {name: blob.add(array) for name, array in packed.streams.items()}
