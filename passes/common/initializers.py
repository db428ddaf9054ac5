"""Reading and replacing initializers safely in an onnx_ir model."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import onnx_ir as ir


def node_by_name(model: ir.Model) -> dict[str, ir.Node]:
    """Every named node of the model, subgraphs included, by name."""
    return {node.name: node for node in model.graph.all_nodes() if node.name}


def array(model: ir.Model, name: str) -> np.ndarray:
    """The contents of initializer `name` as a numpy array."""
    value = model.graph.initializers[name]
    return value.const_value.numpy()


def fresh_name(model: ir.Model, base: str) -> str:
    """`base`, or `base.2`, `base.3`, ...: the first name no initializer or node output of the graph uses."""
    taken = set(model.graph.initializers) | {v.name for node in model.graph for v in node.outputs}
    candidate, index = base, 1
    while candidate in taken:
        index += 1
        candidate = f"{base}.{index}"
    return candidate


def replace_initializer(model: ir.Model, name: str, data: np.ndarray, *, readers: list[ir.Node] | None = None) -> str:
    """Give `name` new contents.

    If other nodes read the same initializer than `readers`, the readers get a private
    copy instead (a new initializer) so tied or merged weights elsewhere stay intact.
    Returns the name the readers now use.
    """
    value = model.graph.initializers[name]
    users = {use.node for use in value.uses()}
    tensor_dtype = value.const_value.dtype
    data = np.ascontiguousarray(data.astype(tensor_dtype.numpy()))
    if readers is not None and users - set(readers):
        new_name = fresh_name(model, f"{name}.{readers[0].name}")
        new_value = ir.Value(name=new_name, shape=ir.Shape(data.shape), type=ir.TensorType(tensor_dtype),
                             const_value=ir.Tensor(data, name=new_name))
        model.graph.register_initializer(new_value)
        for node in readers:
            for index, node_input in enumerate(node.inputs):
                if node_input is value:
                    node.replace_input_with(index, new_value)
        return new_name
    value.const_value = ir.Tensor(data, name=name)
    value.shape = ir.Shape(data.shape)
    return name


def forget_shape(value: ir.Value | None) -> None:
    """Drop a stale inferred shape so shape inference recomputes it."""
    if value is not None and not value.is_graph_output():
        value.shape = None


def forget_shapes_downstream(start: Iterable[ir.Value], follow: Callable[[Any], bool]) -> None:
    """Forget the inferred shapes of `start` and of every value computed from them, walking on
    through the readers `follow` admits; `follow` sees each use (`.node`, `.idx`) and may also edit
    that reader."""
    seen: set[int] = set()
    stack = list(start)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        forget_shape(value)
        for use in list(value.uses()):
            if follow(use):
                stack.extend(use.node.outputs)
