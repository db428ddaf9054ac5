"""Weight formats: quantizing one weight tensor, dequantizing it, and what it costs to store.

Every format maps to standard ONNX (opset 21) so any runtime can load the result:
- fp32: the tensor as it is; fp16: stored half, `Cast` back to float.
- int8 (symmetric): one fp32 scale per output channel (`DequantizeLinear` with `axis`),
  or one scale per block of inputs (`block_size`).
- int4: one scale per block of 32/64/128 inputs (`DequantizeLinear` with `block_size`),
  or per output channel; three schemes:
  `sym` INT4 codes -8..7, no zero point; `asym` UINT4 codes with a UINT4 zero point;
  `min` UINT4 codes plus a float block minimum, w = q * scale + min (GGUF's Q4_1), which
  `DequantizeLinear` cannot express alone: a Reshape/Add/Reshape applies the minimum.
- fp8: FLOAT8E4M3FN codes, one fp32 scale per output channel (amax maps to 448).
Block scales (and minimums) are stored as fp16 when every one fits, a `Cast` turns them
into fp32 before dequantizing, so the arithmetic is fp32 and matches `dequantize` here.
4-bit codes are packed two a byte (first element in the low nibble, as ONNX stores them).

A weight is described by its layout: `out_axis` indexes output channels, `in_axis`
the inputs a block runs along (MatMul W[in, out]: in 0, out 1; Conv: out 0, in 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from edgefold.errors import EdgefoldError

KIND_BITS = {"fp32": 32, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
SCHEMES = ("sym", "asym", "min")
FP8_MAX = 448.0  # largest finite float8 e4m3fn
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class Format:
    """One weight format. `block` 0 means one scale per output channel."""

    kind: str
    block: int = 0
    scheme: str = "sym"
    scale_bits: int = 16  # block scales (and minimums): fp16, or 8-bit codes (-s8) decoded by fp32 steps
    step: str = "channel"  # -s8: one step per output channel, or one per tensor (-s8t, no per-channel cost)

    def __post_init__(self):
        if self.kind not in KIND_BITS:
            raise EdgefoldError(f"unknown weight format {self.kind!r} (known: {', '.join(KIND_BITS)})")
        if self.scheme not in SCHEMES:
            raise EdgefoldError(f"unknown int4 scheme {self.scheme!r} (known: {', '.join(SCHEMES)})")
        if self.kind in ("fp32", "fp16", "fp8") and (self.block or self.scheme != "sym"):
            raise EdgefoldError(f"{self.kind} takes no block size or scheme")
        if self.kind == "int8" and self.scheme != "sym":
            raise EdgefoldError("int8 is symmetric only (use int4 for asym/min)")
        if self.block < 0 or self.block == 1:
            raise EdgefoldError(f"block size must be >= 2 (got {self.block})")
        if self.scale_bits not in (8, 16) or (self.scale_bits == 8 and (self.kind != "int4" or not self.block)):
            raise EdgefoldError("8-bit scales (-s8) are for blocked int4 only")
        if self.step not in ("channel", "tensor") or (self.step == "tensor" and self.scale_bits != 8):
            raise EdgefoldError("per-tensor steps (-s8t) go with 8-bit scales only")

    @property
    def bits(self) -> int:
        """Bits per code of this kind (scales and zero points not counted)."""
        return KIND_BITS[self.kind]

    @property
    def name(self) -> str:
        """The format's canonical spelling, as `parse_format` reads it (e.g. `int4-g32-asym`)."""
        if self.kind in ("fp32", "fp16", "fp8"):
            return self.kind
        if self.kind == "int8":
            return f"int8-g{self.block}" if self.block else "int8"
        text = (f"int4-g{self.block}" if self.block else "int4-ch") + f"-{self.scheme}"
        if self.scale_bits == 16:
            return text
        return f"{text}-s8" if self.step == "channel" else f"{text}-s8t"

    def __str__(self) -> str:
        return self.name


