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
from edgefold.targets.tvm.kernels.weight_element import weight_element

# Element-offset arguments after (ids, position, blob): the table's streams, then RoPE's inv_freq.
EMBED_SLOTS = ("W", "S", "S_step", "S_zero", "Z", "M", "M_step", "M_zero", "inv_freq")


@dataclass(frozen=True)
class EmbedSpec:
    """Everything that decides the code of one embedding kernel."""

    fmt: IntFormat | FloatFormat
    vocab: int
    hidden: int
    tokens: int  # tokens per call (1 for decode)
    head_dim: int

    @property
    def name(self) -> str:
        """The kernel's function name, unique per spec."""
        return f"embed_{self.fmt.key}_{self.vocab}x{self.hidden}_t{self.tokens}".replace("-", "_")


def build_embed(spec: EmbedSpec) -> tvm.tirx.PrimFunc:
    """The embedding kernel: fp32 rows of the given token ids from the packed table, plus RoPE cos/sin."""
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
                x[t * H + k] = weight_element(fmt, block, (W, S, Ss, Sz, Z, Mn, Ms, Mz), g, r, k)
            for i in range(HALF):
                angle = T.Cast("float32", position[0] + t) * F[i]
                rope[t * D + i] = T.cos(angle)
                rope[t * D + HALF + i] = T.sin(angle)

    return embed.with_attr("global_symbol", spec.name)

