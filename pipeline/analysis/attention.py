"""Find attention blocks from their Softmax, GQA-aware.

The exporter decomposes SDPA into MatMul(Q*s, K^T*s) (+mask) -> Softmax -> MatMul(P, V),
with K^T written as Reshape/Transpose/Reshape and repeat_kv as Unsqueeze/Expand/Reshape.
From each Softmax we find the two MatMuls, walk their operands back through
head-shaping ops (Reshape, Transpose, RoPE's Slice/Neg/Concat/Mul/Add, scalar scaling,
repeat_kv) to exactly one q, k and v projection, and forward from P@V through
Transpose/Reshape to the output projection. Head counts come from shapes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

import onnx_ir as ir

from edgefold.analysis.graph_index import GraphIndex
from edgefold.analysis.groups import AttentionGroup, LinearRef
from edgefold.analysis.linear import Linears

# Between the scores MatMul and Softmax: mask add, scaling, soft-capping, dtype casts.
SCORE_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Tanh", "Identity"}
# Between Softmax and the P@V MatMul: the exporter's IsNaN guard (Where), casts, dropout.
PROB_OPS = {"Where", "Cast", "Dropout", "Identity"}
# Head-shaping ops walked on their data input only (other inputs are shapes/indices).
HEAD_DATA_OPS = {"Reshape", "Unsqueeze", "Squeeze", "Expand", "Tile", "Slice", "Flatten"}
# Head-shaping ops whose every input may carry q/k/v (RoPE mixes rotated halves).
HEAD_MIX_OPS = {"Transpose", "Neg", "Concat", "Mul", "Add", "Sub", "Div", "Cast", "Identity"}
# From P@V to the output projection: merging heads back.
MERGE_OPS = {"Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten"}

MAX_WALK_NODES = 96


def find_attentions(ix: GraphIndex, linears: Linears) -> tuple[list[AttentionGroup], list[str]]:
    """Attention blocks found from each Softmax, plus notes on Softmaxes that did not resolve to one."""
    groups: list[AttentionGroup] = []
    notes: list[str] = []
    claimed: set[str] = set()
    for node in ix.nodes:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        result = _attention_at(ix, linears, node, len(groups), claimed)
        if isinstance(result, AttentionGroup):
            groups.append(result)
            claimed.update(r.node for r in (result.q, result.k, result.v, result.o))
        elif result:
            notes.append(result)
    return groups, notes


def _attention_at(
    ix: GraphIndex, linears: Linears, softmax: ir.Node, index: int, claimed: set[str]
) -> AttentionGroup | str | None:
    scores = _scores_matmul(ix, linears, softmax)
    if scores is None:
        return None  # a classifier softmax or similar: not attention
    where = f"attention at {softmax.name} ({ix.label(softmax)})"
    context = _context_matmul(ix, softmax)
    if context is None:
        return f"{where}: left as is — no probs@V MatMul after the Softmax"

    q_refs, q_nodes, q_ops = _trace_back(ix, linears, scores.inputs[0])
    k_refs, k_nodes, k_ops = _trace_back(ix, linears, scores.inputs[1])
    v_refs, v_nodes, v_ops = _trace_back(ix, linears, context.inputs[1])
    for role, refs in (("q", q_refs), ("k", k_refs), ("v", v_refs)):
        if len(refs) != 1:
            found = ", ".join(r.node for r in refs) or "none"
            return f"{where}: left as is — expected one {role} projection, found {found}"
    q, k, v = q_refs[0], k_refs[0], v_refs[0]
    if len({q.node, k.node, v.node}) != 3:
        shared = q.node if q.node in (k.node, v.node) else k.node
        return f"{where}: left as is — q/k/v share projection {shared} (fused QKV is not split here)"
    o, merge_nodes = _output_projection(ix, linears, context)
    if o is None:
        return f"{where}: left as is — no output projection found after {context.name}"
    for ref in (q, k, v, o):
        if ref.node in claimed:
            return f"{where}: left as is — {ref.node} already belongs to another attention block"
        if ref.weight_shared_with:
            return f"{where}: left as is — weight {ref.weight} is also read by {', '.join(ref.weight_shared_with)}"
    for role, ref, nodes in (("q", q, q_nodes), ("k", k, k_nodes), ("v", v, v_nodes)):
        out = ix.value(ref.output)
        outside = [n for n in ix.value_readers(out) if id(n) not in nodes] if out is not None else []
        if out is None or ix.is_graph_output(out) or outside:
            reader = outside[0].name if outside else "graph output"
            return f"{where}: left as is — {role} projection output is also read by {reader}"

    head_dim = ix.static_dim(scores.inputs[0], -1) or _reshape_last_dim(ix, q)
    if not head_dim:
        return f"{where}: left as is — head size unknown (no static shape on the q operand)"
    if q.out_features % head_dim or k.out_features % head_dim:
        widths = f"{q.out_features}/{k.out_features}"
        return f"{where}: left as is — projection widths {widths} not multiples of head size {head_dim}"
    num_heads = q.out_features // head_dim
    num_kv = k.out_features // head_dim
    if num_kv == 0 or num_heads % num_kv or v.out_features % num_kv:
        return f"{where}: left as is — {num_heads} query heads cannot share {num_kv} kv heads"
    v_head_dim = v.out_features // num_kv
    score_heads = _score_heads(ix, scores)
    if score_heads is not None and score_heads != num_heads:
        return f"{where}: left as is — scores have {score_heads} heads but q has {num_heads}"
    if o.in_features != num_heads * v_head_dim:
        return f"{where}: left as is — output projection reads {o.in_features}, expected {num_heads}x{v_head_dim}"
    for role, ref, size in (("q", q, head_dim), ("k", k, head_dim), ("v", v, v_head_dim)):
        last = _reshape_last_dim(ix, ref)
        if last is not None and last != size:
            return f"{where}: left as is — {role} is split into heads of {last}, not {size} (unexpected layout)"

    repeat = _repeat_kind(ix, [*k_nodes.values(), *v_nodes.values()], k_ops + v_ops, num_heads, num_kv)
    walked = {**q_nodes, **k_nodes, **v_nodes}
    shape_nodes = sorted(
        (n for n in [*walked.values(), *merge_nodes] if n.op_type in ("Reshape", "Expand", "Tile")),
        key=ix.order,
    )
    label_nodes = [ix.node(r.node) for r in (q, k, v, o)]
    return AttentionGroup(
        name=f"attn.{index}",
        q=q,
        k=k,
        v=v,
        o=o,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        kv_groups=kv_groups(num_heads, num_kv, repeat),
        layer_label=ix.common_label(label_nodes),
        v_head_dim=v_head_dim,
        softmax=softmax.name,
        scores_matmul=scores.name,
        context_matmul=context.name,
        kv_repeat=repeat,
        rope=bool(q_ops["Neg"] and q_ops["Concat"]),
        shape_nodes=[n.name for n in shape_nodes],
    )


def kv_groups(num_heads: int, num_kv: int, repeat: str) -> list[list[int]]:
    """Query heads reading each kv head.

    repeat_kv / repeat_interleave (HF, SDPA enable_gqa) give query head h the kv head
    h // n_rep; Tile repeats the whole block, giving h % num_kv.
    """
    n_rep = num_heads // num_kv
    if repeat == "tile":
        return [[j + r * num_kv for r in range(n_rep)] for j in range(num_kv)]
    return [[j * n_rep + r for r in range(n_rep)] for j in range(num_kv)]


def _repeat_kind(ix: GraphIndex, nodes: list[ir.Node], ops: Counter, num_heads: int, num_kv: int) -> str:
    """How kv heads are repeated to match query heads.

    Unsqueeze+Expand+Reshape inserts a repeat axis: after the head axis it repeats
    each kv head in place (interleave, HF repeat_kv), before it repeats the whole
    block (tile). A Tile op on the head axis is a block repeat too.
    """
    if num_heads == num_kv:
        return "none"
    for node in nodes:
        if node.op_type != "Unsqueeze" or not any(r.op_type == "Expand" for r in ix.consumers(node.outputs[0])):
            continue
        dims = ix.shape(node.inputs[0])
        axes = ix.small_const(node.inputs[1]) if len(node.inputs) > 1 else ix.attr(node, "axes")
        if dims is None or axes is None or num_kv not in dims:
            continue
        head_axis = dims.index(num_kv)
        axis = int(list(np.atleast_1d(axes))[0]) % (len(dims) + 1)
        return "interleave" if axis > head_axis else "tile"
    if ops["Tile"]:
        return "tile"
    if ops["Expand"]:
        return "interleave"
    return "broadcast"  # MatMul broadcasting over a [kv, rep] split of the query heads


def _scores_matmul(ix: GraphIndex, linears: Linears, softmax: ir.Node) -> ir.Node | None:
    """Nearest MatMul of two computed operands upstream of the Softmax."""
    frontier = [softmax.inputs[0]]
    for _ in range(6):
        following = []
        for value in frontier:
            node = ix.producer(value)
            if node is None:
                continue
            computed = not any(ix.is_constant(v) for v in node.inputs)
            if node.op_type == "MatMul" and node.name not in linears.by_node and computed:
                return node
            if node.op_type in SCORE_OPS:
                following.extend(v for v in node.inputs if v is not None and not ix.is_constant(v))
        frontier = following
    return None


def _context_matmul(ix: GraphIndex, softmax: ir.Node) -> ir.Node | None:
    frontier = [softmax.outputs[0]]
    for _ in range(4):
        following = []
        for value in frontier:
            for reader in ix.consumers(value):
                if reader.op_type == "MatMul" and reader.inputs[0] is value and not ix.is_constant(reader.inputs[1]):
                    return reader
                if reader.op_type in PROB_OPS:
                    following.extend(reader.outputs[:1])
        frontier = following
    return None


def _trace_back(ix: GraphIndex, linears: Linears, start: ir.Value) -> tuple[list[LinearRef], dict[int, ir.Node], Counter]:
    """Projections reached from an attention operand through head-shaping ops.

    Stops silently at anything else (RoPE's Cos/Sin tables, shape arithmetic).
    Returns the projections, the ids of nodes walked, and their op counts.
    """
    refs: dict[str, LinearRef] = {}
    nodes: dict[int, ir.Node] = {}
    stack = [start]
    seen: set[int] = set()
    while stack and len(nodes) < MAX_WALK_NODES:
        value = stack.pop()
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        ref = linears.by_output.get(value.name)
        if ref is not None:
            refs.setdefault(ref.node, ref)
            continue
        if ix.is_constant(value):
            continue
        node = ix.producer(value)
        if node is None:
            continue
        if node.op_type in HEAD_DATA_OPS:
            nodes[id(node)] = node
            stack.append(node.inputs[0])
        elif node.op_type in HEAD_MIX_OPS:
            nodes[id(node)] = node
            stack.extend(node.inputs)
    ops = Counter(n.op_type for n in nodes.values())
    ordered = sorted(refs.values(), key=lambda r: ix.order(ix.node(r.node)))
    return ordered, nodes, ops


def _output_projection(ix: GraphIndex, linears: Linears, context: ir.Node) -> tuple[LinearRef | None, list[ir.Node]]:
    """The projection reading the merged heads, and the merge nodes on the way."""
    value = context.outputs[0]
    chain: list[ir.Node] = []
    for _ in range(8):
        readers = ix.consumers(value)
        if len(readers) != 1 or ix.is_graph_output(value):
            return None, chain
        reader = readers[0]
        ref = linears.by_node.get(reader.name)
        if ref is not None and reader.inputs[0] is value:
            return ref, chain
        if reader.op_type not in MERGE_OPS or reader.inputs[0] is not value:
            return None, chain
        chain.append(reader)
        value = reader.outputs[0]
    return None, chain


def _score_heads(ix: GraphIndex, scores: ir.Node) -> int | None:
    dims = ix.shape(scores.outputs[0])
    if dims is None or len(dims) != 4:
        return None
    return dims[1]


def _reshape_last_dim(ix: GraphIndex, ref: LinearRef) -> int | None:
    """Head size from the Reshape that splits a projection's output into heads."""
    out = ix.value(ref.output)
    for reader in ix.consumers(out):
        if reader.op_type != "Reshape" or reader.inputs[0] is not out:
            continue
        dims = ix.shape(reader.outputs[0])
        if dims is not None and len(dims) >= 3 and dims[-1]:
            return dims[-1]
        target = ix.small_const(reader.inputs[1])
        if target is not None and target.ndim == 1 and len(target) >= 3 and int(target[-1]) > 0:
            return int(target[-1])
    return None
