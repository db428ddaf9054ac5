"""Shrink (or re-mix) the intermediate channels of an FFN group.

Both structured pruning and folding are one linear map on the intermediate axis:
producers (up, gate) get `producer_map @ W_out_axis` (k x n: selection rows for
slicing, cluster means for folding) and the consumer (down) gets `W_in_axis @
consumer_map` (n x k: selection columns, or cluster membership sums). Biases of the
producers follow the producer map. Shapes downstream of the producers are forgotten
so shape inference recomputes them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.initializers import array, forget_shape, node_by_name, replace_initializer


def selection_maps(keep: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps that keep the channels `keep` (sorted) out of `width`."""
    keep = np.sort(np.asarray(keep, dtype=np.int64))
    producer = np.zeros((len(keep), width), dtype=np.float64)
    producer[np.arange(len(keep)), keep] = 1.0
    return producer, producer.T.copy()


def _map_output_axis(weight: np.ndarray, out_axis: int, producer_map: np.ndarray) -> np.ndarray:
    if _is_selection(producer_map):
        return np.take(weight, producer_map.argmax(axis=1), axis=out_axis)
    moved = np.moveaxis(weight.astype(np.float64), out_axis, 0)
    mixed = np.tensordot(producer_map, moved, axes=(1, 0))
    return np.moveaxis(mixed, 0, out_axis)


def _map_input_axis(weight: np.ndarray, in_axis: int, consumer_map: np.ndarray) -> np.ndarray:
    if _is_selection(consumer_map.T):
        return np.take(weight, consumer_map.argmax(axis=0), axis=in_axis)
    moved = np.moveaxis(weight.astype(np.float64), in_axis, -1)
    mixed = moved @ consumer_map
    return np.moveaxis(mixed, -1, in_axis)


def _is_selection(matrix: np.ndarray) -> bool:
    """Rows with a single 1 and zeros elsewhere: slicing, exact without float math."""
    return bool(np.all((matrix == 0) | (matrix == 1)) and np.all(matrix.sum(axis=1) == 1))


def remap_ffn(model: ir.Model, group, producer_map: np.ndarray, consumer_map: np.ndarray,
              *, producer_scale: np.ndarray | None = None) -> None:
    """Apply the maps to `group` (an analysis FfnGroup) in place.

    `producer_scale` (length k) optionally rescales the new channels on the consumer
    side, e.g. Fold-AR's variance repair.
    """
    nodes = node_by_name(model)
    width = group.intermediate
    if producer_map.shape[1] != width or consumer_map.shape[0] != width:
        raise ValueError(f"{group.name}: maps do not match intermediate width {width}")
    for linear in group.producers:
        node = nodes[linear.node]
        readers = [nodes[linear.transpose]] if linear.transpose else [node]
        new_weight = _map_output_axis(array(model, linear.weight), linear.out_axis, producer_map)
        replace_initializer(model, linear.weight, new_weight, readers=readers)
        if linear.bias:
            bias_node = nodes[linear.bias_node] if linear.bias_node else node
            new_bias = _map_output_axis(array(model, linear.bias), 0, producer_map)
            replace_initializer(model, linear.bias, new_bias, readers=[bias_node])
        _forget_outputs(nodes.get(linear.transpose) if linear.transpose else None)
        _forget_outputs(node)
        if linear.bias_node:
            _forget_outputs(nodes[linear.bias_node])
    down = group.consumer
    down_map = consumer_map if producer_scale is None else consumer_map * producer_scale[None, :]
    down_node = nodes[down.node]
    readers = [nodes[down.transpose]] if down.transpose else [down_node]
    new_down = _map_input_axis(array(model, down.weight), down.in_axis, down_map)
    replace_initializer(model, down.weight, new_down, readers=readers)
    if down.transpose:
        _forget_outputs(nodes[down.transpose])
    for name in group.nodes:
        _forget_outputs(nodes[name])


def _forget_outputs(node: ir.Node | None) -> None:
    if node is None:
        return
    for output in node.outputs:
        forget_shape(output)
