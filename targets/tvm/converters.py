"""edgefold's own ONNX -> Relax converters, added to the stock importer's table.

`edgefold.Decode` (written by `lowbit.py`) becomes one TE kernel that rebuilds an fp32
weight from packed codes: 4-bit nibbles (int4 sign-extended, uint4 as is), int8/uint8,
FP8 E4M3FN bit patterns, or fp16; minus the zero point, times the per-channel or
per-block scale, plus the block minimum. The kernel is named `edgefold_decode*` so
`lowering.py` can find it and fuse it into the matmul or gather that reads it; once
fused, the reduction reads the packed bytes directly.

This module is the one adapter for the importer's private API: TVM 0.27 has no public hook
for extra converters, so `edgefold_converters` swaps `onnx_frontend._get_convert_map`
for the duration of an import and nothing else touches it.
"""

from __future__ import annotations

import contextlib
import math

DECODE_PREFIX = "edgefold_decode"


def _strides(shape: list[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return list(reversed(strides))


def _nibble(tirx, packed, flat):
    """The 4-bit value at flat element index `flat` of a packed byte array (low nibble first)."""
    byte = packed[flat // 2].astype("int32")
    return (byte >> ((flat % 2) * 4)) & 0xF


def _fp8_e4m3(tirx, byte):
    """float32 from FP8 E4M3FN bits: normals by rebuilding the float's bits, subnormals as m * 2^-9."""
    sign = byte >> 7
    exponent = (byte >> 3) & 0xF
    mantissa = byte & 0x7
    bits = (sign << 31) | ((exponent + 120) << 23) | (mantissa << 20)
    normal = tirx.reinterpret("float32", bits.astype("uint32"))
    tiny = mantissa.astype("float32") * tirx.const(2.0 ** -9, "float32")
    subnormal = tirx.Select(sign == 1, -tiny, tiny)
    return tirx.Select(exponent == 0, subnormal, normal)


def decode_compute(codes, scale=None, zero=None, minimum=None, *, kind: str, shape: list[int], axis: int,
                   block: int, transpose: bool):
    """TE compute of an edgefold.Decode: the fp32 weight rebuilt from packed codes and scale/zero/min.

    `shape`: the stored weight's; `axis`/`block`: the scale blocks (block 0: one per channel);
    `transpose`: the result is [shape[1], shape[0]]."""
    from tvm import te, tirx

    out_shape = [shape[1], shape[0]] if transpose else list(shape)
    strides = _strides(shape)
    group_shape = [math.ceil(s / block) if (block and d == axis) else s for d, s in enumerate(shape)]
    group_strides = _strides(group_shape)

    def group_index(src):
        if block == 0:
            return (src[axis],)
        return tuple(i // block if d == axis else i for d, i in enumerate(src))

    def code_of(src):
        if kind in ("int4", "uint4"):
            flat = sum(i * s for i, s in zip(src, strides))
            value = _nibble(tirx, codes, flat)
            return ((value ^ 8) - 8) if kind == "int4" else value
        if kind == "fp8e4m3":
            return _fp8_e4m3(tirx, codes[src].astype("int32"))
        return codes[src]

    def zero_of(group):
        if kind in ("int4", "uint4"):
            flat = sum(i * s for i, s in zip(group, group_strides)) if block else group[0]
            value = _nibble(tirx, zero, flat)
            return ((value ^ 8) - 8) if kind == "int4" else value
        return zero[group].astype("int32")

    def element(*index):
        src = (index[1], index[0]) if transpose else index
        code = code_of(src)
        if kind == "fp16":
            return code.astype("float32")
        group = group_index(src)
        if zero is not None:
            code = code.astype("int32") - zero_of(group)
        value = code.astype("float32") * scale[group].astype("float32")
        if minimum is not None:
            value = value + minimum[group].astype("float32")
        return value

    return te.compute(out_shape, element, name="decode")


def _decode_converter():
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    class Decode(OnnxOpConverter):
        """edgefold.Decode(codes, scale[, zero][, min]) -> fp32 weight."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            kind = attr["kind"].decode() if isinstance(attr["kind"], bytes) else attr["kind"]
            has_zero, has_min = bool(attr.get("has_zero", 0)), bool(attr.get("has_min", 0))
            values = [v for v in inputs if v is not None]
            codes, rest = values[0], values[1:]
            scale = rest.pop(0) if kind != "fp16" else None
            zero = rest.pop(0) if has_zero else None
            minimum = rest.pop(0) if has_min else None
            args = [a for a in (codes, scale, zero, minimum) if a is not None]
            names = [n for n, a in zip(("codes", "scale", "zero", "minimum"), (codes, scale, zero, minimum))
                     if a is not None]

            def compute(*tensors):
                return decode_compute(**dict(zip(names, tensors)), kind=kind, shape=list(attr["shape"]),
                                      axis=int(attr.get("axis", 0)), block=int(attr.get("block", 0)),
                                      transpose=bool(attr.get("transpose", 0)))

            return bb.emit_te(compute, *args, primfunc_name_hint=f"{DECODE_PREFIX}_{kind}")

    return Decode


@contextlib.contextmanager
def edgefold_converters():
    """The stock importer with edgefold's converters added (restored afterwards)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    stock = onnx_frontend._get_convert_map
    extra = {"Decode": _decode_converter()}

    def extended():
        table = stock()
        table.update(extra)
        return table

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = stock

