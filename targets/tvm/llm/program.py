"""A `DecoderSpec` -> a Relax module of hand-scheduled kernels, and the weight blob it reads.

    decode(input_ids int64[1, 1], position int64[1], cache float32[C], weights uint8[B]) -> logits float32[V]

One call per generated token. `cache` is the KV cache of every layer in one buffer,
updated in place (the caller allocates it once, zeroed, and keeps it between calls);
`weights` is the packed blob (`packing.Blob`), the artifact's weights.bin as is. Per layer
the module calls five kernels:

    qkv = gemv(RMSNorm(x); Wq|Wk|Wv)              (one call when q, k, v share a format)
    ctx = attention(qkv, cache)                    (writes the new k/v into the cache)
    x  += gemv(ctx; Wo)
    gu  = gemv(RMSNorm(x); Wgate|Wup)
    x  += gemv(SiLU(gate) * up; Wdown)

then logits = gemv(RMSNorm(x); lm_head), where a tied lm_head is the embedding's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgefold.targets.tvm.kernels.attention import AttentionSpec, build_attention_decode
from edgefold.targets.tvm.kernels.embed import EMBED_SLOTS, EmbedSpec, build_embed
from edgefold.targets.tvm.kernels.gemv import OFFSET_SLOTS, GemvSpec, build_gemv
from edgefold.targets.tvm.kernels.isa import Isa
from edgefold.targets.tvm.kernels.packing import Blob, PackedWeight, add_packed, concat_rows, pack
from edgefold.targets.tvm.llm.spec import DecoderSpec, Linear, Unsupported


@dataclass
class Segment:
    """Rows [start, start + n) of a multi-part output written by one GEMV call."""

    packed: PackedWeight
    offsets: dict[str, int]
    start: int

    @property
    def n(self) -> int:
        """Number of output rows this segment writes."""
        return self.packed.n


@dataclass
class LayerPlan:
    """Where one decoder layer's weights, norms and KV-cache regions are, plus its attention shape."""

    qkv: list[Segment]
    o: Segment
    gate_up: list[Segment]
    down: Segment
    attn_norm: int  # blob offsets (float32 elements)
    mlp_norm: int
    k_cache: int  # cache offsets (float32 elements)
    v_cache: int
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    rope: bool
    intermediate: int
    eps: tuple[float, float]


@dataclass
class DecoderPlan:
    """Where everything is: the blob, each layer's tensors, the cache regions."""

    spec: DecoderSpec
    isa: Isa
    slots: int
    blob: Blob
    embedding: Segment
    lm_head: Segment
    final_norm: int
    inv_freq: int
    layers: list[LayerPlan] = field(default_factory=list)
    cache_len: int = 0
    formats: dict[str, int] = field(default_factory=dict)  # kernel format -> how many weights use it

    def weight_bytes_per_token(self) -> int:
        """Bytes of packed weights one decode step streams (the embedding row read is negligible)."""
        total = self.lm_head.packed.nbytes()
        for layer in self.layers:
            total += sum(s.packed.nbytes() for s in (*layer.qkv, layer.o, *layer.gate_up, layer.down))
        return total


def _segments(blob: Blob, linears: list[Linear], name: str, formats: dict[str, int]) -> list[Segment]:
    """Pack linears that read the same input: fused into one weight when their formats agree."""
    weights = [lin.weight for lin in linears]
    biases = [lin.bias for lin in linears]
    try:
        if any(b is not None for b in biases) and not all(b is not None for b in biases):
            raise Unsupported("some with bias")
        fused = concat_rows(weights, name)
        bias = np.concatenate(biases) if biases[0] is not None else None
        packed = [(pack(fused, bias), 0)]
    except Unsupported:
        packed, start = [], 0
        for lin in linears:
            packed.append((pack(lin.weight, lin.bias), start))
            start += lin.weight.n
    out = []
    for weight, start in packed:
        formats[weight.fmt.key] = formats.get(weight.fmt.key, 0) + 1
        out.append(Segment(weight, add_packed(blob, weight), start))
    return out


