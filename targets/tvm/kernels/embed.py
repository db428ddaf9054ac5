"""The token embedding: decode only the rows of the tokens asked for, from the packed table.

A tied embedding is the lm_head's own packed weight (rows interleaved by 16, see
`packing`): row t is lane t % 16 of group t // 16, so this kernel reads the same bytes the
lm_head GEMV streams and no fp32 copy of the table exists anywhere. The kernel also
writes RoPE's cos/sin for each token's position (once per token, not once per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from edgefold.targets.tvm.kernels.gemv import STORAGE_DTYPES, SCHEDULED
from edgefold.targets.tvm.kernels.isa import ROWS
from edgefold.targets.tvm.kernels.packing import FloatFormat, IntFormat, padded_k

# Element-offset arguments after (ids, position, blob): the table's streams, then RoPE's inv_freq.
EMBED_SLOTS = ("W", "S", "S_step", "S_zero", "Z", "M", "M_step", "M_zero", "inv_freq")


@dataclass(frozen=True)
class EmbedSpec:
    fmt: IntFormat | FloatFormat
    vocab: int
    hidden: int
    tokens: int  # tokens per call (1 for decode)
    head_dim: int

    @property
    def name(self) -> str:
        return f"embed_{self.fmt.key}_{self.vocab}x{self.hidden}_t{self.tokens}".replace("-", "_")


def build_embed(spec: EmbedSpec) -> tvm.tirx.PrimFunc:
    fmt, V, H, NT, D = spec.fmt, spec.vocab, spec.hidden, spec.tokens, spec.head_dim
    G, HALF = -(-V // ROWS), spec.head_dim // 2
    is_int = isinstance(fmt, IntFormat)
    if is_int:
        KP = padded_k(H)
        per_word = 8 if fmt.bits == 4 else 4
        KW, WB = KP // per_word, (1 if not fmt.block else -(-KP // fmt.block))
        block = fmt.block or KP
        wdt, sdt, mdt = "int32", STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32")
        wshape = (G, KW, ROWS)
    else:
        KW, WB, block, per_word = H, 1, H, 1
        wdt, sdt, mdt = STORAGE_DTYPES[fmt.dtype], "float32", "float32"
        wshape = (G, H, ROWS)

    def side(buf, step, zero, g, b, r, storage):
        if storage == "u8":
            return (T.Cast("float32", buf[g, b, r]) - zero[g, r]) * step[g, r]
        return T.Cast("float32", buf[g, b, r])

    def element(W, S, Ss, Sz, Z, Mn, Ms, Mz, g, r, k):
        if not is_int:
            raw = W[g, k, r]
            return _fp8_scalar(raw) if fmt.dtype == "fp8" else T.Cast("float32", raw)
        if fmt.bits == 4:
            p = k % 8
            shift = (p % 4) * 8 + (p // 4) * 4
            code = T.bitwise_and(T.shift_right(W[g, k // 8, r], T.Cast("int32", shift)), T.int32(0xF))
        else:
            code = T.bitwise_and(T.shift_right(W[g, k // 4, r], T.Cast("int32", (k % 4) * 8)), T.int32(0xFF))
        wb = k // block
        scale = side(S, Ss, Sz, g, wb, r, fmt.scale)
        if fmt.offset == "zero":
            offset = -(T.Cast("float32", Z[g, wb, r]) * scale)
        elif fmt.offset == "min":
            offset = side(Mn, Ms, Mz, g, wb, r, fmt.minimum) - T.float32(fmt.bias) * scale
        else:
            offset = -(T.float32(fmt.bias) * scale)
        return T.Cast("float32", code) * scale + offset

    @T.prim_func
    def embed(ids: T.Buffer((1, NT), "int64"), position: T.Buffer((1,), "int64"), blob_h: T.handle,
              o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
              o_ms: T.int64, o_mz: T.int64, o_f: T.int64,
              x: T.Buffer((NT * H,), "float32"), rope: T.Buffer((NT * D,), "float32")):
        T.func_attr(SCHEDULED)
        nblob = T.int64()
        blob = T.match_buffer(blob_h, (nblob,), "uint8")
        W = T.decl_buffer(wshape, wdt, data=blob.data, elem_offset=o_w)
        S = T.decl_buffer((G, WB, ROWS), sdt, data=blob.data, elem_offset=o_s)
        Ss = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_ss)
        Sz = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_sz)
        Z = T.decl_buffer((G, WB, ROWS), "uint8", data=blob.data, elem_offset=o_z)
        Mn = T.decl_buffer((G, WB, ROWS), mdt, data=blob.data, elem_offset=o_m)
        Ms = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_ms)
        Mz = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_mz)
        F = T.decl_buffer((HALF,), "float32", data=blob.data, elem_offset=o_f)
        for t in range(NT):
            token = T.max(T.min(ids[0, t], T.int64(V - 1)), T.int64(0))  # out-of-range ids clamp, never read outside
            g = token // ROWS
            r = token % ROWS
            for k in range(H):
                x[t * H + k] = element(W, S, Ss, Sz, Z, Mn, Ms, Mz, g, r, k)
            for i in range(HALF):
                angle = T.Cast("float32", position[0] + t) * F[i]
                rope[t * D + i] = T.cos(angle)
                rope[t * D + HALF + i] = T.sin(angle)

    return embed.with_attr("global_symbol", spec.name)


def _fp8_scalar(raw):
    b = T.Cast("int32", raw)
    magnitude = T.reinterpret("float32", T.shift_left(T.bitwise_and(b, T.int32(0x7F)), T.int32(20)) + T.int32(120 << 23))
    magnitude = T.Select(T.bitwise_and(b, T.int32(0x78)) == T.int32(0),
                         (magnitude - T.float32(2.0 ** -7)) * T.float32(2.0), magnitude)
    return T.Select(T.bitwise_and(b, T.int32(0x80)) != T.int32(0), -magnitude, magnitude)
