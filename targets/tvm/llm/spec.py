"""Read a Llama-family causal LM out of its ONNX graph: `DecoderSpec`.

The LLM path compiles a decoder from a description, not from the graph's thousands of
small ops: token embedding, per layer (RMSNorm -> q/k/v -> RoPE -> GQA attention -> o,
residual; RMSNorm -> gate/up -> SiLU*up -> down, residual), final RMSNorm, lm_head.
Everything comes from the graph itself, found by the same analysis the passes use
(attention and FFN groups by node name) plus the norms and RoPE around them, so a
model after fold / slice / quantize (other widths per layer, fewer kv heads, low-bit
weights) reads the same way. Weights stay as stored (`StoredWeight`).

A graph that does not have this shape raises `Unsupported`; the caller then compiles the
generic way. The description is checked numerically against onnxruntime before it is
used (`reference.check_against_onnxruntime`), so a misread graph cannot produce a
library that silently computes something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgefold.targets.tvm.llm.stored_weight import StoredWeight, Unsupported, read_weight

__all__ = ["AttentionSpec", "DecoderSpec", "LayerSpec", "Linear", "MlpSpec", "RmsNorm", "Unsupported",
           "extract_decoder"]


@dataclass
class RmsNorm:
    """An RMSNorm: its float32 weight [hidden] and eps."""

    weight: np.ndarray  # float32 [hidden]
    eps: float


@dataclass
class Linear:
    """A linear layer: its stored weight [out, in] and optional float32 bias."""

    weight: StoredWeight  # [out, in]
    bias: np.ndarray | None = None  # float32 [out]


@dataclass
class AttentionSpec:
    """One layer's attention: q/k/v/o linears, head counts, head size, score scale, RoPE or not."""

    q: Linear
    k: Linear
    v: Linear
    o: Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float  # applied to q.k
    rope: bool


@dataclass
class MlpSpec:
    """One layer's SwiGLU MLP: gate, up and down linears."""

    gate: Linear
    up: Linear
    down: Linear

    @property
    def intermediate(self) -> int:
        """Width of the MLP's hidden layer (the down projection's input)."""
        return self.down.weight.k


@dataclass
class LayerSpec:
    """One decoder layer: attention and MLP, each with the RMSNorm before it."""

    attn_norm: RmsNorm
    attention: AttentionSpec
    mlp_norm: RmsNorm
    mlp: MlpSpec


