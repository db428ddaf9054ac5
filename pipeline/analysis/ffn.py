"""Find MLP blocks: producer linears -> elementwise region -> consumer linear.

Detection is structural, not by name: from every linear's input we walk back through
elementwise ops (activations, scalar scaling, bias-free Adds, the Mul joining two
branches) until we reach other linears. If the walk reaches producers, the
intermediate channels are only read inside the region, and all sizes agree, it is an
FFN; if it reaches producers but breaks a rule, it is reported as left as is.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

from edgefold.analysis.graph_index import GraphIndex
from edgefold.analysis.groups import FfnGroup, LinearRef
from edgefold.analysis.linear import Linears

# Ops that act on each element independently (any extra inputs must be scalars).
NONLINEAR = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Elu", "Selu", "Celu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Clip", "Exp",
    "Abs", "ThresholdedRelu", "Swish", "Pow", "Sqrt",
}
LINEAR_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Neg", "Identity", "Cast", "Dropout"}
ELEMENTWISE = NONLINEAR | LINEAR_ELEMENTWISE

# A real MLP activation region is a handful of nodes (tanh-GELU is the longest, ~8).
MAX_REGION_NODES = 48


def find_ffns(ix: GraphIndex, linears: Linears) -> tuple[list[FfnGroup], list[str]]:
    """MLP blocks found in the graph, plus notes on candidates left as is (and why)."""
    groups: list[FfnGroup] = []
    notes: list[str] = []
    for consumer in linears.refs:
        result = _ffn_for(ix, linears, consumer, len(groups))
        if isinstance(result, FfnGroup):
            groups.append(result)
        elif result:
            notes.append(result)
    return groups, notes


def _ffn_for(ix: GraphIndex, linears: Linears, consumer: LinearRef, index: int) -> FfnGroup | str | None:
    node = ix.node(consumer.node)
    start = node.inputs[0]
    region, producers, problems, foreign = _walk_region(ix, linears, start)
    if not producers or not region or foreign:
        # Fed by something else (a norm, reshape, reduction, another linear): not an FFN.
        # Its linears still show up as "not in any prunable group".
        return None
    if not any(n.op_type in NONLINEAR for n in region) and not _joins_branches(region, producers, ix, linears):
        return None  # purely linear chain between two linears: nothing activation-shaped
    where = f"FFN candidate before {consumer.node} ({consumer.label})"
    if problems:
        return f"{where}: left as is — {problems[0]}"
    if len(producers) > 2:
        return f"{where}: left as is — {len(producers)} producer projections ({', '.join(p.node for p in producers)})"
    leak = _leaks(ix, region, producers, consumer, linears)
    if leak:
        return f"{where}: left as is — {leak}"
    sizes = {p.out_features for p in producers}
    if sizes != {consumer.in_features}:
        return f"{where}: left as is — producer widths {sorted(sizes)} do not match consumer input {consumer.in_features}"
    hidden = {p.in_features for p in producers}
    if len(hidden) != 1:
        return f"{where}: left as is — producers read different widths {sorted(hidden)}"
    shared = [r for r in [*producers, consumer] if r.weight_shared_with]
    if shared:
        r = shared[0]
        return f"{where}: left as is — weight {r.weight} is also read by {', '.join(r.weight_shared_with)}"

    if len(producers) == 2:
        roles = _gate_and_up(ix, linears, region, producers)
        if roles is None:
            return f"{where}: left as is — two producers but no single gated branch"
        gate, up = roles
        kind = "gated"
        activation = _classify(ix, _branch_nodes(ix, linears, region, gate) or region)
        ordered = [gate, up]
    else:
        kind = "plain"
        activation = _classify(ix, region)
        ordered = list(producers)
    nodes = [ix.node(p.node) for p in ordered] + [node]
    return FfnGroup(
        name=f"ffn.{index}",
        kind=kind,
        activation=activation,
        producers=ordered,
        consumer=consumer,
        hidden=hidden.pop(),
        intermediate=consumer.in_features,
        layer_label=ix.common_label(nodes),
        nodes=[n.name for n in sorted(region, key=ix.order)],
    )


def _walk_region(ix: GraphIndex, linears: Linears, start: ir.Value) -> tuple[list[ir.Node], list[LinearRef], list[str], bool]:
    """Elementwise nodes between `start` and the linears feeding it.

    Stops at linear outputs (producers) and constants. Per-channel constants are
    problems (an FFN we will not touch); reaching a non-elementwise op or a graph
    input sets `foreign` (this is not an FFN at all).
    """
    foreign = False
    region: dict[int, ir.Node] = {}
    producers: dict[str, LinearRef] = {}
    problems: list[str] = []
    stack = [start]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        ref = linears.by_output.get(value.name)
        if ref is not None:
            producers.setdefault(ref.node, ref)
            continue
        if ix.is_constant(value):
            if ix.const_numel(value) != 1:
                problems.append(f"per-channel constant {value.name} inside the activation")
            continue
        node = ix.producer(value)
        if node is None or node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx"):
            foreign = True
            continue
        if len(region) >= MAX_REGION_NODES:
            foreign = True
            break
        region[id(node)] = node
        stack.extend(node.inputs)
    ordered = sorted(region.values(), key=ix.order)
    return ordered, list(producers.values()), problems, foreign


def _leaks(
    ix: GraphIndex, region: list[ir.Node], producers: list[LinearRef], consumer: LinearRef, linears: Linears
) -> str | None:
    """Intermediate channels must only flow into the region and then the consumer."""
    inside = {id(n) for n in region}
    consumer_node = ix.node(consumer.node)
    for node in region:
        for out in node.outputs:
            if ix.is_graph_output(out):
                return f"intermediate {out.name} is a graph output"
            for reader in ix.value_readers(out):
                if id(reader) not in inside and reader is not consumer_node:
                    return f"intermediate {out.name} is also read by {reader.op_type} {reader.name}"
    for ref in producers:
        out = ix.value(ref.output)
        if out is None:
            return f"cannot find output of {ref.node}"
        if ix.is_graph_output(out):
            return f"{ref.node} output is a graph output"
        for reader in ix.value_readers(out):
            if id(reader) not in inside:
                return f"{ref.node} output is also read by {reader.op_type} {reader.name}"
    return None


def _feeds(ix: GraphIndex, linears: Linears, region: list[ir.Node]) -> dict[int, set[str]]:
    """For each region node, which producers' channels reach it."""
    reach: dict[int, set[str]] = {}
    inside = {id(n) for n in region}
    for node in region:  # region is in graph order, so inputs are resolved first
        sources: set[str] = set()
        for value in node.inputs:
            if value is None:
                continue
            ref = linears.by_output.get(value.name)
            if ref is not None:
                sources.add(ref.node)
            producer = ix.producer(value)
            if producer is not None and id(producer) in inside:
                sources |= reach.get(id(producer), set())
        reach[id(node)] = sources
    return reach


