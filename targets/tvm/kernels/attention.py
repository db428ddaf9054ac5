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


def score_unroll(lanes: int, slots: int) -> int:
    """Slot vectors scored at once: independent FMA chains (one chain is latency-bound), as many
    as divide the cache so the last group never reads past it."""
    return next(u for u in (4, 2, 1) if (slots // lanes) % u == 0)


def _row_macros(L: int, D: int, S: int, SCALE: float):
    """The two halves of one query's attention, vectorized over slots and over the head dimension.

    softmax_row: scores[row, j] = softmax_j(scale * q . K[:, j]) for j <= last, 0 for the rest of
    the last vector; context_row: out[base:base+D] = sum_j scores[row, j] * V[j, :].
    `lanes` holds score_unroll(L, S) vectors."""
    DV = D // L
    U = score_unroll(L, S)

    @T.macro
    def softmax_row(q, qrow, Kc, kv, scores, row, last, acc, lanes):
        chunks = (last + L) // L
        for jg in range((chunks + U - 1) // U):  # U slot vectors per pass over q (slots past `last`: -inf)
            for u in T.unroll(U):
                for i in T.vectorized(L):
                    lanes[u * L + i] = T.float32(0)
            for d in range(D):
                for u in T.unroll(U):
                    for i in T.vectorized(L):
                        lanes[u * L + i] = lanes[u * L + i] + q[qrow, d] * Kc[kv, d, (jg * U + u) * L + i]
            for u in T.unroll(U):
                for i in T.vectorized(L):
                    scores[row, (jg * U + u) * L + i] = T.Select((jg * U + u) * L + i <= last,
                                                                 lanes[u * L + i] * T.float32(SCALE),
                                                                 T.float32(-3.0e38))
        for i in T.vectorized(L):
            lanes[i] = T.float32(-3.0e38)
        for jc in range(chunks):
            for i in T.vectorized(L):
                lanes[i] = T.max(lanes[i], scores[row, jc * L + i])
        acc[0] = lanes[0]
        for i in range(L - 1):
            acc[0] = T.max(acc[0], lanes[i + 1])
        for i in T.vectorized(L):
            lanes[i] = T.float32(0)
        for jc in range(chunks):
            for i in T.vectorized(L):
                scores[row, jc * L + i] = T.Select(jc * L + i <= last, act.exp(scores[row, jc * L + i] - acc[0]),
                                                   T.float32(0))
                lanes[i] = lanes[i] + scores[row, jc * L + i]
        acc[1] = T.float32(0)
        for i in range(L):
            acc[1] = acc[1] + lanes[i]
        for i in T.vectorized(L):
            lanes[i] = T.float32(1) / acc[1]
        for jc in range(chunks):
            for i in T.vectorized(L):
                scores[row, jc * L + i] = scores[row, jc * L + i] * lanes[0]

    @T.macro
    def context_row(scores, row, Vc, kv, last, acc, out, base):
        for i in range(D):
            acc[i] = T.float32(0)
        for j in range(last + 1):
            for c in T.unroll(DV):
                acc[T.ramp(c * L, 1, L)] = acc[T.ramp(c * L, 1, L)] + T.broadcast(scores[row, j], L) \
                    * Vc[kv, j, T.ramp(c * L, 1, L)]
        for c in T.unroll(DV):
            out[T.ramp(base + c * L, 1, L)] = acc[T.ramp(c * L, 1, L)]

    return softmax_row, context_row


@dataclass(frozen=True)
class AttentionSpec:
    """Everything that decides the code of one decode attention kernel."""

    isa: Isa
    heads: int
    kv_heads: int
    head_dim: int
    slots: int  # cache length; a multiple of the isa's lanes
    qkv_len: int  # length of the qkv buffer (q, then k, then v)
    cache_len: int  # length of the whole flat cache
    scale: float
    rope: bool = True
    ctx_len: int = 0  # length of the context buffer (0: heads * head_dim)

    @property
    def name(self) -> str:
        """The kernel's function name, unique per spec."""
        return (f"attention_h{self.heads}_kv{self.kv_heads}_d{self.head_dim}_l{self.slots}_q{self.qkv_len}"
                f"_c{self.ctx_len or self.heads * self.head_dim}"
                f"{'' if self.rope else '_norope'}_{self.isa.name}").replace("-", "_")


def build_attention_decode(spec: AttentionSpec) -> tvm.tirx.PrimFunc:
    """The decode attention kernel: one new token's q/k/v -> RoPE, cache write, GQA attention -> ctx."""
    L = spec.isa.lanes
    H, HKV, D, S = spec.heads, spec.kv_heads, spec.head_dim, spec.slots
    GROUP, HALF = H // HKV, D // 2
    QKV, CACHE, SCALE, ROPE = spec.qkv_len, spec.cache_len, spec.scale, spec.rope
    CTX = spec.ctx_len or H * D
    if S % L or D % L:
        raise ValueError(f"slots {S} and head_dim {D} must be multiples of {L}")

    @T.macro
    def rope_into(src, base, rope, out, row):
        """out[row, 0:D] = RoPE(src[base:base+D]): rotate-half with this position's cos/sin (rope)."""
        for i in range(HALF):
            out[row, i] = src[base + i] * rope[i] - src[base + HALF + i] * rope[HALF + i]
            out[row, HALF + i] = src[base + HALF + i] * rope[i] + src[base + i] * rope[HALF + i]

    NT = max(1, min(spec.isa.cores, H))
    HPER = -(-H // NT)
    LB = score_unroll(L, S) * L  # softmax_row's score vectors
    softmax_row, context_row = _row_macros(L, D, S, SCALE)

    @T.prim_func
    def attention(qkv: T.Buffer((QKV,), "float32"), rope: T.Buffer((D,), "float32"), position: T.Buffer((1,), "int64"),
                  cache: T.Buffer((CACHE,), "float32"), k_off: T.int64, v_off: T.int64,
                  ctx: T.Buffer((CTX,), "float32")):
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
        for c in T.parallel(NT):  # a contiguous run of heads per thread
            acc = T.alloc_buffer((D,), "float32", scope="local")
            lanes = T.alloc_buffer((LB,), "float32", scope="local")
            for hh in range(HPER):
                if c * HPER + hh < H:
                    if ROPE:
                        rope_into(qkv, (c * HPER + hh) * D, rope, qr, c * HPER + hh)
                    else:
                        for i in range(D):
                            qr[c * HPER + hh, i] = qkv[(c * HPER + hh) * D + i]
                    softmax_row(qr, c * HPER + hh, Kc, (c * HPER + hh) // GROUP, scores, c * HPER + hh, pos, acc, lanes)
                    context_row(scores, c * HPER + hh, Vc, (c * HPER + hh) // GROUP, pos, acc, ctx, (c * HPER + hh) * D)

    return attention.with_attr("global_symbol", spec.name)



@dataclass(frozen=True)
class PrefillAttentionSpec:
    """Everything that decides the code of one prefill attention kernel."""

    isa: Isa
    heads: int
    kv_heads: int
    head_dim: int
    slots: int
    tokens: int  # prompt tokens per call (the bucket)
    cache_len: int
    scale: float
    rope: bool = True
    qkv_width: int = 0  # row width of the qkv buffer (0: this layer's q, k, v)
    context_width: int = 0  # row width of the context buffer (0: heads * head_dim)
    chunk: int = 16  # tokens per parallel task

    @property
    def name(self) -> str:
        """The kernel's function name, unique per spec."""
        qkv = self.qkv_width or (self.heads + 2 * self.kv_heads) * self.head_dim
        return (f"attention_prefill_t{self.tokens}_h{self.heads}_kv{self.kv_heads}_d{self.head_dim}_l{self.slots}"
                f"_q{qkv}_c{self.context_width or self.heads * self.head_dim}"
                f"{'' if self.rope else '_norope'}_{self.isa.name}").replace("-", "_")


def build_attention_prefill(spec: PrefillAttentionSpec) -> tvm.tirx.PrimFunc:
    """`length` prompt tokens at slots position.. position+length-1: write their k/v, then each
    attends causally to every slot up to its own. Parallel over (head, chunk of tokens)."""
    L = spec.isa.lanes
    H, HKV, D, S, M = spec.heads, spec.kv_heads, spec.head_dim, spec.slots, spec.tokens
    GROUP, HALF, TC = H // HKV, D // 2, spec.chunk
    CH = -(-M // TC)
    QW = spec.qkv_width or (H + 2 * HKV) * D
    CW = spec.context_width or H * D
    CACHE, SCALE, ROPE = spec.cache_len, spec.scale, spec.rope
    if S % L or D % L:
        raise ValueError(f"slots {S} and head_dim {D} must be multiples of {L}")

    @T.macro
    def rope_into(src, base, rope, rbase, out, row):
        for i in range(HALF):
            out[row, i] = src[base + i] * rope[rbase + i] - src[base + HALF + i] * rope[rbase + HALF + i]
            out[row, HALF + i] = src[base + HALF + i] * rope[rbase + i] + src[base + i] * rope[rbase + HALF + i]

    NT = max(1, min(spec.isa.cores, H * CH))
    TPER = -(-(H * CH) // NT)
    LB = score_unroll(L, S) * L  # softmax_row's score vectors
    softmax_row, context_row = _row_macros(L, D, S, SCALE)

    @T.macro
    def prefill_row(qkv, rope, qr, Kc, Vc, scores, acc, lanes, ctx, task, t, p0):
        """Token t of the prompt, head task // CH: it sees slots 0 .. p0 + t."""
        if ROPE:
            rope_into(qkv, t * QW + (task // CH) * D, rope, t * D, qr, task)
        else:
            for i in range(D):
                qr[task, i] = qkv[t * QW + (task // CH) * D + i]
        softmax_row(qr, task, Kc, (task // CH) // GROUP, scores, task, p0 + t, acc, lanes)
        context_row(scores, task, Vc, (task // CH) // GROUP, p0 + t, acc, ctx, t * CW + (task // CH) * D)

    @T.prim_func
    def attention(qkv: T.Buffer((M * QW,), "float32"), rope: T.Buffer((M * D,), "float32"),
                  position: T.Buffer((1,), "int64"), length: T.Buffer((1,), "int64"),
                  cache: T.Buffer((CACHE,), "float32"), k_off: T.int64, v_off: T.int64,
                  ctx: T.Buffer((M * CW,), "float32")):
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
        for c in T.parallel(NT):  # (head, chunk of tokens) tasks, a contiguous run per thread
            acc = T.alloc_buffer((D,), "float32", scope="local")
            lanes = T.alloc_buffer((LB,), "float32", scope="local")
            for tk in range(TPER):
                if c * TPER + tk < H * CH:
                    for tt in range(TC):
                        if T.Cast("int64", ((c * TPER + tk) % CH) * TC + tt) < n:
                            prefill_row(qkv, rope, qr, Kc, Vc, scores, acc, lanes, ctx, c * TPER + tk,
                                        T.Cast("int64", ((c * TPER + tk) % CH) * TC + tt), p0)
                        elif ((c * TPER + tk) % CH) * TC + tt < M:
                            for i in range(D):
                                ctx[(((c * TPER + tk) % CH) * TC + tt) * CW + ((c * TPER + tk) // CH) * D + i] \
                                    = T.float32(0)

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
