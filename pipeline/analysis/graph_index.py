"""Read-only lookups over the main graph: producers, consumers, constants, shapes, labels.

Every detector asks the same questions ("who reads this value?", "is this an
initializer, and of what shape?"), so they live here once. Tensor data is only read
for tiny constants (scalars, axes, Clip bounds); weights stay lazy on disk.
"""

from __future__ import annotations

import ast
from typing import Iterable

import numpy as np
import onnx_ir as ir

from edgefold.analysis import shapes

Dims = tuple[int | None, ...]

# Largest constant we will materialise to inspect its values (axes, bounds, scalars).
SMALL_CONST_ELEMENTS = 64
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_FOLDABLE = {"Cast", "CastLike", "Identity", "Reshape", "Squeeze", "Unsqueeze"}
_FOLD_DEPTH = 4


class GraphIndex:
    """Read-only lookups over a model's main graph: producers, consumers, constants, shapes and labels."""

    def __init__(self, model: ir.Model):
        self.model = model
        self.graph = model.graph
        self.nodes: list[ir.Node] = list(self.graph)
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self._in_main = set(self.position)
        self._by_name = {n.name: n for n in self.nodes if n.name}
        self._values: dict[str, ir.Value] = {v.name: v for v in self.graph.inputs if v.name}
        self._values.update((name, v) for name, v in self.graph.initializers.items())
        for node in self.nodes:
            self._values.update((v.name, v) for v in node.outputs if v.name)
        # Nodes inside If/Loop bodies, mapped to the main-graph node that owns them.
        self._outer: dict[int, ir.Node] = {}
        for node in self.nodes:
            for sub in _subgraphs(node):
                for inner in sub.all_nodes():
                    self._outer[id(inner)] = node
        self._graph_inputs = {id(v) for v in self.graph.inputs}
        # Shapes the file lacks are filled by ONNX shape inference, kept beside the model
        # (the caller's model is not modified).
        self._inferred: dict[str, Dims] = shapes.infer_missing(model)
        self._label_cache: dict[int, list[str]] = {}

    # --- structure -----------------------------------------------------------------
    def producer(self, value: ir.Value | None) -> ir.Node | None:
        """Main-graph node that writes `value`, or None for graph inputs, initializers and subgraph values."""
        if value is None:
            return None
        node = value.producer()
        return node if node is not None and id(node) in self._in_main else None

    def consumers(self, value: ir.Value | None) -> list[ir.Node]:
        """Distinct main-graph nodes reading `value`, in graph order."""
        if value is None:
            return []
        seen: dict[int, ir.Node] = {}
        for use in value.uses():
            node = use.node
            if id(node) in self._in_main:
                seen.setdefault(id(node), node)
            elif id(node) in self._outer:  # read inside an If/Loop body: the outer node reads it
                outer = self._outer[id(node)]
                seen.setdefault(id(outer), outer)
        return sorted(seen.values(), key=lambda n: self.position[id(n)])

    def value_readers(self, value: ir.Value | None) -> list[ir.Node]:
        """Consumers that read the values, not just the shape or dtype (Shape, CastLike's 2nd input)."""
        return [n for n in self.consumers(value) if not metadata_only(n, value)]

    def node(self, name: str) -> ir.Node:
        """Main-graph node with this name (KeyError if there is none)."""
        return self._by_name[name]

    def value(self, name: str) -> ir.Value | None:
        """Graph input, initializer or node output with this name, or None."""
        return self._values.get(name)

    def is_graph_output(self, value: ir.Value) -> bool:
        """Whether `value` is one of the graph's outputs."""
        return value.is_graph_output()

    def order(self, node: ir.Node) -> int:
        """Position of `node` in the main graph's topological order."""
        return self.position[id(node)]

    # --- constants -----------------------------------------------------------------
    def initializer(self, value: ir.Value | None) -> ir.Value | None:
        """The value itself if it is an initializer that callers cannot override."""
        if value is None or not value.is_initializer() or id(value) in self._graph_inputs:
            return None
        return value

    def is_constant(self, value: ir.Value | None, _depth: int = 0) -> bool:
        """Whether `value` is fixed at export time: an initializer, a Constant, or a cast/reshape of one."""
        if value is None:
            return False
        if self.initializer(value) is not None:
            return True
        node = self.producer(value)
        if node is None or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Constant":
            return True
        # Unoptimised exports wrap constants in casts/reshapes (e.g. Clip bounds are
        # CastLike(const, x)); those are still constants.
        if node.op_type in _FOLDABLE and _depth < _FOLD_DEPTH:
            return all(v is None or self.is_constant(v, _depth + 1) for v in _data_inputs(node))
        return False

    def const_shape(self, value: ir.Value) -> tuple[int, ...] | None:
        """Static shape of a constant (or any fully known value), or None if it cannot be told."""
        if self.initializer(value) is not None:
            tensor = value.const_value
            if tensor is not None:
                return tuple(int(d) for d in tensor.shape)
        dims = self.shape(value)
        if dims is not None and all(d is not None for d in dims):
            return tuple(int(d) for d in dims)  # type: ignore[arg-type]
        array = self._fold(value, 0)
        return None if array is None else tuple(array.shape)

    def const_numel(self, value: ir.Value) -> int | None:
        """Element count of `value` from its static shape, or None if the shape is unknown."""
        shape = self.const_shape(value)
        return None if shape is None else int(np.prod(shape, dtype=np.int64))

    def is_scalar_constant(self, value: ir.Value | None) -> bool:
        """Whether `value` is a constant holding exactly one element."""
        return self.is_constant(value) and self.const_numel(value) == 1  # type: ignore[arg-type]

    def small_const(self, value: ir.Value | None) -> np.ndarray | None:
        """Values of a small constant (scalars, axes, shapes); None for anything else."""
        if value is None or not self.is_constant(value):
            return None
        array = self._fold(value, 0)
        return array if array is not None and array.size <= SMALL_CONST_ELEMENTS else None

    def _fold(self, value: ir.Value | None, depth: int) -> np.ndarray | None:
        """Evaluate a constant; initializers only when small (weights stay on disk)."""
        if value is None:
            return None
        if self.initializer(value) is not None:
            tensor = value.const_value
            if tensor is None or int(np.prod(tensor.shape, dtype=np.int64)) > SMALL_CONST_ELEMENTS:
                return None
            return np.asarray(tensor.numpy())
        node = self.producer(value)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            return _constant_node_array(node)
        if node.op_type not in _FOLDABLE or depth >= _FOLD_DEPTH:
            return None
        data = self._fold(node.inputs[0], depth + 1)
        if data is None:
            return None
        try:
            if node.op_type == "Reshape":
                target = self._fold(node.inputs[1], depth + 1)
                if target is None:
                    return None
                target = [data.shape[i] if t == 0 and i < data.ndim else int(t) for i, t in enumerate(target)]
                return data.reshape(target)
            if node.op_type in ("Squeeze", "Unsqueeze"):
                axes = self._fold(node.inputs[1], depth + 1) if len(node.inputs) > 1 else self.attr(node, "axes")
                if node.op_type == "Squeeze":
                    return np.squeeze(data, axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)))
                for axis in sorted(int(a) % (data.ndim + len(np.atleast_1d(axes))) for a in np.atleast_1d(axes)):
                    data = np.expand_dims(data, axis)
                return data
        except (ValueError, TypeError):
            return None
        return data  # Cast, CastLike, Identity: values unchanged for our purposes

    # --- shapes --------------------------------------------------------------------
    def shape(self, value: ir.Value | None) -> Dims | None:
        """Dims with None for symbolic/unknown entries; None if even the rank is unknown."""
        if value is None:
            return None
        if value.shape is not None:
            return tuple(d if isinstance(d, int) else None for d in value.shape)
        return self._inferred.get(value.name or "")

    def static_dim(self, value: ir.Value | None, axis: int) -> int | None:
        """Size of `value` along `axis` (negative counts from the end); None if symbolic or unknown."""
        dims = self.shape(value)
        if dims is None or not -len(dims) <= axis < len(dims):
            return None
        return dims[axis]

    # --- attributes ----------------------------------------------------------------
    @staticmethod
    def attr(node: ir.Node, name: str, default=None):
        """Value of the node's attribute `name`, or `default` when the node does not set it."""
        attribute = node.attributes.get(name)
        return default if attribute is None else attribute.value

    # --- labels --------------------------------------------------------------------
    def scopes(self, node: ir.Node) -> list[str]:
        """Torch module paths from the exporter's metadata, outermost first.

        Used for human-readable labels only, never to decide what a node is.
        """
        key = id(node)
        if key not in self._label_cache:
            raw = node.metadata_props.get(NAME_SCOPES_KEY) if node.metadata_props else None
            scopes: list[str] = []
            if raw:
                try:
                    parsed = ast.literal_eval(raw)
                    if isinstance(parsed, (list, tuple)):
                        # The last entry names the op itself (e.g. 'linear_4'), not a module.
                        scopes = [s for s in parsed[:-1] if isinstance(s, str) and s]
                except (ValueError, SyntaxError):
                    scopes = []
            self._label_cache[key] = scopes
        return self._label_cache[key]

    def label(self, node: ir.Node) -> str:
        """Human-readable name for `node`: its innermost torch module path, else its name or op type."""
        scopes = self.scopes(node)
        return scopes[-1] if scopes else node.name or node.op_type

    def common_label(self, nodes: Iterable[ir.Node]) -> str:
        """Deepest module scope shared by all nodes (e.g. 'model.layers.0.mlp')."""
        nodes = list(nodes)
        lists = [self.scopes(n) for n in nodes]
        if not lists or any(not s for s in lists):
            return nodes[0].name if nodes else ""  # no exporter metadata: name the first node
        common = lists[0]
        for other in lists[1:]:
            shared = set(other)
            common = [s for s in common if s in shared]
        return common[-1] if common else "model"  # modules directly on the root module


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    found: list[ir.Graph] = []
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            found.append(attribute.value)
        elif attribute.type == ir.AttributeType.GRAPHS:
            found.extend(attribute.value)
    return found


def metadata_only(node: ir.Node, value: ir.Value | None) -> bool:
    """True when `node` reads only the shape or dtype of `value`."""
    if node.op_type in ("Shape", "Size"):
        return True
    return node.op_type == "CastLike" and node.inputs[0] is not value


def _data_inputs(node: ir.Node) -> list[ir.Value | None]:
    """Inputs whose values matter (CastLike's second input only lends its dtype)."""
    return list(node.inputs[:1]) if node.op_type in ("Cast", "CastLike", "Identity") else list(node.inputs)


def _constant_node_array(node: ir.Node | None) -> np.ndarray | None:
    if node is None or node.op_type != "Constant":
        return None
    for name, attribute in node.attributes.items():
        value = attribute.value
        if name == "value":
            return np.asarray(value.numpy())
        if name in ("value_float", "value_int"):
            return np.asarray(value)
        if name in ("value_floats", "value_ints"):
            return np.asarray(list(value))
    return None