def plan_decoder(spec: DecoderSpec, isa: Isa, slots: int) -> DecoderPlan:
    """Pack every weight into one blob and lay out the cache."""
    if slots % isa.lanes:
        raise Unsupported(f"the KV cache length {slots} must be a multiple of {isa.lanes}")
    blob, formats = Blob(), {}
    lm = spec.lm_head
    lm_packed = pack(lm.weight, lm.bias)
    lm_segment = Segment(lm_packed, add_packed(blob, lm_packed), 0)
    formats[lm_packed.fmt.key] = 1
    if spec.tied:
        embedding = lm_segment
    else:
        packed = pack(spec.embedding)
        embedding = Segment(packed, add_packed(blob, packed), 0)
    plan = DecoderPlan(spec, isa, slots, blob, embedding, lm_segment,
                       final_norm=blob.add(spec.final_norm.weight.astype(np.float32)),
                       inv_freq=blob.add(spec.inv_freq.astype(np.float32)), formats=formats)
    cache = 0
    for index, layer in enumerate(spec.layers):
        a, m = layer.attention, layer.mlp
        k_size = a.num_kv_heads * a.head_dim * slots
        plan.layers.append(LayerPlan(
            qkv=_segments(blob, [a.q, a.k, a.v], f"layer{index}.qkv", formats),
            o=_segments(blob, [a.o], f"layer{index}.o", formats)[0],
            gate_up=_segments(blob, [m.gate, m.up], f"layer{index}.gate_up", formats),
            down=_segments(blob, [m.down], f"layer{index}.down", formats)[0],
            attn_norm=blob.add(layer.attn_norm.weight.astype(np.float32)),
            mlp_norm=blob.add(layer.mlp_norm.weight.astype(np.float32)),
            k_cache=cache, v_cache=cache + k_size, heads=a.num_heads, kv_heads=a.num_kv_heads,
            head_dim=a.head_dim, scale=a.scale, rope=a.rope, intermediate=m.intermediate,
            eps=(layer.attn_norm.eps, layer.mlp_norm.eps)))
        cache += 2 * k_size
    plan.cache_len = cache
    return plan


class _Module:
    """Collects kernels (deduplicated by name), what each call reads, and emits the Relax calls."""

    def __init__(self, bb, blob_var):
        self.bb = bb
        self.blob = blob_var
        self.kernels: dict[str, object] = {}
        self.gvars: dict[str, object] = {}
        self.weight_bytes: dict[str, int] = {}  # packed weight bytes one call of the kernel streams

    def kernel(self, name: str, build, weight_bytes: int = 0):
        if name not in self.gvars:
            func = build()
            self.kernels[name] = func
            self.gvars[name] = self.bb.add_func(func, name)
        self.weight_bytes[name] = max(self.weight_bytes.get(name, 0), weight_bytes)
        return self.gvars[name]


