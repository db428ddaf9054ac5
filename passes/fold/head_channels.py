"""Whole-head surgery for attention blocks (MHA and GQA).

Heads are maps too: q heads H -> H', kv heads KV -> KV'. q/k/v output channels move
head-block by head-block (producer map), o-proj input channels likewise (consumer
map). GQA stays consistent because new heads are ordered kv group by kv group, each
with the same number of query heads, so repeat_kv keeps working with new counts.

Head counts also live in shape constants (Reshape/Expand/Tile shapes). Those are
shared by every layer, so each edited layer gets its own new constants (and its own
copy of a shape-building Concat) instead of edits in place.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.initializers import array, forget_shapes_downstream, node_by_name, replace_initializer


def block_map(head_map: np.ndarray, size: int) -> np.ndarray:
    """A head map (rows: new heads, cols: old heads) expanded to channels (size per head)."""
    return np.kron(head_map, np.eye(size))


def head_features(model: ir.Model, group, unit: str) -> np.ndarray:
    """Rows to cluster: one per kv group (unit="kv") or per query head (unit="q").

    A query head is its q rows and o columns; a kv group adds its k and v rows and all
    its query heads. Each projection block is scaled to unit mean norm.
    """
    d, dv = group.head_dim, group.v_head_dim or group.head_dim
    q = _out_rows(model, group.q).reshape(group.num_heads, d, -1)
    o = _in_cols(model, group.o).reshape(group.num_heads, dv, -1)
    k = _out_rows(model, group.k).reshape(group.num_kv_heads, d, -1)
    v = _out_rows(model, group.v).reshape(group.num_kv_heads, dv, -1)
    q, o, k, v = (_unit_block(x) for x in (q, o, k, v))
    if unit == "q":
        return np.concatenate([q.reshape(group.num_heads, -1), o.reshape(group.num_heads, -1)], axis=1)
    rows = []
    for j, heads in enumerate(group.kv_groups):
        rows.append(np.concatenate([k[j].ravel(), v[j].ravel(), q[heads].ravel(), o[heads].ravel()]))
    return np.stack(rows)


def head_features_raw(model: ir.Model, group, unit: str) -> np.ndarray:
    """Unscaled rows, one per unit: a query head's q rows and o columns; a kv group's k and v rows
    plus those of its query heads."""
    q = _out_rows(model, group.q).reshape(group.num_heads, -1)
    o = _in_cols(model, group.o).reshape(group.num_heads, -1)
    if unit == "q":
        return np.concatenate([q, o], axis=1)
    k = _out_rows(model, group.k).reshape(group.num_kv_heads, -1)
    v = _out_rows(model, group.v).reshape(group.num_kv_heads, -1)
    return np.stack([np.concatenate([k[j], v[j], q[h].ravel(), o[h].ravel()]) for j, h in enumerate(group.kv_groups)])


def _unit_block(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x.reshape(x.shape[0], -1), axis=1).mean()
    return x / (norm if norm > 0 else 1.0)


def _out_rows(model: ir.Model, ref) -> np.ndarray:
    """Output channels as rows ([out, in])."""
    w = array(model, ref.weight).astype(np.float64)
    return np.moveaxis(w, ref.out_axis, 0)


def _in_cols(model: ir.Model, ref) -> np.ndarray:
    """Input channels as rows ([in, out])."""
    w = array(model, ref.weight).astype(np.float64)
    return np.moveaxis(w, ref.in_axis, 0)


def remap_heads(model: ir.Model, group, q_map: np.ndarray, q_consumer: np.ndarray,
                kv_map: np.ndarray) -> None:
    """Apply head maps in place: q_map (H' x H) to q rows, q_consumer (H x H') to o
    columns, kv_map (KV' x KV) to k and v rows. New heads must be ordered so that
    query head h' reads kv head h' // (H' / KV') (the exporter's repeat_kv layout)."""
    new_heads, new_kv = q_map.shape[0], kv_map.shape[0]
    if group.kv_repeat == "tile" and new_kv not in (group.num_kv_heads,) and new_kv != 1:
        raise ValueError(f"{group.name}: tiled kv heads are folded only within groups")
    if new_heads % new_kv:
        raise ValueError(f"{group.name}: {new_heads} query heads cannot share {new_kv} kv heads")
    nodes = node_by_name(model)
    d, dv = group.head_dim, group.v_head_dim or group.head_dim
    _map_out(model, nodes, group.q, block_map(q_map, d))
    _map_out(model, nodes, group.k, block_map(kv_map, d))
    _map_out(model, nodes, group.v, block_map(kv_map, dv))
    consumer = block_map(q_consumer, dv)
    o = group.o
    o_node = nodes[o.node]
    readers = [nodes[o.transpose]] if o.transpose else [o_node]
    w = array(model, o.weight).astype(np.float64)
    moved = np.moveaxis(w, o.in_axis, -1) @ consumer
    replace_initializer(model, o.weight, np.moveaxis(moved, -1, o.in_axis), readers=readers)
    counts = _Counts(group, new_heads, new_kv)
    for name in group.shape_nodes:
        _rewrite_shape(model, nodes[name], counts)
    _forget_block_shapes(nodes, group)


def _map_out(model, nodes, ref, channel_map: np.ndarray) -> None:
    node = nodes[ref.node]
    readers = [nodes[ref.transpose]] if ref.transpose else [node]
    w = array(model, ref.weight).astype(np.float64)
    moved = np.tensordot(channel_map, np.moveaxis(w, ref.out_axis, 0), axes=(1, 0))
    replace_initializer(model, ref.weight, np.moveaxis(moved, 0, ref.out_axis), readers=readers)
    if ref.bias:
        bias_node = nodes[ref.bias_node] if ref.bias_node else node
        replace_initializer(model, ref.bias, channel_map @ array(model, ref.bias).astype(np.float64),
                            readers=[bias_node])


class _Counts:
    """Old -> new for every head-count-like number a shape constant can spell."""

    def __init__(self, group, new_heads: int, new_kv: int):
        d, dv = group.head_dim, group.v_head_dim or group.head_dim
        self.rep = (group.num_heads // group.num_kv_heads, new_heads // new_kv)
        self.kv = (group.num_kv_heads, new_kv)
        # Checked in this order: merged widths first, then head counts.
        self.by_value = [
            (group.num_heads * dv, new_heads * dv),
            (group.num_heads * d, new_heads * d),
            (group.num_kv_heads * d, new_kv * d),
            (group.num_kv_heads * dv, new_kv * dv),
            (group.num_heads, new_heads),
            (group.num_kv_heads, new_kv),
        ]
        self.static = {-1, 0, 1, d, dv}

    def new_value(self, value: int, *, rep_axis: bool) -> int:
        if rep_axis and value == self.rep[0]:
            return self.rep[1]
        if value in self.static and value not in {old for old, _ in self.by_value}:
            return value
        for old, new in self.by_value:
            if value == old:
                return new
        return value


def _rewrite_shape(model: ir.Model, node: ir.Node, counts: _Counts) -> None:
    shape_input = node.inputs[1] if len(node.inputs) > 1 else None
    if shape_input is None:
        return
    rep_axes = _rep_axes(node, counts)
    producer = shape_input.producer()
    if shape_input.const_value is not None:
        old = shape_input.const_value.numpy().astype(np.int64)
        new = np.array([counts.new_value(int(v), rep_axis=i in rep_axes) for i, v in enumerate(old)], dtype=np.int64)
        if not np.array_equal(old, new):
            _use_new_constant(model, node, 1, new, shape_input)
        return
    if producer is None or producer.op_type != "Concat":
        return
    pieces, offset, changed = [], 0, False
    for piece in producer.inputs:
        size = _length(piece)
        if size is None:
            raise ValueError(f"{node.name}: cannot size shape piece {piece.name if piece else None}")
        if piece is not None and piece.const_value is not None:
            old = piece.const_value.numpy().astype(np.int64).reshape(-1)
            new = np.array([counts.new_value(int(v), rep_axis=offset + i in rep_axes) for i, v in enumerate(old)],
                           dtype=np.int64)
            if not np.array_equal(old, new):
                piece = _constant(model, f"{piece.name}.{node.name}", new)
                changed = True
        pieces.append(piece)
        offset += size
    if changed:
        concat = ir.node("Concat", inputs=pieces, attributes={"axis": 0}, name=f"{producer.name}.{node.name}")
        concat.outputs[0].name = f"{shape_input.name}.{node.name}"
        concat.outputs[0].dtype = ir.DataType.INT64
        model.graph.insert_before(node, concat)
        node.replace_input_with(1, concat.outputs[0])


def _rep_axes(node: ir.Node, counts: _Counts) -> set[int]:
    """Axes of a repeat_kv Expand/Tile shape that count repeats, not heads."""
    if node.op_type == "Tile":
        return set(range(64))  # every Tile repeat is a repeat count
    if node.op_type != "Expand":
        return set()
    shape = node.inputs[0].shape
    if shape is None:
        return set()
    return {i for i, dim in enumerate(shape) if isinstance(dim, int) and dim == 1}


def _length(value: ir.Value | None) -> int | None:
    if value is None:
        return 0
    if value.const_value is not None:
        return int(np.prod(value.const_value.shape))
    if value.shape is not None and len(value.shape) == 1 and isinstance(value.shape[0], int):
        return int(value.shape[0])
    return None


def _constant(model: ir.Model, base: str, data: np.ndarray) -> ir.Value:
    name, index = base, 1
    while name in model.graph.initializers:
        index += 1
        name = f"{base}.{index}"
    value = ir.Value(name=name, shape=ir.Shape(data.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.Tensor(data, name=name))
    model.graph.register_initializer(value)
    return value


def _use_new_constant(model: ir.Model, node: ir.Node, index: int, data: np.ndarray, old: ir.Value) -> None:
    if old.is_initializer():
        replace_initializer(model, old.name, data, readers=[node])
    else:
        node.replace_input_with(index, _constant(model, f"{old.name}.{node.name}", data))


def _forget_block_shapes(nodes, group) -> None:
    """Forget inferred shapes from q/k/v outputs up to (not past) the output projection."""
    stop = {group.o.node} | ({group.o.transpose} if group.o.transpose else set())
    stack = []
    for ref in (group.q, group.k, group.v):
        last = nodes[ref.bias_node] if ref.bias_node else nodes[ref.node]
        stack.extend(nodes[ref.node].outputs)
        stack.extend(last.outputs)
    forget_shapes_downstream(stack, lambda use: use.node.name not in stop)
