"""Recognise linear layers: MatMul/Gemm with an initializer weight (and optional bias).

The dynamo exporter writes `MatMul(x, W)` with W pre-transposed to [in, out], a
separate `Add(matmul, bias)` when the module has a bias, and `Transpose(W)` feeding
the MatMul for tied weights (lm_head). Other exporters write Gemm(transB=1).
"""

from __future__ import annotations

import onnx_ir as ir

from edgefold.analysis.graph_index import GraphIndex
from edgefold.analysis.groups import LinearRef


class Linears:
    """All linear layers of a graph, by node name and by the value carrying their result."""

    def __init__(self, refs: list[LinearRef]):
        self.refs = refs
        self.by_node = {r.node: r for r in refs}
        self.by_output = {r.output: r for r in refs}
        self.by_bias_node = {r.bias_node: r for r in refs if r.bias_node and r.bias_node != r.node}

    def __len__(self) -> int:
        return len(self.refs)


def find_linears(ix: GraphIndex) -> Linears:
    """Every linear layer (MatMul/Gemm with an initializer weight) in the graph, in graph order."""
    refs = []
    for node in ix.nodes:
        ref = linear_at(ix, node)
        if ref is not None:
            refs.append(ref)
    return Linears(refs)


def linear_at(ix: GraphIndex, node: ir.Node) -> LinearRef | None:
    """The linear layer `node` computes, or None if it is not a named MatMul/Gemm with an initializer weight."""
    if node.domain not in ("", "ai.onnx") or not node.name:
        return None
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        return _matmul(ix, node)
    if node.op_type == "Gemm":
        return _gemm(ix, node)
    return None


def _matmul(ix: GraphIndex, node: ir.Node) -> LinearRef | None:
    x, b = node.inputs
    if x is None or ix.is_constant(x):
        return None
    weight, transpose = _weight_source(ix, b)
    if weight is None:
        return None
    shape = ix.const_shape(weight)
    if shape is None or len(shape) != 2:
        return None
    in_axis, out_axis = (1, 0) if transpose is not None else (0, 1)
    out_features = shape[out_axis]
    bias, bias_node, output = _bias_add(ix, node.outputs[0], out_features)
    return LinearRef(
        node=node.name,
        weight=weight.name,
        out_axis=out_axis,
        in_axis=in_axis,
        bias=bias,
        bias_node=bias_node,
        transpose=transpose.name if transpose is not None else None,
        in_features=shape[in_axis],
        out_features=out_features,
        output=output,
        weight_shared_with=_other_readers(ix, weight, transpose or node),
        bias_shared_with=_other_readers(ix, ix.value(bias), ix.node(bias_node)) if bias and bias_node else (),
        label=ix.label(node),
    )


def _gemm(ix: GraphIndex, node: ir.Node) -> LinearRef | None:
    inputs = list(node.inputs) + [None] * (3 - len(node.inputs))
    a, b, c = inputs[:3]
    if a is None or ix.is_constant(a) or ix.attr(node, "transA", 0):
        return None
    weight, transpose = _weight_source(ix, b)
    if weight is None:
        return None
    shape = ix.const_shape(weight)
    if shape is None or len(shape) != 2:
        return None
    trans_b = bool(ix.attr(node, "transB", 0))
    if transpose is not None:
        trans_b = not trans_b  # Transpose(W) with transB=0 reads W as [out, in]
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    out_features = shape[out_axis]
    bias = bias_node = None
    output = node.outputs[0].name
    if c is not None:
        if ix.initializer(c) is None or ix.const_shape(c) not in ((out_features,), (1, out_features)):
            return None  # computed or broadcast-only C: not a per-channel bias we can slice
        bias, bias_node = c.name, node.name
    else:
        bias, bias_node, output = _bias_add(ix, node.outputs[0], out_features)
    return LinearRef(
        node=node.name,
        weight=weight.name,
        out_axis=out_axis,
        in_axis=in_axis,
        bias=bias,
        bias_node=bias_node,
        transpose=transpose.name if transpose is not None else None,
        in_features=shape[in_axis],
        out_features=out_features,
        output=output,
        weight_shared_with=_other_readers(ix, weight, transpose or node),
        bias_shared_with=_other_readers(ix, ix.value(bias), ix.node(bias_node)) if bias and bias_node else (),
        label=ix.label(node),
    )


def _weight_source(ix: GraphIndex, value: ir.Value | None) -> tuple[ir.Value | None, ir.Node | None]:
    """The initializer behind a weight input, directly or through a 2-D Transpose."""
    if value is None:
        return None, None
    if ix.initializer(value) is not None:
        return value, None
    node = ix.producer(value)
    if node is not None and node.op_type == "Transpose" and node.name:
        source = node.inputs[0]
        perm = ix.attr(node, "perm")
        if ix.initializer(source) is not None and (perm is None or list(perm) == [1, 0]):
            shape = ix.const_shape(source)
            if shape is not None and len(shape) == 2 and len(ix.consumers(node.outputs[0])) == 1:
                return source, node
    return None, None


def _bias_add(ix: GraphIndex, raw: ir.Value, out_features: int) -> tuple[str | None, str | None, str]:
    """A following Add of a per-output-channel initializer, if it is the only reader."""
    readers = ix.value_readers(raw)
    if len(readers) != 1 or ix.is_graph_output(raw):
        return None, None, raw.name
    add = readers[0]
    if add.op_type != "Add" or not add.name or len(add.inputs) != 2:
        return None, None, raw.name
    other = add.inputs[1] if add.inputs[0] is raw else add.inputs[0]
    if ix.initializer(other) is None:
        return None, None, raw.name
    shape = ix.const_shape(other)
    if shape is None or not shape or shape[-1] != out_features or any(d != 1 for d in shape[:-1]):
        return None, None, raw.name
    return other.name, add.name, add.outputs[0].name


def _other_readers(ix: GraphIndex, value: ir.Value | None, reader: ir.Node) -> tuple[str, ...]:
    return tuple(n.name for n in ix.consumers(value) if n is not reader)
