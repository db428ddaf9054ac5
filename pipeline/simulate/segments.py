"""Run an ONNX model layer by layer, stopping inside every MLP to mask it.

DIP-CA's mask for layer l at token t depends on layer l's cache after token t-1, and
the activations that reach layer l depend on the masks of earlier layers. A single
onnxruntime call cannot express that, so the graph is cut at every MLP: segment s
holds the nodes that depend (transitively) on exactly s MLP outputs, and each MLP is
split into its producers (x -> GLU(x)) and its consumer (h -> down(h)). The runner
alternates onnxruntime calls with a mask callback:

    segment 0 -> x0 -> mask -> producers 0 -> h0 -> mask -> consumer 0 -> segment 1 ...

Every number is computed by onnxruntime with the model's own nodes and weights; only
the choice of channels (the mask) is made outside the graph. So with plain DIP masks
the result is the `dip` pass's graph, computed in pieces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from edgefold import onnx_io
from edgefold.errors import EdgefoldError


@dataclass
class MlpBoundary:
    """Where MLP l reads its input, its intermediate and its output in the graph."""

    input: str  # x, read by the producers
    intermediate: str  # h = GLU(x), read by the consumer
    output: str  # y
    producer_nodes: frozenset[str]  # producers, their transposes/bias adds, the activation region
    consumer_nodes: frozenset[str]

    @property
    def nodes(self) -> frozenset[str]:
        """Every graph node that belongs to this MLP (producer and consumer side)."""
        return self.producer_nodes | self.consumer_nodes


def mlp_boundaries(proto: onnx.ModelProto, groups) -> list[MlpBoundary]:
    """Where each FFN group reads its input, intermediate and output in the graph, and the nodes it owns."""
    by_name = {node.name: node for node in proto.graph.node}
    bounds = []
    for group in groups:
        producer_inputs = {by_name[p.node].input[0] for p in group.producers}
        if len(producer_inputs) != 1:
            raise EdgefoldError(f"{group.name}: its producers read different tensors; cannot simulate it")
        producers = {p.node for p in group.producers} | set(group.nodes)
        for ref in group.producers:
            producers |= {n for n in (ref.transpose, ref.bias_node) if n}
        consumer = {group.consumer.node} | {n for n in (group.consumer.transpose, group.consumer.bias_node) if n}
        intermediate = by_name[group.consumer.node].input[0]
        bounds.append(MlpBoundary(producer_inputs.pop(), intermediate, group.consumer.output,
                                  frozenset(producers), frozenset(consumer)))
    return bounds


class SegmentedModel:
    """`run(feeds, mask)` gives the model's outputs, every MLP's input x and intermediate
    h replaced by `mask(layer, 0, x)` and `mask(layer, 1, h)` ([tokens, channels])."""

    def __init__(self, path: str | os.PathLike, groups, threads: int | None = None):
        proto = onnx_io.load_proto(path, with_data=True)
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in proto.graph.node for a in node.attribute):
            raise EdgefoldError(f"{path}: control-flow subgraphs (If/Loop) are not supported by the simulator")
        self.bounds = mlp_boundaries(proto, groups)
        self.widths = [(g.hidden, g.intermediate) for g in groups]  # (x channels, h channels) per MLP
        self.output_names = [o.name for o in proto.graph.output]
        self.input_names = [i.name for i in proto.graph.input]
        segment_of = self._assign_segments(proto)
        infos = self._value_infos(proto)
        initializers = {t.name: t for t in proto.graph.initializer}
        self.segments = [self._build(proto, s, segment_of, infos, initializers, threads)
                         for s in range(len(self.bounds) + 1)]
        def part(names):
            return [n for n in proto.graph.node if n.name in names]

        self.mlps = [(_sub_session(proto, part(b.producer_nodes), [b.input], [b.intermediate], infos, initializers,
                                   threads),
                      _sub_session(proto, part(b.consumer_nodes), [b.intermediate], [b.output], infos, initializers,
                                   threads))
                     for b in self.bounds]

    def _assign_segments(self, proto: onnx.ModelProto) -> dict[str, int]:
        """Segment of every value: how many MLP outputs it depends on."""
        owner = {name: index for index, b in enumerate(self.bounds) for name in b.nodes}
        level: dict[str, int] = {}
        for node in proto.graph.node:  # protobuf graphs are topologically sorted
            if node.name in owner:
                mlp = owner[node.name]
                for out in node.output:
                    level[out] = mlp + 1 if out == self.bounds[mlp].output else -1  # -1: MLP-internal
                continue
            inputs = [level.get(name, 0) for name in node.input if name]
            if any(v < 0 for v in inputs):
                raise EdgefoldError(f"node {node.name} reads an MLP's intermediate channels; cannot simulate")
            for out in node.output:
                level[out] = max(inputs, default=0)
        for index, bound in enumerate(self.bounds):
            if level.get(bound.input, 0) > index:
                raise EdgefoldError(f"MLP {index} reads a value computed after a later MLP; cannot simulate")
        return level

    @staticmethod
    def _value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
        graph = proto.graph
        infos = {v.name: v for v in [*graph.input, *graph.output, *graph.value_info]}
        if len(infos) < sum(len(n.output) for n in graph.node) // 2:
            structure = onnx.ModelProto()
            structure.CopyFrom(proto)
            del structure.graph.initializer[:]
            structure.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                         for t in proto.graph.initializer)
            inferred = onnx.shape_inference.infer_shapes(structure).graph
            infos.update({v.name: v for v in inferred.value_info})
        return infos

    def _build(self, proto, segment: int, level, infos, initializers, threads):
        owned = set().union(*(b.nodes for b in self.bounds))
        nodes = [n for n in proto.graph.node if n.name not in owned and _node_level(n, level) == segment]
        produced = {out for n in nodes for out in n.output}
        needed_later: set[str] = set(self.output_names)
        for node in proto.graph.node:
            if node.name in owned:
                needed_later.update(node.input)
            elif _node_level(node, level) != segment:
                needed_later.update(node.input)
        outputs = sorted(produced & needed_later)
        inputs = sorted({name for n in nodes for name in n.input
                         if name and name not in produced and name not in initializers})
        if not nodes:
            return _Segment(None, inputs, outputs)
        return _Segment(_sub_session(proto, nodes, inputs, outputs, infos, initializers, threads), inputs, outputs)

    def run(self, feeds: dict[str, np.ndarray], mask: Callable[[int, int, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `feeds`, with every MLP's input and intermediate channels replaced by
        `mask(layer, 0 or 1, values)` ([tokens, channels])."""
        env = dict(feeds)
        for index, segment in enumerate(self.segments):
            if segment.session is not None:
                values = segment.session.run(segment.outputs, {name: env[name] for name in segment.inputs})
                env.update(zip(segment.outputs, values))
            if index < len(self.bounds):
                bound = self.bounds[index]
                producers, consumer = self.mlps[index]
                x = _masked(mask, index, 0, env[bound.input])
                h = _masked(mask, index, 1, producers.run(None, {bound.input: x})[0])
                env[bound.output] = consumer.run(None, {bound.intermediate: h})[0]
        return {name: env[name] for name in self.output_names}