_NAME = re.compile(r"^(fp32|fp16|fp8|int8|int4)(?:-(g\d+|ch))?(?:-(sym|asym|min))?(-s8t?)?$")


def parse_format(text: str, *, block: int | None = None, scheme: str | None = None) -> Format:
    """`int4-g32-asym`, `int8`, `fp8`, `int4-ch-sym`, `int4-g32-min-s8`; `block`/`scheme` fill
    what the name leaves out. int4 defaults to blocks of 32 with a zero point (asym): on
    SmolLM2 at block 128 that is 35.1 perplexity (1,024 tokens) where sym is 39.0.
    """
    match = _NAME.match(str(text).strip().lower())
    if not match:
        raise EdgefoldError(f"unknown weight format {text!r} (e.g. fp32, fp16, fp8, int8, int4-g128, int4-g32-asym)")
    kind, grouping, named_scheme, scales8 = match.groups()
    if grouping is not None and block is not None:
        raise EdgefoldError(f"format {text!r} already names its block size; drop block={block}")
    if grouping == "ch":
        size = 0
    elif grouping:
        size = int(grouping[1:])
    elif block is not None:
        size = block
    else:
        size = 32 if kind == "int4" else 0
    default_scheme = "asym" if kind == "int4" else "sym"
    return Format(kind, size, named_scheme or scheme or default_scheme, 8 if scales8 else 16,
                  "tensor" if scales8 == "-s8t" else "channel")


@dataclass(frozen=True)
class Layout:
    """Which weight axis holds the output channels, and which the inputs that blocks run along."""

    out_axis: int
    in_axis: int


def grouping(shape: tuple[int, ...], fmt: Format, layout: Layout) -> tuple[int, int]:
    """(axis, block) of the scales for this weight: block 0 = one scale per index of axis.

    Blocks run along the input axis. A block wider than the input becomes the whole input.
    Convolutions whose per-group input is narrower than a block (depthwise) fall back to
    one scale per output channel: per-element scales would cost more than the weights.
    """
    if fmt.kind in ("fp32", "fp16") or fmt.block == 0:
        return layout.out_axis, 0
    width = shape[layout.in_axis]
    if len(shape) > 2 and width < fmt.block:
        return layout.out_axis, 0
    return layout.in_axis, min(fmt.block, width)


def supports(shape: tuple[int, ...], fmt: Format, layout: Layout) -> bool:
    """Whether the format can be expressed for this weight (the `min` scheme needs whole blocks)."""
    if fmt.scheme != "min":
        return True
    axis, block = grouping(shape, fmt, layout)
    return block > 0 and shape[axis] % block == 0


