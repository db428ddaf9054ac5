"""Turn an exported full-sequence causal LM into a one-token decode graph with a
fixed-size KV cache.

The exported SmolLM2/Llama-style graph (torch.onnx dynamo export, opset 21) computes
logits for a whole sequence from `input_ids` alone: position ids are `Range(0, seq)`,
the causal mask is built from them, and RoPE cos/sin come from
`MatMul(inv_freq[1, d/2, 1], Cast(position_ids[b, 1, s]))`. `make_decode_graph` rewrites
it into a graph that takes one token at a time:

    inputs : input_ids int64 [1, 1], position int64 [1] (tokens already cached),
             past_key_{l}, past_value_{l} float32 [1, kv_heads, cache_len, head_dim]
    outputs: logits [1, 1, vocab],
             present_key_{l}, present_value_{l} (same fixed shape as the pasts)

Patterns matched (all anchored on `edgefold.analysis` attention groups, which give the
q/k/v/o linears, the scores MatMul, the Softmax and the context MatMul per layer):

* RoPE angles: the single `Cos` and `Sin` read the same value, produced by
  `[Concat]` / `[Transpose]` from a `MatMul` with exactly one constant input (inv_freq,
  [1, d/2, 1]). The MatMul's other input (float position ids, [b, 1, s]) is replaced by
  `Cast(Reshape(position, [1, 1, 1]), float)`, so every layer's RoPE uses `position`.
* Per layer, k and v heads: `linear -> Reshape -> Transpose(perm 0,2,1,3)`; for k the
  RoPE output is the `Add` fed by a `Mul(k_heads, cos)` (checked: the Add's other
  operand is a Mul too). v has no RoPE.
* Per layer, the scores: `scores MatMul(q_scaled, k_rep_scaled_T)`, optional `Mul`/`Div`
  by constants, `Add(mask)`, `Softmax`. q_scaled (input 0, already RoPE'd and scaled)
  is kept; the constant scale applied to k on the way to input 1 (a `Mul` by a scalar
  constant, the exporter's sqrt-split of 1/sqrt(d)) and any constant scale on the
  scores are read and re-applied.
* The whole span from k/v heads to the context MatMul output (repeat_kv via
  Unsqueeze/Expand/Reshape, Transpose, mask Add, Softmax, IsNaN guard, context MatMul)
  is replaced by a new one over the cache:
      present = Where(slot == position, new, past)              [1, kv, L, d]
      rep     = Reshape(Expand(Reshape(present, [1,kv,1,L,d]), [1,kv,g,L,d]), [1,h,L,d])
      scores  = MatMul(q_scaled, Transpose(rep_k) * k_scale) * score_scale + bias
      bias    = 0 where slot <= position else float32 min        [1, 1, 1, L]
      context = MatMul(Softmax(scores), rep_v)                    [1, h, 1, d]
  (kv repeat "interleave", i.e. kv head j serves query heads j*g..j*g+g-1, or "none").

`position` must be in 0..cache_len-1: the new token goes to slot `position`. At
position == cache_len (cache full) nothing is written and the new token does not attend
to itself, so the logits are wrong; the runtime must stop (or evict) before that.
Measured on SmolLM2-135M, cache_len=32, 24 Wikipedia tokens fed one by one against the
full-sequence graph (tests/targets/test_kv_cache.py): max abs logit error 9.9e-05,
argmax agreement 24/24.

Then input shapes are pinned and the shape arithmetic folded (`static_graph.make_static`),
and the dead full-sequence mask / position-id nodes are removed.

Not supported (raises EdgefoldError): graphs without the attention groups above, fused
attention ops, RoPE computed another way (e.g. cos/sin caches gathered by position ids),
graphs that need an attention_mask/position_ids input, k/v repeat layouts other than
interleave, and a batch other than 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgefold import onnx_io
from edgefold.errors import EdgefoldError

_PREFIX = "kvc"


class _Builder:
    """Appends nodes and initializers to a graph with unique `kvc_*` names."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{_PREFIX}_{hint}_{self.count}"

    def const(self, array: np.ndarray, hint: str = "const") -> ir.Value:
        name = self._name(hint)
        value = ir.Value(name=name, const_value=ir.tensor(np.asarray(array), name=name))
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs, attributes=None, hint: str | None = None) -> ir.Value:
        name = self._name(hint or op_type.lower())
        node = ir.node(op_type, list(inputs), attributes or {}, name=name)
        node.outputs[0].name = name
        self.graph.append(node)
        return node.outputs[0]


def _node(graph: ir.Graph, name: str) -> ir.Node:
    for node in graph:
        if node.name == name:
            return node
    raise EdgefoldError(f"kv-cache: node {name} named by the analysis is not in the graph")


