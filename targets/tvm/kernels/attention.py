"""Attention of one new token over the KV cache (decode), GQA-aware, with RoPE and the cache write.

The cache is one flat fp32 buffer for the whole model (the library updates it in place);
each layer owns two regions: keys as [kv_heads, head_dim, slots] (so the scores of
consecutive slots are one vector FMA per head dimension) and values as
[kv_heads, slots, head_dim] (so the context is one vector FMA per slot). Only the filled
slots 0..position are read.

    serial:   k, v of the new token -> RoPE(k) -> cache slot `position`
    parallel: per query head h (kv head h // group):
              s[j] = scale * RoPE(q_h) . K[:, j]   j <= position
              ctx_h = sum_j softmax(s)[j] V[j]

RoPE's cos/sin for the position come precomputed from the embedding kernel (once per
token, not once per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from edgefold.targets.tvm.kernels import act
from edgefold.targets.tvm.kernels.gemv import SCHEDULED
from edgefold.targets.tvm.kernels.isa import Isa


@dataclass(frozen=True)
class AttentionSpec:
    isa: Isa
    heads: int
    kv_heads: int
    head_dim: int
    slots: int  # cache length; a multiple of the isa's lanes
    qkv_len: int  # length of the qkv buffer (q, then k, then v)
    cache_len: int  # length of the whole flat cache
    scale: float
    rope: bool = True

    @property
    def name(self) -> str:
        return (f"attention_h{self.heads}_kv{self.kv_heads}_d{self.head_dim}_l{self.slots}"
                f"{'' if self.rope else '_norope'}_{self.isa.name}").replace("-", "_")


def build_attention_decode(spec: AttentionSpec) -> tvm.tirx.PrimFunc:
    L = spec.isa.lanes
    H, HKV, D, S = spec.heads, spec.kv_heads, spec.head_dim, spec.slots
    GROUP, HALF = H // HKV, D // 2
    DV = D // L  # vectors per head dimension row (D is a multiple of the lanes)
    QKV, CACHE, SCALE, ROPE = spec.qkv_len, spec.cache_len, spec.scale, spec.rope
    fvec = f"float32x{L}"
    if S % L or D % L:
        raise ValueError(f"slots {S} and head_dim {D} must be multiples of {L}")

    def bf(v):
        return T.broadcast(T.float32(v), L)

    @T.macro
    def rope_into(src, base, rope, out, row):
        """out[row, 0:D] = RoPE(src[base:base+D]): rotate-half with this position's cos/sin (rope)."""
        for i in range(HALF):
            out[row, i] = src[base + i] * rope[i] - src[base + HALF + i] * rope[HALF + i]
            out[row, HALF + i] = src[base + HALF + i] * rope[i] + src[base + i] * rope[HALF + i]

    @T.prim_func
    def attention(qkv: T.Buffer((QKV,), "float32"), rope: T.Buffer((D,), "float32"), position: T.Buffer((1,), "int64"),
                  cache: T.Buffer((CACHE,), "float32"), k_off: T.int64, v_off: T.int64,
                  ctx: T.Buffer((H * D,), "float32")):
        T.func_attr(SCHEDULED)
        Kc = T.decl_buffer((HKV, D, S), "float32", data=cache.data, elem_offset=k_off)
        Vc = T.decl_buffer((HKV, S, D), "float32", data=cache.data, elem_offset=v_off)
        scores = T.alloc_buffer((H, S), "float32")
        qr = T.alloc_buffer((H, D), "float32")
        kr = T.alloc_buffer((1, D), "float32")
        pos = position[0]
        for h in range(HKV):
            if ROPE:
                rope_into(qkv, H * D + h * D, rope, kr, 0)
                for i in range(D):
                    Kc[h, i, pos] = kr[0, i]
            else:
                for i in range(D):
                    Kc[h, i, pos] = qkv[H * D + h * D + i]
            for i in range(D):
                Vc[h, pos, i] = qkv[H * D + HKV * D + h * D + i]
        for h in T.parallel(H):
            acc = T.alloc_buffer((D,), "float32", scope="local")
            best = T.alloc_buffer((1,), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            if ROPE:
                rope_into(qkv, h * D, rope, qr, h)
            else:
                for i in range(D):
                    qr[h, i] = qkv[h * D + i]
            for jc in range((pos + L) // L):
                for i in T.vectorized(L):
                    acc[i] = T.float32(0)
                for d in range(D):
                    for i in T.vectorized(L):
                        acc[i] = acc[i] + qr[h, d] * Kc[h // GROUP, d, jc * L + i]
                for i in T.vectorized(L):
                    scores[h, jc * L + i] = acc[i] * T.float32(SCALE)
            best[0] = scores[h, 0]
            for j in range(pos):
                best[0] = T.max(best[0], scores[h, j + 1])
            total[0] = T.float32(0)
            for j in range(pos + 1):
                scores[h, j] = act.exp(scores[h, j] - best[0])
                total[0] = total[0] + scores[h, j]
            for i in range(D):
                acc[i] = T.float32(0)
            for j in range(pos + 1):
                for c in T.unroll(DV):
                    acc[T.ramp(c * L, 1, L)] = acc[T.ramp(c * L, 1, L)] + T.broadcast(scores[h, j], L) \
                        * Vc[h // GROUP, j, T.ramp(c * L, 1, L)]
            for c in T.unroll(DV):
                ctx[T.ramp(h * D + c * L, 1, L)] = acc[T.ramp(c * L, 1, L)] / T.broadcast(total[0], L)

    return attention.with_attr("global_symbol", spec.name)



@dataclass(frozen=True)
class PrefillAttentionSpec:
    isa: Isa
    heads: int
    kv_heads: int
    head_dim: int
    slots: int
    tokens: int  # prompt tokens per call (the bucket)
    cache_len: int
    scale: float
    rope: bool = True
    chunk: int = 16  # tokens per parallel task

    @property
    def qkv_width(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    @property
    def name(self) -> str:
        return (f"attention_prefill_t{self.tokens}_h{self.heads}_kv{self.kv_heads}_d{self.head_dim}_l{self.slots}"
                f"{'' if self.rope else '_norope'}_{self.isa.name}").replace("-", "_")


def build_attention_prefill(spec: PrefillAttentionSpec) -> tvm.tirx.PrimFunc:
    """`length` prompt tokens at slots position.. position+length-1: write their k/v, then each
    attends causally to every slot up to its own. Parallel over (head, chunk of tokens)."""
    L = spec.isa.lanes
    H, HKV, D, S, M = spec.heads, spec.kv_heads, spec.head_dim, spec.slots, spec.tokens
    GROUP, HALF, TC = H // HKV, D // 2, spec.chunk
    CH = -(-M // TC)
    DV = D // L
    QW, CACHE, SCALE, ROPE = spec.qkv_width, spec.cache_len, spec.scale, spec.rope
    if S % L or D % L:
        raise ValueError(f"slots {S} and head_dim {D} must be multiples of {L}")

    @T.macro
    def rope_into(src, base, rope, rbase, out, row):
        for i in range(HALF):
            out[row, i] = src[base + i] * rope[rbase + i] - src[base + HALF + i] * rope[rbase + HALF + i]
            out[row, HALF + i] = src[base + HALF + i] * rope[rbase + i] + src[base + i] * rope[rbase + HALF + i]

    @T.prim_func
    def attention(qkv: T.Buffer((M * QW,), "float32"), rope: T.Buffer((M * D,), "float32"),
                  position: T.Buffer((1,), "int64"), length: T.Buffer((1,), "int64"),
                  cache: T.Buffer((CACHE,), "float32"), k_off: T.int64, v_off: T.int64,
                  ctx: T.Buffer((M * H * D,), "float32")):
        T.func_attr(SCHEDULED)
        Kc = T.decl_buffer((HKV, D, S), "float32", data=cache.data, elem_offset=k_off)
        Vc = T.decl_buffer((HKV, S, D), "float32", data=cache.data, elem_offset=v_off)
        scores = T.alloc_buffer((H * CH, S), "float32")
        qr = T.alloc_buffer((H * CH, D), "float32")
        kr = T.alloc_buffer((HKV, D), "float32")
        p0 = position[0]
        n = T.min(length[0], T.int64(M))
        for h in T.parallel(HKV):
            for t in range(n):
                if ROPE:
                    rope_into(qkv, t * QW + H * D + h * D, rope, t * D, kr, h)
                    for i in range(D):
                        Kc[h, i, p0 + t] = kr[h, i]
                else:
                    for i in range(D):
                        Kc[h, i, p0 + t] = qkv[t * QW + H * D + h * D + i]
                for i in range(D):
                    Vc[h, p0 + t, i] = qkv[t * QW + H * D + HKV * D + h * D + i]
        for task in T.parallel(H * CH):
            acc = T.alloc_buffer((D,), "float32", scope="local")
            best = T.alloc_buffer((1,), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            h = task // CH
            for tt in range(TC):
                t = T.Cast("int64", (task % CH) * TC + tt)
                if t < n:
                    last = p0 + t  # the last slot this token sees (its own)
                    if ROPE:
                        rope_into(qkv, t * QW + h * D, rope, t * D, qr, task)
                    else:
                        for i in range(D):
                            qr[task, i] = qkv[t * QW + h * D + i]
                    for jc in range((last + L) // L):
                        for i in T.vectorized(L):
                            acc[i] = T.float32(0)
                        for d in range(D):
                            for i in T.vectorized(L):
                                acc[i] = acc[i] + qr[task, d] * Kc[h // GROUP, d, jc * L + i]
                        for i in T.vectorized(L):
                            scores[task, jc * L + i] = acc[i] * T.float32(SCALE)
                    best[0] = scores[task, 0]
                    for j in range(last):
                        best[0] = T.max(best[0], scores[task, j + 1])
                    total[0] = T.float32(0)
                    for j in range(last + 1):
                        scores[task, j] = act.exp(scores[task, j] - best[0])
                        total[0] = total[0] + scores[task, j]
                    for i in range(D):
                        acc[i] = T.float32(0)
                    for j in range(last + 1):
                        for c in T.unroll(DV):
                            acc[T.ramp(c * L, 1, L)] = acc[T.ramp(c * L, 1, L)] + T.broadcast(scores[task, j], L) \
                                * Vc[h // GROUP, j, T.ramp(c * L, 1, L)]
                    for c in T.unroll(DV):
                        ctx[T.ramp(t * H * D + h * D + c * L, 1, L)] = acc[T.ramp(c * L, 1, L)] / T.broadcast(total[0], L)
                elif t < T.int64(M):
                    for i in range(D):
                        ctx[t * H * D + h * D + i] = T.float32(0)

    return attention.with_attr("global_symbol", spec.name)


def build_select_row(tokens: int, width: int) -> tvm.tirx.PrimFunc:
    """out = x[length - 1] (the last prompt token's hidden state: only its logits are needed)."""

    @T.prim_func
    def select_row(x: T.Buffer((tokens * width,), "float32"), length: T.Buffer((1,), "int64"),
                   out: T.Buffer((width,), "float32")):
        T.func_attr(SCHEDULED)
        row = T.max(T.min(length[0], T.int64(tokens)), T.int64(1)) - 1
        for i in range(width):
            out[i] = x[row * width + i]

    return select_row.with_attr("global_symbol", f"select_row_{tokens}x{width}")
