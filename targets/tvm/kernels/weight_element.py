"""One weight of a packed matrix as an fp32 scalar expression: w[n, k] from its group's streams.

`weight_element` is used where weights are read one at a time (the embedding row of a token,
and the unscheduled GEMV that MetaSchedule tunes); `side_value` and `block_offset` also serve
the vectorized kernels, with `r` a ramp of rows.
"""

from __future__ import annotations

from tvm.script import tirx as T

from edgefold.targets.tvm.kernels.packing import IntFormat


def _to_float(value, lanes: int):
    """fp32 (x lanes) from a stored integer; vectors widen through int32 first."""
    if lanes == 1:
        return T.Cast("float32", value)
    return T.Cast(f"float32x{lanes}", T.Cast(f"int32x{lanes}", value))


def _const(value: float, lanes: int):
    return T.float32(value) if lanes == 1 else T.broadcast(T.float32(value), lanes)


def side_value(buf, step, zero, g, b, r, storage: str, lanes: int = 1):
    """A side value (scale or minimum) of block b for row r of group g as fp32; `r` is one index
    or a ramp of `lanes` rows. u8 storage is itself quantized per row (step, zero)."""
    if storage == "u8":
        return (_to_float(buf[g, b, r], lanes) - zero[g, r]) * step[g, r]
    return T.Cast("float32" if lanes == 1 else f"float32x{lanes}", buf[g, b, r])


def block_offset(fmt: IntFormat, scale, Z, Mn, Ms, Mz, g, wb, r, lanes: int = 1):
    """The additive term of block wb (w = q * scale + offset) for the row(s) r of group g."""
    if fmt.offset == "zero":
        return -(_to_float(Z[g, wb, r], lanes) * scale)
    if fmt.offset == "min":
        return side_value(Mn, Ms, Mz, g, wb, r, fmt.minimum, lanes) - _const(fmt.bias, lanes) * scale
    return -(_const(fmt.bias, lanes) * scale)


def code_shift(bits: int, position):
    """(shift, mask) of the code at `position` of a packed int32 word. A 4-bit word holds 8
    inputs: k..k+3 in the low nibbles of bytes 0..3, k+4..k+7 in the high nibbles; an 8-bit
    word holds 4, one per byte. `position` may be an int or an index expression."""
    if bits == 4:
        return (position % 4) * 8 + (position // 4) * 4, 0xF
    return position * 8, 0xFF


def code_vector(word, bits: int, position: int, lanes: int):
    """The codes at `position` of `lanes` packed words (int32 x lanes) as fp32 x lanes."""
    shift, mask = code_shift(bits, position)
    return T.Cast(f"float32x{lanes}", T.bitwise_and(T.shift_right(word, T.broadcast(T.int32(shift), lanes)),
                                                    T.broadcast(T.int32(mask), lanes)))


def fp8_scalar(raw):
    """float32 from one FP8 E4M3FN bit pattern (rebiased exponent; subnormals by hand)."""
    b = T.Cast("int32", raw)
    magnitude = T.reinterpret("float32", T.shift_left(T.bitwise_and(b, T.int32(0x7F)), T.int32(20)) + T.int32(120 << 23))
    magnitude = T.Select(T.bitwise_and(b, T.int32(0x78)) == T.int32(0),
                         (magnitude - T.float32(2.0 ** -7)) * T.float32(2.0), magnitude)
    return T.Select(T.bitwise_and(b, T.int32(0x80)) != T.int32(0), -magnitude, magnitude)


def weight_element(fmt, block: int, streams, g, r, k):
    """w of row (g, r) (group, lane) and input k. `streams` = (W, S, S_step, S_zero, Z, M, M_step, M_zero)."""
    W, S, Ss, Sz, Z, Mn, Ms, Mz = streams
    if not isinstance(fmt, IntFormat):
        raw = W[g, k, r]
        return fp8_scalar(raw) if fmt.dtype == "fp8" else T.Cast("float32", raw)
    per_word = 8 if fmt.bits == 4 else 4
    shift, mask = code_shift(fmt.bits, k % per_word)
    code = T.bitwise_and(T.shift_right(W[g, k // per_word, r], T.Cast("int32", shift)), T.int32(mask))
    wb = k // block
    scale = side_value(S, Ss, Sz, g, wb, r, fmt.scale)
    return T.Cast("float32", code) * scale + block_offset(fmt, scale, Z, Mn, Ms, Mz, g, wb, r)