def _scalar_const(value: ir.Value | None) -> float | None:
    tensor = value.const_value if value is not None else None
    if tensor is None and value is not None and value.producer() is not None and value.producer().op_type == "Constant":
        attr = value.producer().attributes.get("value")
        tensor = attr.value if attr is not None else None
    if tensor is None:
        return None
    array = tensor.numpy()
    if array.size != 1:
        return None
    return float(array.reshape(()))


def _single_consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    users = [node for node in value.consumers() if node.op_type == op_type]
    return users[0] if len(users) == 1 else None


def _heads(graph: ir.Graph, linear_name: str, what: str) -> ir.Value:
    """linear -> Reshape -> Transpose(0,2,1,3): the per-head [b, heads, s, d] value."""
    linear = _node(graph, linear_name)
    reshape = _single_consumer(linear.outputs[0], "Reshape")
    transpose = _single_consumer(reshape.outputs[0], "Transpose") if reshape is not None else None
    if transpose is None or list(transpose.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        raise EdgefoldError(f"kv-cache: {what} projection {linear_name} is not followed by Reshape -> Transpose(0,2,1,3)")
    return transpose.outputs[0]


def _reads(value: ir.Value | None, source: ir.Value, hops: int = 3) -> bool:
    """`value` is `source`, or comes from it through at most `hops` single-input-path nodes."""
    for _ in range(hops + 1):
        if value is None:
            return False
        if value is source:
            return True
        producer = value.producer()
        if producer is None or producer.op_type not in ("Unsqueeze", "Reshape", "Cast", "Expand"):
            return False
        value = producer.inputs[0]
    return False


def _rope_output(heads: ir.Value, cos: ir.Value, what: str) -> ir.Value:
    """The Add of `heads * cos + rotate_half(heads) * sin` that reads `heads`."""
    for mul in heads.consumers():
        if mul.op_type != "Mul" or not any(_reads(v, cos) for v in mul.inputs if v is not heads):
            continue
        add = _single_consumer(mul.outputs[0], "Add")
        if add is None:
            continue
        other = add.inputs[1] if add.inputs[0] is mul.outputs[0] else add.inputs[0]
        if other is not None and other.producer() is not None and other.producer().op_type == "Mul":
            return add.outputs[0]
    raise EdgefoldError(f"kv-cache: no RoPE (x*cos + rotate_half(x)*sin) found on the {what} heads")


def _k_scale(scores_matmul: ir.Node) -> float:
    """The constant multiplying the repeated, transposed k on its way to the scores."""
    producer = scores_matmul.inputs[1].producer()
    if producer is not None and producer.op_type == "Mul":
        for operand in producer.inputs:
            scale = _scalar_const(operand)
            if scale is not None:
                return scale
    if producer is not None and producer.op_type == "Div":
        scale = _scalar_const(producer.inputs[1])
        if scale is not None:
            return 1.0 / scale
    return 1.0


def score_scale_and_softmax_check(scores_matmul: ir.Node, softmax: ir.Node) -> float:
    """Constant Mul/Div between the scores MatMul and the mask Add; the Add feeds the Softmax."""
    scale = 1.0
    value = scores_matmul.outputs[0]
    for _ in range(4):
        users = list(value.consumers())
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in ("Mul", "Div"):
            other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
            constant = _scalar_const(other)
            if constant is None:
                break
            scale *= constant if node.op_type == "Mul" else 1.0 / constant
            value = node.outputs[0]
            continue
        if node.op_type == "Add":
            if node.outputs[0] is softmax.inputs[0]:
                return scale
            break
        if node is softmax:
            return scale
        break
    raise EdgefoldError(f"kv-cache: scores {scores_matmul.name} do not reach Softmax {softmax.name} via [scale] -> Add(mask)")


def rope_angles(graph: ir.Graph) -> ir.Node:
    """The MatMul(inv_freq, position_ids) whose output the single Cos and Sin read."""
    cos = [node for node in graph if node.op_type == "Cos"]
    sin = [node for node in graph if node.op_type == "Sin"]
    if len(cos) != 1 or len(sin) != 1 or cos[0].inputs[0] is not sin[0].inputs[0]:
        raise EdgefoldError("kv-cache: expected one Cos and one Sin of the same RoPE angles")
    value = cos[0].inputs[0]
    for _ in range(4):
        producer = value.producer()
        if producer is None:
            break
        if producer.op_type == "MatMul":
            constant = [v for v in producer.inputs if v is not None and v.const_value is not None]
            if len(constant) == 1 and constant[0] is producer.inputs[0]:
                shape = constant[0].const_value.shape
                if len(shape) == 3 and shape[0] == 1 and shape[2] == 1:
                    return producer
            break
        if producer.op_type not in ("Concat", "Transpose"):
            break
        value = producer.inputs[0]
    raise EdgefoldError("kv-cache: RoPE angles are not MatMul(inv_freq[1, d/2, 1], positions[b, 1, s])")


def analysable_copy(model_path: Path) -> ir.Model:
    """A copy of the model that graph analysis can read when weights are stored low-bit.

    Analysis recognises linears by an initializer weight. After the quantize pass a
    MatMul reads `DequantizeLinear(...)` (possibly with Reshape/Add/Transpose/Cast
    around it) instead, or is onnxruntime's `MatMulNBits`; here every such weight
    computed from constants alone is replaced by a zero initializer of its shape (and a
    MatMulNBits by a MatMul of the same name). Analysis only reports node names, which
    are the same in the real graph, so the rewrite then acts on the real (low-bit) graph.
    """
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx_io.load_proto(model_path))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
    model = onnx_io.load(model_path)
    constant: dict[int, bool] = {}

    def from_constants(value: ir.Value) -> bool:
        if value.is_initializer() or value.const_value is not None:
            return True
        node = value.producer()
        if node is None:
            return False
        if id(value) not in constant:
            constant[id(value)] = all(v is None or from_constants(v) for v in node.inputs)
        return constant[id(value)]

    for node in list(model.graph):
        if node.op_type == "MatMulNBits":  # onnxruntime's 4-bit linear: a plain MatMul of the same name
            k, n = node.attributes.get_int("K"), node.attributes.get_int("N")
            zeros = ir.Value(name=f"{node.name}__analysis_weight", shape=ir.Shape([k, n]),
                             type=ir.TensorType(ir.DataType.FLOAT),
                             const_value=ir.Tensor(np.zeros((k, n), np.float32), name=f"{node.name}__analysis_weight"))
            model.graph.register_initializer(zeros)
            name = node.name
            node.name = f"{name}__replaced"
            matmul = ir.node("MatMul", [node.inputs[0], zeros], name=name)
            model.graph.insert_before(node, matmul)
            ir.convenience.replace_all_uses_with(node.outputs[0], matmul.outputs[0])
            model.graph.remove(node, safe=True)
            continue
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        weight = node.inputs[1]
        shape = shapes.get(weight.name)
        if weight.producer() is None or not shape or 0 in shape or not from_constants(weight):
            continue
        stand_in = ir.Value(name=f"{weight.name}__analysis", shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                            const_value=ir.Tensor(np.zeros(shape, np.float32), name=f"{weight.name}__analysis"))
        model.graph.register_initializer(stand_in)
        node.replace_input_with(1, stand_in)
    return model