@dataclass
class QuantizedWeight:
    """Codes plus scales of one weight, exactly as they go into the ONNX file."""

    format: Format
    shape: tuple[int, ...]
    axis: int  # DequantizeLinear axis
    block: int  # DequantizeLinear block_size (0: per-axis)
    codes: np.ndarray  # fp32/fp16 values, int8, int8 in -8..7 (int4 sym), uint8 in 0..15, or fp8
    scale: np.ndarray | None = None  # per-axis [C] or blocked (shape with axis -> ceil(n/block))
    zero_point: np.ndarray | None = None  # uint8 in 0..15, shape of scale (asym)
    minimum: np.ndarray | None = None  # shape of scale (min scheme), dtype of scale
    # -s8 formats: `scale`/`minimum` above are the fp32 values these codes decode to.
    scale_codes: np.ndarray | None = None  # uint8, shape of scale
    scale_step: np.ndarray | None = None  # fp32 [channels]: scale = code * step
    min_codes: np.ndarray | None = None  # uint8, shape of scale
    min_step: np.ndarray | None = None  # fp32 [channels]
    min_zero: np.ndarray | None = None  # uint8 [channels]: minimum = (code - zero) * step
    channel_axis: int | None = 0  # axis of the scale tensor the steps run along (None: one step per tensor)

    def dequantize(self) -> np.ndarray:
        """The fp32 weight a runtime computes from the stored tensors."""
        if self.format.kind in ("fp32", "fp16"):
            return self.codes.astype(np.float32)
        values = self.codes.astype(np.float32)
        if self.zero_point is not None:
            values = values - self.per_element(self.zero_point.astype(np.float32))
        values = values * self.per_element(self.scale.astype(np.float32))
        if self.minimum is not None:
            values = values + self.per_element(self.minimum.astype(np.float32))
        return values

    def per_element(self, per_group: np.ndarray) -> np.ndarray:
        """A per-scale tensor (scale, zero point, minimum) repeated to the weight's shape."""
        if self.block == 0:
            view = [1] * len(self.shape)
            view[self.axis] = self.shape[self.axis]
            return per_group.reshape(view)
        return np.repeat(per_group, self.block, axis=self.axis)[_take(self.axis, self.shape[self.axis], len(self.shape))]

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes (4-bit packed two a byte) plus scales, zero points, minimums."""
        total = _packed_bytes(self.codes.size) if self.format.kind == "int4" else self.codes.nbytes
        if self.scale_codes is not None:
            total += self.scale_codes.nbytes + self.scale_step.nbytes
        elif self.scale is not None:
            total += self.scale.nbytes
        if self.zero_point is not None:
            total += _packed_bytes(self.zero_point.size)
        if self.min_codes is not None:
            total += self.min_codes.nbytes + self.min_step.nbytes + self.min_zero.nbytes
        elif self.minimum is not None:
            total += self.minimum.nbytes
        return total

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight element, scales, zero points and minimums included."""
        return 8.0 * self.nbytes / self.codes.size


def _take(axis: int, length: int, ndim: int) -> tuple:
    index = [slice(None)] * ndim
    index[axis] = slice(0, length)
    return tuple(index)