@dataclass
class DecoderSpec:
    """A Llama-family decoder as read from its graph: embedding, layers, final norm, lm_head, RoPE."""

    name: str
    vocab: int
    hidden: int
    embedding: StoredWeight  # [vocab, hidden]
    layers: list[LayerSpec]
    final_norm: RmsNorm
    lm_head: Linear  # [vocab, hidden]
    tied: bool  # lm_head reads the embedding's own bytes
    inv_freq: np.ndarray  # float32 [head_dim / 2]
    notes: list[str] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        """Size of one attention head (from the first layer)."""
        return self.layers[0].attention.head_dim

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (the tied table counted once)."""
        total = self.embedding.stored_bytes() if self.tied else self.lm_head.weight.stored_bytes()
        for layer in self.layers:
            a, m = layer.attention, layer.mlp
            total += sum(lin.weight.stored_bytes() for lin in (a.q, a.k, a.v, a.o, m.gate, m.up, m.down))
        return total


# ---------------------------------------------------------------- graph walking


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        attribute = producer.attributes.get("value")
        return attribute.value.numpy() if attribute is not None else None
    return None


def _scalar(value: ir.Value | None) -> float | None:
    array = _const_array(value)
    return float(array.reshape(())) if array is not None and array.size == 1 else None


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


def _rms_norm(normed: ir.Value) -> tuple[RmsNorm, ir.Value]:
    """`normed` = w * (x * rsqrt(mean(x^2) + eps)) (either operand order, Div by Sqrt too);
    returns the norm and x (the residual stream value it normalizes)."""
    outer = normed.producer()
    if outer is None or outer.op_type != "Mul":
        raise Unsupported(f"{normed.name} is not a norm's output")
    weight, inner_value = None, None
    for operand in outer.inputs:
        array = _const_array(operand)
        if array is not None and array.ndim == 1:
            weight = array.astype(np.float32)
        else:
            inner_value = operand
    inner = inner_value.producer() if inner_value is not None else None
    if weight is None or inner is None or inner.op_type not in ("Mul", "Div"):
        raise Unsupported(f"{normed.name}: no RMSNorm (weight * x * rsqrt(...))")
    for x in inner.inputs:
        other = _other(inner, x)
        eps = _rsqrt_eps(other, x, divide=inner.op_type == "Div")
        if eps is not None:
            return RmsNorm(weight, eps), x
    raise Unsupported(f"{normed.name}: no mean(x^2) + eps under the norm")


def _rsqrt_eps(value: ir.Value | None, x: ir.Value, *, divide: bool) -> float | None:
    """eps if `value` is 1/sqrt(mean(x^2) + eps) (or sqrt(...) when `divide`)."""
    node = value.producer() if value is not None else None
    if node is None:
        return None
    if not divide:  # x * (1 / sqrt(...))
        if node.op_type == "Reciprocal":
            node = node.inputs[0].producer()
        elif node.op_type == "Div" and _scalar(node.inputs[0]) == 1.0:
            node = node.inputs[1].producer()
        else:
            return None
    if node is None or node.op_type != "Sqrt":
        return None
    add = node.inputs[0].producer()
    if add is None or add.op_type != "Add":
        return None
    for operand in add.inputs:
        eps = _scalar(operand)
        mean = _other(add, operand).producer() if eps is not None else None
        if mean is not None and mean.op_type == "ReduceMean":
            power = mean.inputs[0].producer()
            if power is not None and power.inputs[0] is x and (
                    (power.op_type == "Pow" and _scalar(power.inputs[1]) == 2.0)
                    or (power.op_type == "Mul" and power.inputs[1] is x)):
                return eps
    return None


def _scale_on_path(value: ir.Value, stop: ir.Value | None = None, hops: int = 8) -> float:
    """Product of constant scalar Mul/Div factors on the way back from `value` (through
    reshapes and transposes), up to `stop` or the first other op."""
    factor = 1.0
    for _ in range(hops):
        node = value.producer()
        if node is None or value is stop:
            break
        if node.op_type in ("Mul", "Div"):
            constants = [(_scalar(v), v) for v in node.inputs]
            found = [(c, v) for c, v in constants if c is not None]
            if len(found) != 1:
                break
            c, operand = found[0]
            if node.op_type == "Div":
                if operand is not node.inputs[1]:
                    break
                c = 1.0 / c
            factor *= c
            value = _other(node, operand)
            continue
        if node.op_type in ("Reshape", "Transpose", "Expand", "Unsqueeze", "Squeeze", "Identity", "Cast"):
            value = node.inputs[0]
            continue
        break
    return factor


def _node(graph: ir.Graph, name: str) -> ir.Node:
    for node in graph:
        if node.name == name:
            return node
    raise Unsupported(f"node {name} named by the analysis is not in the graph")


def _linear(graph: ir.Graph, node_name: str, side_codes) -> tuple[Linear, ir.Node]:
    node = _node(graph, node_name)
    if node.op_type != "MatMul":
        raise Unsupported(f"{node_name} is a {node.op_type}, not a MatMul")
    weight = read_weight(node.inputs[1], "matmul", side_codes)
    bias = None
    users = [u.node for u in node.outputs[0].uses()]
    if len(users) == 1 and users[0].op_type == "Add":
        array = _const_array(_other(users[0], node.outputs[0]))
        if array is not None and array.ndim == 1 and array.size == weight.n:
            bias = array.astype(np.float32)
    return Linear(weight, bias), node


def _rope_inv_freq(graph: ir.Graph) -> np.ndarray:
    from edgefold.targets.tvm.kv_cache import rope_angles  # the same RoPE the KV-cache rewrite reads
    from edgefold.errors import EdgefoldError

    try:
        matmul = rope_angles(graph)
    except EdgefoldError as error:
        raise Unsupported(str(error)) from None
    cos = [n for n in graph if n.op_type == "Cos"][0]
    for user in cos.outputs[0].uses():  # an attention factor on cos/sin is not modelled
        if user.node.op_type == "Mul" and _scalar(_other(user.node, cos.outputs[0])) is not None:
            raise Unsupported("RoPE with a scaled cos/sin")
    angles = cos.inputs[0].producer()
    if angles is None or angles.op_type != "Concat" or len(angles.inputs) != 2 or angles.inputs[0] is not angles.inputs[1]:
        raise Unsupported("RoPE angles are not cat(freqs, freqs)")
    return np.asarray(matmul.inputs[0].const_value.numpy(), np.float32).reshape(-1)


# ---------------------------------------------------------------- extraction


def extract_decoder(model_path: Path) -> DecoderSpec:
    """The decoder description of a causal LM's ONNX file; raises Unsupported otherwise."""
    from edgefold import onnx_io
    from edgefold.analysis import analyse
    from edgefold.targets.tvm.kv_cache import analysable_copy
    from edgefold.targets.tvm.lowbit import collapse_decoders

    model = onnx_io.load(model_path)
    graph = model.graph
    if [v.name for v in graph.inputs] != ["input_ids"] or not graph.outputs or graph.outputs[0].name != "logits":
        raise Unsupported("expected a causal LM with input input_ids and output logits")
    analysis = analyse(analysable_copy(model_path))
    side_codes: dict = {}
    collapse_decoders(model, side_codes)
    graph = model.graph
    if len(analysis.attentions) != len(analysis.ffns) or not analysis.attentions:
        raise Unsupported(f"{len(analysis.attentions)} attention blocks but {len(analysis.ffns)} MLPs")
    if any(f.kind != "gated" or f.activation not in ("silu", "swish") for f in analysis.ffns):
        raise Unsupported("only gated SiLU MLPs (SwiGLU) are supported")

    # Embedding: the Gather that reads input_ids.
    gathers = [n for n in graph if n.op_type == "Gather" and n.inputs[1] is graph.inputs[0]]
    if len(gathers) != 1 or gathers[0].attributes.get_int("axis", 0) != 0:
        raise Unsupported("no single embedding Gather on input_ids")
    embedding = read_weight(gathers[0].inputs[0], "table", side_codes)

    inv_freq = _rope_inv_freq(graph)
    layers: list[LayerSpec] = []
    for attention, ffn in zip(analysis.attentions, analysis.ffns):
        q, q_node = _linear(graph, attention.q.node, side_codes)
        k, _ = _linear(graph, attention.k.node, side_codes)
        v, _ = _linear(graph, attention.v.node, side_codes)
        o, o_node = _linear(graph, attention.o.node, side_codes)
        attn_norm, _ = _rms_norm(q_node.inputs[0])
        gate, gate_node = _linear(graph, ffn.gate.node, side_codes)
        up, _ = _linear(graph, ffn.up.node, side_codes)
        down, _ = _linear(graph, ffn.down.node, side_codes)
        mlp_norm, _ = _rms_norm(gate_node.inputs[0])
        if attention.num_kv_heads and attention.num_heads % attention.num_kv_heads:
            raise Unsupported(f"{attention.name}: heads do not split over kv heads")
        if attention.num_kv_heads != attention.num_heads and attention.kv_repeat != "interleave":
            raise Unsupported(f"{attention.name}: kv repeat {attention.kv_repeat}")
        if attention.v_head_dim and attention.v_head_dim != attention.head_dim:
            raise Unsupported(f"{attention.name}: v head size differs from q/k")
        scores = _node(graph, attention.scores_matmul)
        softmax = _node(graph, attention.softmax)
        from edgefold.targets.tvm.kv_cache import score_scale_and_softmax_check
        from edgefold.errors import EdgefoldError

        try:
            score_scale = score_scale_and_softmax_check(scores, softmax)
        except EdgefoldError as error:
            raise Unsupported(str(error)) from None
        scale = _scale_on_path(scores.inputs[0]) * _scale_on_path(scores.inputs[1]) * score_scale
        if attention.rope and inv_freq.size * 2 != attention.head_dim:
            raise Unsupported(f"{attention.name}: RoPE over part of the head")
        layers.append(LayerSpec(attn_norm, AttentionSpec(q, k, v, o, attention.num_heads, attention.num_kv_heads,
                                                         attention.head_dim, scale, attention.rope),
                                mlp_norm, MlpSpec(gate, up, down)))

    logits = graph.outputs[0].producer()
    if logits is None or logits.op_type != "MatMul":
        raise Unsupported("logits are not a MatMul")
    lm_head = Linear(read_weight(logits.inputs[1], "matmul", side_codes))
    final_norm, _ = _rms_norm(logits.inputs[0])
    hidden = embedding.k
    tied = lm_head.weight.name == embedding.name and _same_bytes(lm_head.weight, embedding)
    name = onnx_io.metadata(model_path).get("edgefold.model", Path(model_path).parent.name)
    spec = DecoderSpec(name, embedding.n, hidden, embedding, layers, final_norm, lm_head, tied, inv_freq)
    _check_shapes(spec)
    return spec