def build_module(plan: DecoderPlan, tokens: int = 1, *, replacements: dict | None = None,
                 collect: dict | None = None):
    """The Relax IRModule of a plan (kernels included): `decode` for tokens == 1, else `prefill`
    of a prompt of up to `tokens` tokens:

        prefill(input_ids int64[1, tokens], position int64[1], length int64[1], cache, weights)
            -> logits float32[V] of token length-1; the prompt's keys/values fill slots
               position .. position+length-1 (ids past `length` are ignored).
    """
    from tvm import relax
    from tvm.script import tirx as T

    from edgefold.targets.tvm.kernels.attention import (PrefillAttentionSpec, build_attention_prefill,
                                                        build_select_row)
    from edgefold.targets.tvm.kernels.gemm import GemmSpec, build_gemm

    spec, isa = plan.spec, plan.isa
    hidden, vocab, m = spec.hidden, spec.vocab, tokens
    prefill = tokens > 1
    bb = relax.BlockBuilder()
    ids = relax.Var("input_ids", relax.TensorType((1, m), "int64"))
    position = relax.Var("position", relax.TensorType((1,), "int64"))
    length = relax.Var("length", relax.TensorType((1,), "int64"))
    cache = relax.Var("cache", relax.TensorType((plan.cache_len,), "float32"))
    weights = relax.Var("weights", relax.TensorType((plan.blob.size,), "uint8"))
    module = _Module(bb, weights)

    def i64(value: int):
        return relax.prim_value(T.int64(int(value)))

    def linear(segment: Segment, prologue: str, src, src_width: int, out, out_width: int, *, accumulate: bool,
               norm: int = 0, eps: float = 1e-5, rows: int = m):
        """One GEMV (rows == 1) or GEMM call; writes rows of `out` (new if None) at the segment's start."""
        packed = segment.packed
        bias = "bias" in segment.offsets
        slots = {**segment.offsets, "src_off": 0, "y_off": segment.start, "norm": norm}
        if rows == 1:
            kspec = GemvSpec(isa, packed.fmt, packed.n, packed.k, prologue, src_width, out_width, accumulate, bias, eps)
            if collect is not None:
                collect.setdefault(kspec.name, (kspec, slots))
            chosen = (replacements or {}).get(kspec.name)
            gvar = module.kernel(kspec.name, (lambda: chosen) if chosen is not None else (lambda: build_gemv(kspec)),
                                 packed.nbytes())
        else:
            kspec = GemmSpec(isa, packed.fmt, packed.n, packed.k, rows, prologue, src_width, out_width, accumulate,
                             bias, eps)
            gvar = module.kernel(kspec.name, lambda: build_gemm(kspec), packed.nbytes())
        args = [src, weights] + [i64(slots.get(name, 0)) for name in OFFSET_SLOTS]
        out_type = relax.TensorType((rows * out_width,), "float32")
        if out is None:
            return bb.emit(relax.call_tir(gvar, args, out_type))
        return bb.emit(relax.call_tir_inplace(gvar, args + [out], [len(args)], out_type))

    def parts(segments: list[Segment], prologue: str, src, src_width: int, out, out_width: int, *, norm=0, eps=1e-5):
        for segment in segments:
            out = linear(segment, prologue, src, src_width, out, out_width, accumulate=False, norm=norm, eps=eps)
        return out

    def scratch(width: int):
        """A buffer every layer reuses (written in place): no tensor is allocated per layer."""
        return bb.emit(relax.op.builtin.alloc_tensor(relax.ShapeExpr([m * width]), "float32", 0))

    params = [ids, position, length, cache, weights] if prefill else [ids, position, cache, weights]
    with bb.function("prefill" if prefill else "decode", params):
        embed_spec = EmbedSpec(plan.embedding.packed.fmt, vocab, hidden, m, spec.head_dim)
        embed = module.kernel(embed_spec.name, lambda: build_embed(embed_spec))
        slots = {**plan.embedding.offsets, "inv_freq": plan.inv_freq}
        result = bb.emit(relax.call_tir(embed, [ids, position, weights] + [i64(slots.get(n, 0)) for n in EMBED_SLOTS],
                                        [relax.TensorType((m * hidden,), "float32"),
                                         relax.TensorType((m * spec.head_dim,), "float32")]))
        x = bb.emit(relax.TupleGetItem(result, 0))
        rope = bb.emit(relax.TupleGetItem(result, 1))
        # One scratch buffer per kind, as wide as the widest layer needs (fold/slice vary widths).
        qkv_width = max((l.heads + 2 * l.kv_heads) * l.head_dim for l in plan.layers)
        context_width = max(l.heads * l.head_dim for l in plan.layers)
        gu_width = _off_4k(max(2 * l.intermediate for l in plan.layers))
        qkv, ctx, gu = scratch(qkv_width), scratch(context_width), scratch(gu_width)
        for layer in plan.layers:
            qkv = parts(layer.qkv, "norm", x, hidden, qkv, qkv_width, norm=layer.attn_norm, eps=layer.eps[0])
            if prefill:
                aspec = PrefillAttentionSpec(isa, layer.heads, layer.kv_heads, layer.head_dim, plan.slots, m,
                                             plan.cache_len, layer.scale, layer.rope, qkv_width=qkv_width,
                                             context_width=context_width)
                attention = module.kernel(aspec.name, lambda: build_attention_prefill(aspec))
                args, index = [qkv, rope, position, length, cache, i64(layer.k_cache), i64(layer.v_cache)], 4
            else:
                aspec = AttentionSpec(isa, layer.heads, layer.kv_heads, layer.head_dim, plan.slots, qkv_width,
                                      plan.cache_len, layer.scale, layer.rope, context_width)
                attention = module.kernel(aspec.name, lambda: build_attention_decode(aspec))
                args, index = [qkv, rope, position, cache, i64(layer.k_cache), i64(layer.v_cache)], 3
            result = bb.emit(relax.call_tir_inplace(
                attention, args + [ctx], [index, len(args)], [relax.TensorType((plan.cache_len,), "float32"),
                                                              relax.TensorType((m * context_width,), "float32")]))
            cache = bb.emit(relax.TupleGetItem(result, 0))
            ctx = bb.emit(relax.TupleGetItem(result, 1))
            x = linear(layer.o, "plain", ctx, context_width, x, hidden, accumulate=True)
            gu = parts(layer.gate_up, "norm", x, hidden, gu, gu_width, norm=layer.mlp_norm, eps=layer.eps[1])
            x = linear(layer.down, "swiglu", gu, gu_width, x, hidden, accumulate=True)
        if prefill:  # only the last prompt token's logits are wanted
            select = module.kernel(f"select_row_{m}x{hidden}", lambda: build_select_row(m, hidden))
            x = bb.emit(relax.call_tir(select, [x, length], relax.TensorType((hidden,), "float32")))
        logits = linear(plan.lm_head, "norm", x, hidden, None, vocab, accumulate=False, norm=plan.final_norm,
                        eps=spec.final_norm.eps, rows=1)
        bb.emit_func_output(logits)
    return bb.get(), dict(sorted(module.weight_bytes.items()))


def _off_4k(width: int) -> int:
    """A scratch row width whose stride is not a multiple of 4 KB: rows 4 KB apart share L1
    cache sets, and the prefill GEMM writing 128 such rows (gate|up of SmolLM2, 3072 fp32)
    ran 1.8x slower than at 3088."""
    return width + 16 if (width * 4) % 4096 == 0 else width


def relax_pipeline():
    """Lowering for a module that is only calls of scheduled kernels (nothing to legalize or fuse)."""
    import tvm
    from tvm.relax import transform as rt

    return tvm.transform.Sequential([
        rt.ToNonDataflow(), rt.RemovePurityChecking(),
        rt.CallTIRRewrite(), rt.StaticPlanBlockMemory(), rt.LowerAllocTensor(), rt.KillAfterLastUse(),
        rt.LowerRuntimeBuiltin(), rt.ComputePrimValue(), rt.VMShapeLower(), rt.AttachGlobalSymbol()])