def _packed_bytes(count: int) -> int:
    return (count + 1) // 2


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """4-bit values (int4 -8..7 or uint4 0..15), flattened C-order, two a byte, low nibble first."""
    flat = (np.asarray(values).reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int, signed: bool) -> np.ndarray:
    """Undo `pack_nibbles`: the first `count` values, as int8 -8..7 if `signed`, else uint8 0..15."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    flat = np.empty(packed.size * 2, np.uint8)
    flat[0::2], flat[1::2] = packed & 0xF, packed >> 4
    flat = flat[:count]
    if signed:
        return np.where(flat >= 8, flat.astype(np.int16) - 16, flat).astype(np.int8)
    return flat


# ---------------------------------------------------------------- group statistics


def _grouped(weight: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, int]:
    """A view with one reduction axis per scale: returns (array, reduction axis).

    Per-axis: the scale axis first, everything else flattened behind it. Blocked: the
    block axis split in (blocks, block), padded with edge values (which change neither
    min nor max) when the last block is short.
    """
    if block == 0:
        moved = np.moveaxis(weight, axis, 0)
        return moved.reshape(moved.shape[0], -1), 1
    length = weight.shape[axis]
    blocks = math.ceil(length / block)
    if blocks * block != length:
        pad = [(0, 0)] * weight.ndim
        pad[axis] = (0, blocks * block - length)
        weight = np.pad(weight, pad, mode="edge")
    shape = weight.shape[:axis] + (blocks, block) + weight.shape[axis + 1:]
    return weight.reshape(shape), axis + 1


def block_scale_bytes(weight_amax: float) -> int:
    """Bytes per block scale: fp16 unless the weight is too large for fp16 (then fp32).

    Decided by the tensor's largest magnitude alone (every block scale and minimum is at
    most that), so the size of a format is known before quantizing. Tiny scales become
    fp16 subnormals, rounded up, so they lose precision but never clip a code.
    """
    return 2 if weight_amax <= _FP16_MAX else 4


def _scale_dtype(block: int, weight: np.ndarray):
    if block == 0:
        return np.float32
    return np.float16 if block_scale_bytes(float(np.abs(weight).max(initial=0.0))) == 2 else np.float32


def _round_scale_up(scale: np.ndarray, dtype) -> np.ndarray:
    """Cast scales to `dtype`, never below the exact value (so no code needs clipping)."""
    cast = scale.astype(dtype)
    low = cast.astype(np.float32) < scale
    if low.any():
        cast[low] = np.nextafter(cast[low], np.array(np.inf, dtype))
    return cast


# ---------------------------------------------------------------- quantizers


def quantize(weight: np.ndarray, fmt: Format, layout: Layout, *, search: bool = False,
             importance: np.ndarray | None = None) -> QuantizedWeight:
    """Quantize one fp32 weight. `search` tries narrower int4 ranges and keeps the lowest error.

    `importance` (one value per index of the input axis, e.g. the mean square of the input
    that multiplies it) weighs the squared error that `search` and the -s8 refit minimise,
    so errors land on inputs that carry little signal.
    """
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    shape = tuple(weight.shape)
    if fmt.kind == "fp32":
        return QuantizedWeight(fmt, shape, layout.out_axis, 0, weight)
    if fmt.kind == "fp16":
        return QuantizedWeight(fmt, shape, layout.out_axis, 0, weight.astype(np.float16))
    if not supports(shape, fmt, layout):
        raise ValueError(f"{fmt} needs the input axis to be a multiple of the block size (shape {shape})")
    axis, block = grouping(shape, fmt, layout)
    if fmt.kind == "fp8":
        return _quantize_fp8(weight, fmt, axis)
    if fmt.kind == "int8":
        return _quantize_symmetric(weight, fmt, axis, block, bits=8, ratios=(1.0,))
    ratios = SEARCH_RATIOS if search else (1.0,)
    weights = _importance(importance, weight.shape, layout.in_axis, axis, block)
    if fmt.scheme == "sym":
        q = _quantize_symmetric(weight, fmt, axis, block, bits=4, ratios=ratios, weights=weights)
    else:
        q = _quantize_affine(weight, fmt, axis, block, ratios=ratios, weights=weights)
    if fmt.scale_bits == 8 and block:
        _eight_bit_scales(weight, q, layout.out_axis, weights)
    return q


def _importance(importance, shape, in_axis: int, axis: int, block: int):
    """Per-element error weights grouped like the weight (None: all equal)."""
    if importance is None:
        return None
    importance = np.asarray(importance, np.float32)
    if importance.shape != (shape[in_axis],) or not np.all(np.isfinite(importance)):
        return None
    view = [1] * len(shape)
    view[in_axis] = -1
    full = np.broadcast_to(importance.reshape(view) / max(float(importance.mean()), 1e-30), shape)
    return _grouped(np.ascontiguousarray(full), axis, block)[0]


# Fractions of the full range tried by `search` (1.0 first: ties keep plain min/max).
SEARCH_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _weighted(squares: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return squares if weights is None else squares * weights


def _quantize_fp8(weight: np.ndarray, fmt: Format, axis: int) -> QuantizedWeight:
    grouped, red = _grouped(weight, axis, 0)
    amax = np.abs(grouped).max(axis=red)
    scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
    view = [1] * weight.ndim
    view[axis] = -1
    codes = (weight / scale.reshape(view)).astype(ml_dtypes.float8_e4m3fn)
    return QuantizedWeight(fmt, weight.shape, axis, 0, codes, scale)


def _quantize_symmetric(weight, fmt, axis, block, *, bits, ratios, weights=None) -> QuantizedWeight:
    # int8 keeps the symmetric -127..127 (so it reproduces GGUF Q8_0 and matches common int8
    # kernels); int4 uses the whole lopsided -8..7, since one more level matters at 4 bits.
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax if bits == 8 else -(2 ** (bits - 1))
    grouped, red = _grouped(weight, axis, block)
    hi = np.maximum(grouped.max(axis=red, keepdims=True), 0)
    lo = np.minimum(grouped.min(axis=red, keepdims=True), 0)
    # The code range is lopsided (-8..7): the side with the larger magnitude decides the step.
    full = np.maximum(hi / qmax, lo / qmin)
    full = np.where(full > 0, full, 1.0).astype(np.float32)
    dtype = _scale_dtype(block, grouped)
    best_scale, best_codes, best_err = None, None, None
    for ratio in ratios:
        scale = _round_scale_up(full * np.float32(ratio), dtype)
        s32 = scale.astype(np.float32)
        codes = np.clip(np.rint(grouped / s32), qmin, qmax)
        err = _weighted((codes * s32 - grouped) ** 2, weights).sum(axis=red, keepdims=True)
        if best_err is None:
            best_scale, best_codes, best_err = scale, codes, err
        else:
            better = err < best_err
            best_scale = np.where(better, scale, best_scale)
            best_codes = np.where(better, codes, best_codes)
            best_err = np.where(better, err, best_err)
    return QuantizedWeight(fmt, weight.shape, axis, block, _ungroup(best_codes.astype(np.int8), weight.shape, axis, block),
                           np.squeeze(best_scale, axis=red).astype(dtype))


def _quantize_affine(weight, fmt, axis, block, *, ratios, weights=None) -> QuantizedWeight:
    """UINT4 codes 0..15 with an integer zero point (asym) or a float minimum (min)."""
    levels = 15
    grouped, red = _grouped(weight, axis, block)
    hi = grouped.max(axis=red, keepdims=True)
    lo = grouped.min(axis=red, keepdims=True)
    if fmt.scheme == "asym":  # the range must hold 0 so the zero point is a code
        hi, lo = np.maximum(hi, 0), np.minimum(lo, 0)
    best = None
    for ratio in ratios:
        width = (hi - lo) * np.float32(ratio)
        centre_lo = lo + (hi - lo - width) / 2  # shrink symmetrically about the range's middle
        full = np.where(width > 0, width / levels, 1.0).astype(np.float32)
        dtype = _scale_dtype(block, grouped)
        scale = _round_scale_up(full, dtype)
        s32 = scale.astype(np.float32)
        if fmt.scheme == "asym":
            zero = np.clip(np.rint(-centre_lo / s32), 0, levels)
            codes = np.clip(np.rint(grouped / s32) + zero, 0, levels)
            approx = (codes - zero) * s32
            extra = zero
        else:
            minimum = centre_lo.astype(dtype)
            m32 = minimum.astype(np.float32)
            codes = np.clip(np.rint((grouped - m32) / s32), 0, levels)
            approx = codes * s32 + m32
            extra = minimum
        err = _weighted((approx - grouped) ** 2, weights).sum(axis=red, keepdims=True)
        if best is None:
            best = [scale, codes, extra, err]
        else:
            better = err < best[3]
            best = [np.where(better, new, old) for new, old in zip((scale, codes, extra, err), best)]
    scale, codes, extra, _ = best
    out = QuantizedWeight(fmt, weight.shape, axis, block, _ungroup(codes.astype(np.uint8), weight.shape, axis, block),
                          np.squeeze(scale, axis=red).astype(scale.dtype))
    if fmt.scheme == "asym":
        out.zero_point = np.squeeze(extra, axis=red).astype(np.uint8)
    else:
        out.minimum = np.squeeze(extra, axis=red).astype(scale.dtype)
    return out


def _eight_bit_scales(weight: np.ndarray, q: QuantizedWeight, out_axis: int, weights=None) -> None:
    """Store block scales (and minimums) as uint8 codes with fp32 steps (per output channel or tensor).

    Like GGUF's K-quants: first refit each block's scale (and minimum) to its codes by
    least squares, then quantize them, then recode the weights with the decoded values.
    On weights that already sit on a 4-bit grid (GGUF Q4_1) the refit recovers the grid
    exactly, so only the 8-bit rounding of scale and minimum remains.
    """
    grouped, red = _grouped(weight, q.axis, q.block)
    codes, _ = _grouped(q.codes.astype(np.float32), q.axis, q.block)
    zero = np.expand_dims(q.zero_point.astype(np.float32), red) if q.zero_point is not None else 0.0
    values = codes - zero
    k = np.ones_like(grouped) if weights is None else weights  # least squares weighted by importance
    total = k.sum(axis=red, keepdims=True)
    mean_v, mean_w = (k * values).sum(axis=red, keepdims=True) / total, (k * grouped).sum(axis=red, keepdims=True) / total
    if q.format.scheme == "min":  # fit w ~ m + s v
        var = (k * np.square(values - mean_v)).sum(axis=red, keepdims=True) / total
        cov = (k * (values - mean_v) * (grouped - mean_w)).sum(axis=red, keepdims=True) / total
        old = np.expand_dims(q.scale.astype(np.float32), red)
        scale = np.where(var > 0, cov / np.where(var > 0, var, 1), old)
        scale = np.where(scale > 0, scale, old)
        minimum = mean_w - scale * mean_v
    else:  # fit w ~ s v
        norm = (k * np.square(values)).sum(axis=red, keepdims=True)
        scale = np.where(norm > 0, (k * values * grouped).sum(axis=red, keepdims=True) / np.where(norm > 0, norm, 1),
                         np.expand_dims(q.scale.astype(np.float32), red))
        scale = np.abs(scale)
        minimum = None
    scale = np.squeeze(scale, axis=red)
    # The scale tensor keeps the weight's axes, so the output channel axis is unchanged.
    channel = out_axis if q.format.step == "channel" else None
    others = tuple(i for i in range(scale.ndim) if i != channel)
    view = [1] * scale.ndim
    if channel is not None:
        view[channel] = -1
    top = scale.max(axis=others)
    step = np.where(top > 0, top / 255, 1.0).astype(np.float32)
    q.scale_codes = np.clip(np.rint(scale / step.reshape(view)), 0, 255).astype(np.uint8)
    q.scale_step, q.channel_axis = step, channel
    s32 = q.scale_codes.astype(np.float32) * step.reshape(view)
    q.scale = s32
    if minimum is not None:
        # Stored as a block centre c with signed codes, w = c + s (q - 8): c sits near 0 (block
        # ranges are roughly symmetric) where a minimum sits near -8 s, so its 8-bit step is finer.
        # c is the least-squares offset for the decoded scale and the current codes.
        minimum = np.squeeze(mean_w - np.expand_dims(s32, red) * (mean_v - 8), axis=red)
        lo = np.minimum(minimum.min(axis=others), 0)
        hi = np.maximum(minimum.max(axis=others), 0)
        mstep = np.where(hi > lo, (hi - lo) / 255, 1.0).astype(np.float32)
        mzero = np.clip(np.rint(-lo / mstep), 0, 255).astype(np.uint8)
        q.min_codes = np.clip(np.rint(minimum / mstep.reshape(view)) + mzero.reshape(view), 0, 255).astype(np.uint8)
        q.min_step, q.min_zero = mstep, mzero
        q.minimum = (q.min_codes.astype(np.float32) - mzero.reshape(view).astype(np.float32)) * mstep.reshape(view)
    # Recode the weights against the decoded scales (a zero scale codes everything as 0).
    s_b = np.expand_dims(s32, red)
    safe = np.where(s_b > 0, s_b, 1.0)
    if q.format.scheme == "min":
        m_b = np.expand_dims(q.minimum, red)
        new = np.where(s_b > 0, np.clip(np.rint((grouped - m_b) / safe), -8, 7), 0)
        q.codes = _ungroup(new.astype(np.int8), q.shape, q.axis, q.block)
    elif q.format.scheme == "asym":
        new = np.where(s_b > 0, np.clip(np.rint(grouped / safe) + zero, 0, 15), zero)
        q.codes = _ungroup(new.astype(np.uint8), q.shape, q.axis, q.block)
    else:
        new = np.where(s_b > 0, np.clip(np.rint(grouped / safe), -8, 7), 0)
        q.codes = _ungroup(new.astype(np.int8), q.shape, q.axis, q.block)


def _ungroup(grouped: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    if block == 0:
        moved_shape = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        return np.ascontiguousarray(np.moveaxis(grouped.reshape(moved_shape), 0, axis))
    padded = shape[:axis] + (grouped.shape[axis] * block,) + shape[axis + 1:]
    return np.ascontiguousarray(grouped.reshape(padded)[_take(axis, shape[axis], len(shape))])


def storage_bytes(shape: tuple[int, ...], fmt: Format, layout: Layout, scale_bytes: int = 2) -> int:
    """Bytes a format needs for a weight of this shape (`scale_bytes` from `block_scale_bytes`)."""
    count = math.prod(shape)
    if fmt.kind in ("fp32", "fp16"):
        return count * fmt.bits // 8
    axis, block = grouping(shape, fmt, layout)
    if block == 0:
        groups, per_scale = shape[axis], 4
    else:
        groups, per_scale = count // shape[axis] * math.ceil(shape[axis] / block), scale_bytes
    codes = _packed_bytes(count) if fmt.kind == "int4" else count
    if fmt.scale_bits == 8 and block:
        channels = shape[layout.out_axis] if fmt.step == "channel" else 1
        scales = groups + 4 * channels
        minimum = groups + 5 * channels
    else:
        scales = minimum = groups * per_scale
    extra = {"sym": 0, "asym": _packed_bytes(groups), "min": minimum}[fmt.scheme]
    return codes + scales + extra


def error_bound(q: QuantizedWeight, weight: np.ndarray) -> np.ndarray:
    """Largest |w - dequantized| each element may have without range search (for tests and checks).

    Integer formats: half a step (plus the fp16 rounding of a stored minimum). fp8 and
    fp16: half a unit in the last place relative to the value, or of the smallest
    subnormal, times the scale.
    """
    kind = q.format.kind
    if kind == "fp32":
        return np.zeros_like(weight)
    if kind == "fp16":
        return np.maximum(np.abs(weight) * 2.0**-11, 2.0**-25)
    scale = q.per_element(q.scale.astype(np.float32))
    if kind == "fp8":
        return np.maximum(np.abs(weight) * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6)
    bound = scale / 2
    if q.minimum is not None and q.min_codes is None:
        bound = bound + np.abs(q.per_element(q.minimum.astype(np.float32))) * 2.0**-11 + 2.0**-25
    if q.scale_codes is not None:  # decoded scales may not span the block: add how far w lies outside
        bound = bound + _outside(q, weight)
    return bound * (1 + 1e-5) + 1e-12


def _outside(q: QuantizedWeight, weight: np.ndarray) -> np.ndarray:
    """Distance of each weight outside the range its block's codes can reach."""
    scale = q.per_element(q.scale.astype(np.float32))
    if q.format.scheme == "min":
        offset = q.per_element(q.minimum.astype(np.float32))
        low_code, high_code = (-8, 7) if q.codes.dtype == np.int8 else (0, 15)  # -s8 stores centred codes
        lo, hi = offset + low_code * scale, offset + high_code * scale
    elif q.format.scheme == "asym":
        zero = q.per_element(q.zero_point.astype(np.float32))
        lo, hi = -zero * scale, (15 - zero) * scale
    else:
        lo, hi = -8 * scale, 7 * scale
    return np.maximum(np.maximum(lo - weight, weight - hi), 0)