def make_decode_graph(model_path: Path, out_path: Path, cache_len: int) -> dict:
    """Write a one-token decode graph with a fixed `cache_len` KV cache; returns stats."""
    from edgefold.analysis import analyse
    from edgefold.targets.tvm.static_graph import make_static

    if cache_len < 1:
        raise EdgefoldError(f"kv-cache: cache_len must be >= 1 (got {cache_len})")
    model = onnx_io.load(model_path)
    graph = model.graph
    names = [value.name for value in graph.inputs]
    if names != ["input_ids"]:
        raise EdgefoldError(f"kv-cache: expected a causal LM with the single input input_ids (inputs: {names})")
    if not graph.outputs or graph.outputs[0].name != "logits":
        raise EdgefoldError("kv-cache: expected the causal LM's first output to be logits")
    attentions = analyse(analysable_copy(model_path)).attentions
    if not attentions:
        raise EdgefoldError("kv-cache: no attention blocks found; not a supported causal LM")

    b = _Builder(graph)
    length = cache_len
    # Shared: position, RoPE angles, slot one-hot, score bias.
    position = ir.Value(name="position", shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.INT64))
    graph.inputs.append(position)
    angles = rope_angles(graph)
    float_position = b.op("Cast", [b.op("Reshape", [position, b.const(np.array([1, 1, 1], np.int64))])],
                          {"to": ir.DataType.FLOAT}, hint="position_f")
    angles.replace_input_with(1, float_position)
    slots = b.const(np.arange(length, dtype=np.int64).reshape(1, 1, length, 1), "slots")
    write = b.op("Equal", [slots, position], hint="write_slot")  # [1, 1, L, 1]
    visible = b.op("LessOrEqual", [b.const(np.arange(length, dtype=np.int64).reshape(1, 1, 1, length), "slots_row"), position])
    bias = b.op("Where", [visible, b.const(np.array(0.0, np.float32)), b.const(np.array(np.finfo(np.float32).min, np.float32))],
                hint="score_bias")  # [1, 1, 1, L]

    cos_node = next(node for node in graph if node.op_type == "Cos")
    new_outputs: list[ir.Value] = []
    present_shapes: list[list[int]] = []
    for index, group in enumerate(attentions):
        heads, kv, dim = group.num_heads, group.num_kv_heads, group.head_dim
        vdim = group.v_head_dim or dim
        if heads % kv:
            raise EdgefoldError(f"kv-cache: {group.name}: {heads} heads do not split over {kv} kv heads")
        if kv != heads and group.kv_repeat != "interleave":
            raise EdgefoldError(f"kv-cache: {group.name}: kv repeat '{group.kv_repeat}' is not supported")
        if not (group.scores_matmul and group.softmax and group.context_matmul):
            raise EdgefoldError(f"kv-cache: {group.name}: no explicit scores MatMul / Softmax / context MatMul")
        scores_mm = _node(graph, group.scores_matmul)
        softmax = _node(graph, group.softmax)
        context_mm = _node(graph, group.context_matmul)
        k_new = _heads(graph, group.k.node, "k")
        if group.rope:
            k_new = _rope_output(k_new, cos_node.outputs[0], "k")
        v_new = _heads(graph, group.v.node, "v")
        k_scale = _k_scale(scores_mm)
        score_scale = score_scale_and_softmax_check(scores_mm, softmax)
        q_scaled = scores_mm.inputs[0]
        axis = softmax.attributes.get_int("axis", -1)
        if axis not in (-1, 3):
            raise EdgefoldError(f"kv-cache: {group.name}: Softmax over axis {axis}, expected the last")

        caches = []
        for kind, new, width in (("key", k_new, dim), ("value", v_new, vdim)):
            past = ir.Value(name=f"past_{kind}_{index}", shape=ir.Shape([1, kv, length, width]),
                            type=ir.TensorType(ir.DataType.FLOAT))
            graph.inputs.append(past)
            present = b.op("Where", [write, new, past], hint=f"present_{kind}")
            present.name = f"present_{kind}_{index}"
            present.shape = ir.Shape([1, kv, length, width])
            present.type = ir.TensorType(ir.DataType.FLOAT)
            new_outputs.append(present)
            present_shapes.append([1, kv, length, width])
            full = present
            if kv != heads:
                group_size = heads // kv
                full = b.op("Reshape", [present, b.const(np.array([1, kv, 1, length, width], np.int64))])
                full = b.op("Expand", [full, b.const(np.array([1, kv, group_size, length, width], np.int64))])
                full = b.op("Reshape", [full, b.const(np.array([1, heads, length, width], np.int64))])
            caches.append(full)
        k_full, v_full = caches
        k_t = b.op("Transpose", [k_full], {"perm": [0, 1, 3, 2]})
        if k_scale != 1.0:
            k_t = b.op("Mul", [k_t, b.const(np.array(k_scale, np.float32))])
        scores = b.op("MatMul", [q_scaled, k_t], hint="scores")
        if score_scale != 1.0:
            scores = b.op("Mul", [scores, b.const(np.array(score_scale, np.float32))])
        probs = b.op("Softmax", [b.op("Add", [scores, bias])], {"axis": -1})
        context = b.op("MatMul", [probs, v_full], hint="context")
        context_mm.outputs[0].replace_all_uses_with(context)

    for value in new_outputs:
        graph.outputs.append(value)
    graph.sort()
    common_passes.RemoveUnusedNodesPass()(model)
    shapes = {"input_ids": (1, 1), "position": (1,)}
    vocab = graph.outputs[0].shape[-1] if graph.outputs[0].shape is not None else None
    make_static(model, shapes)  # resets output shapes: set the known cache shapes again
    for value, shape in zip(new_outputs, present_shapes):
        value.shape = ir.Shape(shape)
        value.type = ir.TensorType(ir.DataType.FLOAT)
    logits = graph.outputs[0]
    if isinstance(vocab, int) and (logits.shape is None or not all(isinstance(d, int) for d in logits.shape)):
        logits.shape = ir.Shape([1, 1, vocab])  # contrib ops (MatMulNBits) have no ONNX shape inference
    common_passes.RemoveUnusedNodesPass()(model)
    dynamic = [v.name for v in list(graph.inputs) + list(graph.outputs)
               if v.shape is None or any(not isinstance(d, int) for d in v.shape)]
    if dynamic:
        raise EdgefoldError(f"kv-cache: shapes stayed dynamic after the rewrite: {', '.join(dynamic[:4])}")
    onnx_io.save(model, out_path)
    return {"layers_rewritten": len(attentions), "cache_len": cache_len,
            "num_kv_heads": attentions[0].num_kv_heads, "head_dim": attentions[0].head_dim,
            "nodes": len(graph)}