def _same_bytes(a: StoredWeight, b: StoredWeight) -> bool:
    if (a.kind, a.n, a.k, a.bits, a.block) != (b.kind, b.n, b.k, b.bits, b.block):
        return False
    return np.array_equal(a.data, b.data)


def _check_shapes(spec: DecoderSpec) -> None:
    h = spec.hidden
    for index, layer in enumerate(spec.layers):
        a, m = layer.attention, layer.mlp
        d = a.head_dim
        expected = {"q": (a.num_heads * d, h), "k": (a.num_kv_heads * d, h), "v": (a.num_kv_heads * d, h),
                    "o": (h, a.num_heads * d), "gate": (m.up.weight.n, h), "up": (m.up.weight.n, h),
                    "down": (h, m.up.weight.n)}
        got = {"q": a.q, "k": a.k, "v": a.v, "o": a.o, "gate": m.gate, "up": m.up, "down": m.down}
        for key, shape in expected.items():
            w = got[key].weight
            if (w.n, w.k) != shape:
                raise Unsupported(f"layer {index} {key}: weight {w.n}x{w.k}, expected {shape[0]}x{shape[1]}")
        if layer.attn_norm.weight.size != h or layer.mlp_norm.weight.size != h:
            raise Unsupported(f"layer {index}: norm width differs from hidden {h}")
    if (spec.lm_head.weight.n, spec.lm_head.weight.k) != (spec.vocab, h):
        raise Unsupported("lm_head shape differs from the embedding's")