def _masked(mask, layer: int, group: int, values: np.ndarray) -> np.ndarray:
    """Hand the mask callback [tokens, channels] and restore the graph's shape."""
    flat = values.reshape(-1, values.shape[-1])
    return np.ascontiguousarray(mask(layer, group, flat).reshape(values.shape), dtype=values.dtype)


@dataclass
class _Segment:
    session: object
    inputs: list[str]
    outputs: list[str]


def _sub_session(proto, nodes: list, inputs: list[str], outputs: list[str], infos, initializers, threads):
    """An onnxruntime session for `nodes` (a graph-ordered part of `proto`)."""
    used = [initializers[i] for i in sorted({i for n in nodes for i in n.input if i in initializers})]

    def info(name: str) -> onnx.ValueInfoProto:
        if name not in infos:
            raise EdgefoldError(f"no type information for {name}; cannot cut the graph there")
        return infos[name]

    graph = helper.make_graph(nodes, "part", [info(n) for n in inputs], [info(n) for n in outputs], used)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return _session(model.SerializeToString(), threads)


def _node_level(node: onnx.NodeProto, level: dict[str, int]) -> int:
    return level[node.output[0]] if node.output else max((level.get(i, 0) for i in node.input), default=0)


def _session(model_bytes: bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # The runner alternates onnxruntime with numpy; spinning ORT threads would steal the
    # cores numpy needs between calls (measured: 2x slower on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