def _joins_branches(region: list[ir.Node], producers: list[LinearRef], ix: GraphIndex, linears: Linears) -> bool:
    reach = _feeds(ix, linears, region)
    return any(n.op_type == "Mul" and _mul_joins(ix, linears, n, reach) for n in region)


def _mul_joins(ix: GraphIndex, linears: Linears, node: ir.Node, reach: dict[int, set[str]]) -> bool:
    sides = []
    for value in node.inputs:
        ref = linears.by_output.get(value.name) if value is not None else None
        if ref is not None:
            sides.append({ref.node})
            continue
        producer = ix.producer(value)
        sides.append(reach.get(id(producer), set()) if producer is not None else set())
    return len(sides) == 2 and bool(sides[0]) and bool(sides[1]) and sides[0].isdisjoint(sides[1])


def _gate_and_up(
    ix: GraphIndex, linears: Linears, region: list[ir.Node], producers: list[LinearRef]
) -> tuple[LinearRef, LinearRef] | None:
    """The gate is the producer whose channels pass through the activation."""
    reach = _feeds(ix, linears, region)
    if not any(n.op_type == "Mul" and _mul_joins(ix, linears, n, reach) for n in region):
        return None
    activated = set()
    for node in region:
        if node.op_type in NONLINEAR:
            activated |= reach[id(node)]
    by_node = {p.node: p for p in producers}
    if len(activated) == 1:
        gate = by_node[activated.pop()]
        up = next(p for p in producers if p is not gate)
        return gate, up
    if not activated:  # bilinear GLU: no activation, order by graph position
        first, second = sorted(producers, key=lambda p: ix.order(ix.node(p.node)))
        return first, second
    return None


def _branch_nodes(ix: GraphIndex, linears: Linears, region: list[ir.Node], gate: LinearRef) -> list[ir.Node]:
    reach = _feeds(ix, linears, region)
    return [n for n in region if reach[id(n)] == {gate.node}]


def _classify(ix: GraphIndex, nodes: list[ir.Node]) -> str:
    """Name the activation from the ops present (gelu, gelu_tanh, silu, relu, ...)."""
    ops = Counter(n.op_type for n in nodes)
    if ops["Gelu"]:
        gelu = next(n for n in nodes if n.op_type == "Gelu")
        approx = ix.attr(gelu, "approximate", "none")
        return "gelu_tanh" if approx == "tanh" else "gelu"
    if ops["Erf"]:
        return "gelu"
    if ops["Tanh"] and (ops["Pow"] or ops["Mul"] >= 3):
        return "gelu_tanh"
    if ops["Swish"]:
        return "silu"
    if ops["Sigmoid"]:
        sigmoid = next(n for n in nodes if n.op_type == "Sigmoid")
        x = sigmoid.inputs[0]
        for reader in ix.consumers(sigmoid.outputs[0]):
            if reader.op_type == "Mul" and x in reader.inputs:
                return "silu"
        producer = ix.producer(x)
        if producer is not None and producer.op_type == "Mul" and any(ix.is_scalar_constant(v) for v in producer.inputs):
            return "quick_gelu"
        return "sigmoid"
    if ops["HardSwish"] or (ops["HardSigmoid"] and ops["Mul"]):
        return "hardswish"
    if ops["Clip"]:
        clip = next(n for n in nodes if n.op_type == "Clip")
        low = ix.small_const(clip.inputs[1]) if len(clip.inputs) > 1 else None
        high = ix.small_const(clip.inputs[2]) if len(clip.inputs) > 2 else None
        if low is not None and high is not None and float(low) == 0.0 and float(high) == 6.0:
            return "relu6"
        return "clip"
    if ops["Relu"]:
        return "relu_squared" if ops["Pow"] else "relu"
    for op in ("LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Mish", "Tanh", "Softsign", "Exp", "Abs", "HardSigmoid"):
        if ops[op]:
            return op.lower()
    return "none"
