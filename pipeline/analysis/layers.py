"""Per-layer rows (shape, params, bytes, MACs) and model totals.

MACs are per token for sequence models and per image for CNNs: symbolic dims
(batch, sequence) count as 1, static spatial dims are used as exported. Attention's
score and context products have no weights and depend on context length, so they
are not counted. Parameter totals count each initializer once (tied weights too).
"""

from __future__ import annotations

import math

import onnx_ir as ir

from edgefold.analysis.graph_index import GraphIndex
from edgefold.analysis.groups import LayerRow
from edgefold.analysis.linear import Linears

NORM_OPS = {
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "RMSNormalization", "SimplifiedLayerNormalization",
}


def model_kind(ix: GraphIndex) -> str:
    """Model kind: "image" if the graph has a Conv (MACs per image), else "sequence" (MACs per token)."""
    return "image" if any(n.op_type == "Conv" for n in ix.nodes) else "sequence"


def layer_rows(ix: GraphIndex, linears: Linears, kind: str) -> tuple[list[LayerRow], set[str]]:
    """Rows in graph order, and the names of the initializers they cover."""
    rows: list[LayerRow] = []
    covered: set[str] = set()
    for node in ix.nodes:
        ref = linears.by_node.get(node.name)
        if ref is not None:
            weight = ix.value(ref.weight)
            tensors = [weight] + ([ix.value(ref.bias)] if ref.bias else [])
            out = ix.value(ref.output)
            positions = 1 if kind == "sequence" else _positions(ix.shape(out), channel_last=True)
            note = f"weight shared with {', '.join(ref.weight_shared_with)}" if ref.weight_shared_with else ""
            macs = ref.in_features * ref.out_features * positions
            rows.append(_row(ix, node, "linear", weight, tensors, macs, ref.label, note))
        elif node.op_type == "Conv" and ix.initializer(node.inputs[1]) is not None:
            weight = node.inputs[1]
            tensors = [v for v in node.inputs[1:3] if ix.initializer(v) is not None]
            group = int(ix.attr(node, "group", 1) or 1)
            shape = ix.const_shape(weight) or ()
            layer_kind = "conv"
            if group > 1:
                layer_kind = "depthwise-conv" if len(shape) > 1 and shape[1] == 1 and shape[0] == group else "grouped-conv"
            macs = _numel(shape) * _positions(ix.shape(node.outputs[0]), channel_last=False)
            label = weight.name[: -len(".weight")] if weight.name.endswith(".weight") else ix.label(node)
            rows.append(_row(ix, node, layer_kind, weight, tensors, macs, label, ""))
        elif node.op_type == "Gather" and _is_table(ix, node.inputs[0]):
            weight = node.inputs[0]
            readers = [n.name for n in ix.consumers(weight) if n is not node]
            note = f"weight shared with {', '.join(readers)}" if readers else ""
            tensors = [weight]
            rows.append(_row(ix, node, "embedding", weight, tensors, 0, ix.label(node), note))
        elif node.op_type in NORM_OPS:
            tensors = [v for v in node.inputs[1:] if ix.initializer(v) is not None]
            if tensors:
                rows.append(_row(ix, node, "norm", tensors[0], tensors, 0, ix.label(node), ""))
        else:
            continue
        covered.update(v.name for v in tensors if v is not None)
    return rows, covered


def totals(ix: GraphIndex, rows: list[LayerRow], kind: str, covered: set[str]) -> dict:
    """Model totals; `covered` names the initializers that appear in some row."""
    params = nbytes = in_layers = 0
    for name, value in ix.graph.initializers.items():
        numel = ix.const_numel(value) or 0
        params += numel
        nbytes += _nbytes(value, numel)
        if name in covered:
            in_layers += numel
    return {
        "params": params,
        "bytes": nbytes,
        "macs": sum(r.macs for r in rows),
        "macs_per": "token" if kind == "sequence" else "image",
        "model_kind": kind,
        "nodes": len(ix.nodes),
        "initializers": len(ix.graph.initializers),
        "params_outside_layers": params - in_layers,
    }


def _is_table(ix: GraphIndex, value: ir.Value | None) -> bool:
    """A 2-D initializer read by Gather: an embedding table."""
    return ix.initializer(value) is not None and len(ix.const_shape(value) or ()) == 2


def _row(
    ix: GraphIndex, node: ir.Node, kind: str, weight: ir.Value, tensors: list, macs: int, label: str, note: str
) -> LayerRow:
    params = 0
    nbytes = 0
    for value in tensors:
        if value is None:
            continue
        numel = ix.const_numel(value) or 0
        params += numel
        nbytes += _nbytes(value, numel)
    return LayerRow(
        name=node.name,
        kind=kind,
        shape=tuple(ix.const_shape(weight) or ()),
        params=params,
        bytes=nbytes,
        macs=int(macs),
        label=label,
        note=note,
    )


def _nbytes(value: ir.Value, numel: int) -> int:
    dtype = value.dtype if value.dtype is not None else ir.DataType.FLOAT
    try:
        return int(math.ceil(numel * dtype.bitwidth / 8))
    except (TypeError, ValueError, AttributeError):
        return numel * 4


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape else 0


def _positions(dims, channel_last: bool) -> int:
    """Output positions per sample: static dims other than batch and channels."""
    if not dims or len(dims) < 2:
        return 1
    spatial = dims[1:-1] if channel_last else dims[2:]
    return int(math.prod(d for d in spatial if d)) if spatial else 1
