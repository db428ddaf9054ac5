"""Output-channel surgery for conv/BN chains and everything that reads them.

A *channel set* is the smallest unit that can change width: conv groups bound by
depthwise convs (output channel c is input channel c), residual adds and elementwise
products share one channel index, so they get one assignment, computed once. The
surgery is one pair of maps on that index, as for FFNs: every member's output rows
(conv weight, conv bias, BatchNormalization params; depthwise convs too, with their
`group` attribute) go through the producer map, every reader outside the set (conv
in-channels, Gemm/MatMul in-features) through the consumer map.

Members with BN are merged in the BN-folded space, i.e. the merged channel computes
the (weighted) mean of the members' normalised outputs, then is written back as
conv + explicit BN with natural parameters (mean gamma/beta, mean running var), so a
later statistics repair has real BN statistics to adjust.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.initializers import (array, forget_shape, forget_shapes_downstream, node_by_name,
                                                 replace_initializer)

TIE_KINDS = {"residual-add", "elementwise", "depthwise"}


@dataclass
class ChannelSet:
    """Conv groups sharing one output-channel index (in graph order)."""

    name: str
    members: list  # analysis ConvChannelGroup
    consumers: list[str]  # nodes reading the channels (members too, except depthwise ones)
    width: int
    label: str
    reason: str | None = None  # why it is left as is; None when foldable

    @property
    def producers(self) -> list:
        """Members that write the channels (the non-depthwise convs)."""
        return [m for m in self.members if not m.depthwise]

    @property
    def passthrough(self) -> list:
        """Depthwise members, which carry the channels through one to one."""
        return [m for m in self.members if m.depthwise]


def channel_sets(analysis) -> list[ChannelSet]:
    """Union of conv groups over their channel ties; concats are left as is."""
    groups = {g.name: g for g in analysis.conv_groups}
    parent = {name: name for name in groups}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    concat_members: set[str] = set()
    for tie in analysis.ties:
        members = [m for m in tie.members if m in groups]
        if tie.kind in TIE_KINDS:
            for other in members[1:]:
                a, b = root(members[0]), root(other)
                if a != b:
                    parent[max(a, b, key=_index)] = min(a, b, key=_index)
        elif tie.kind == "concat":
            concat_members.update(members)

    by_root: dict[str, list] = {}
    for name in sorted(groups, key=_index):
        by_root.setdefault(root(name), []).append(groups[name])
    blocked_roots = {root(m) for m in concat_members}
    sets = []
    for key, members in by_root.items():
        # A depthwise member's input channels are its own; any other member reading the
        # set (the 1x1 conv of a residual branch) is a reader like any other.
        passthrough = {m.conv for m in members if m.depthwise}
        consumers: list[str] = []
        for m in members:
            consumers.extend(c for c in m.consumers if c not in passthrough and c not in consumers)
        widths = {m.out_channels for m in members}
        reason = None
        if key in blocked_roots:
            reason = "channels are concatenated (concat folding is not supported)"
        elif len(widths) != 1:
            reason = f"tied groups have different widths {sorted(widths)}"
        elif not all(m.prunable for m in members):
            reason = "analysis marked the channels as not prunable"
        sets.append(ChannelSet(name=key, members=members, consumers=consumers, width=members[0].out_channels,
                               label=members[0].layer_label, reason=reason))
    return sets


def _index(name: str) -> int:
    return int(name.rsplit(".", 1)[1])


# --- reading ---------------------------------------------------------------------------

@dataclass
class BatchNormParams:
    """A BatchNormalization node's scale, bias, running mean and variance (float64) and epsilon."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    names: list[str] = field(default_factory=list)  # initializer names (scale, B, mean, var)

    @property
    def a(self) -> np.ndarray:
        """The per-channel multiplier BN applies: gamma / sqrt(var + eps)."""
        return self.gamma / np.sqrt(self.var + self.eps)


def batchnorm_params(model: ir.Model, node: ir.Node) -> BatchNormParams:
    """The parameters of BatchNormalization `node`, with its initializer names (epsilon 1e-5 if unset)."""
    names = [v.name for v in node.inputs[1:5]]
    values = [array(model, n).astype(np.float64) for n in names]
    eps_attr = node.attributes.get("epsilon")
    eps = float(eps_attr.value) if eps_attr is not None else 1e-5
    return BatchNormParams(*values, eps=eps, names=names)


def effective_rows(model: ir.Model, group) -> np.ndarray:
    """Output channel rows of a member as it acts after its BN: [a * W | a * (b - mean) + beta]
    (a depthwise member's rows are its spatial filters)."""
    nodes = node_by_name(model)
    weight = array(model, group.weight).astype(np.float64).reshape(group.out_channels, -1)
    bias = array(model, group.bias).astype(np.float64) if group.bias else np.zeros(group.out_channels)
    if group.batchnorm:
        bn = batchnorm_params(model, nodes[group.batchnorm])
        scale = bn.a
        return np.concatenate([weight * scale[:, None], (scale * (bias - bn.mean) + bn.beta)[:, None]], axis=1)
    return np.concatenate([weight, bias[:, None]], axis=1)


def set_features(model: ir.Model, cset: ChannelSet) -> np.ndarray:
    """One row per channel: every member's effective rows side by side, each member block
    scaled to unit mean row norm so that no member dominates the joint clustering."""
    blocks = []
    for member in cset.members:
        rows = effective_rows(model, member)
        norm = np.linalg.norm(rows, axis=1).mean()
        blocks.append(rows / (norm if norm > 0 else 1.0))
    return np.concatenate(blocks, axis=1)


def producer_norms(model: ir.Model, cset: ChannelSet) -> np.ndarray:
    """Magnitude score per channel for the pruning baseline: L2 norm of the first
    producer's effective (BN-folded) filter."""
    first = cset.producers[0] if cset.producers else cset.members[0]
    return np.linalg.norm(effective_rows(model, first)[:, :-1], axis=1)


# --- writing ---------------------------------------------------------------------------

def remap_channel_set(model: ir.Model, cset: ChannelSet, producer_map: np.ndarray, consumer_map: np.ndarray,
                      *, channel_scale: np.ndarray | None = None,
                      reader_maps: dict[str, np.ndarray] | None = None,
                      reader_shifts: dict[str, np.ndarray] | None = None) -> None:
    """Apply the maps to every member and reader of `cset` in place.

    `channel_scale` (length k, Fold-AR) scales each new channel (via BN gamma when
    there is one). `reader_maps[node]` replaces `consumer_map` for one reader;
    `reader_shifts[node]` (per output) is added back to that reader's pre-activation
    output, through its BN running mean or its bias.
    """
    nodes = node_by_name(model)
    k, n = producer_map.shape
    if n != cset.width or consumer_map.shape != (n, k):
        raise ValueError(f"{cset.name}: maps do not match width {cset.width}")
    # Readers first: a member can read the set too (residual branch), and its shift is
    # per original output channel, before its own outputs merge.
    for name in cset.consumers:
        _remap_reader(model, nodes[name], (reader_maps or {}).get(name, consumer_map))
        if reader_shifts and name in reader_shifts:
            _shift_reader(model, nodes[name], reader_shifts[name])
    for member in cset.members:
        _remap_member(model, nodes, member, producer_map, channel_scale)
    _fix_reshapes_and_shapes(model, nodes, cset, k)


def _remap_member(model, nodes, member, producer_map, channel_scale) -> None:
    conv = nodes[member.conv]
    weight = array(model, member.weight).astype(np.float64)
    flat = weight.reshape(weight.shape[0], -1)
    bias = array(model, member.bias).astype(np.float64) if member.bias else None
    k = producer_map.shape[0]
    scale = np.ones(k) if channel_scale is None else channel_scale
    if member.batchnorm:
        bn_node = nodes[member.batchnorm]
        bn = batchnorm_params(model, bn_node)
        a = bn.a
        gamma = producer_map @ bn.gamma
        magnitude = producer_map @ np.abs(bn.gamma)
        # Members of opposite sign would cancel in gamma; keep the magnitude instead.
        weak = np.abs(gamma) < 0.5 * magnitude
        gamma = np.where(weak, magnitude * np.where(gamma < 0, -1.0, 1.0), gamma)
        var = producer_map @ bn.var
        new_a = gamma / np.sqrt(var + bn.eps)
        new_flat = (producer_map @ (flat * a[:, None])) / new_a[:, None]
        new_mean = (producer_map @ (a * bn.mean)) / new_a
        new_bias = (producer_map @ (a * bias)) / new_a if bias is not None else None
        beta = producer_map @ bn.beta
        gamma = gamma * scale
        _write(model, bn.names[0], gamma, bn_node)
        _write(model, bn.names[1], beta, bn_node)
        _write(model, bn.names[2], new_mean, bn_node)
        _write(model, bn.names[3], var, bn_node)
        forget_shape(bn_node.outputs[0])
    else:
        new_flat = (producer_map @ flat) * scale[:, None]
        new_bias = (producer_map @ bias) * scale if bias is not None else None
    _write(model, member.weight, new_flat.reshape((k,) + weight.shape[1:]), conv)
    if bias is not None:
        _write(model, member.bias, new_bias, conv)
    if member.depthwise:
        conv.attributes["group"] = ir.AttrInt64("group", k)
    forget_shape(conv.outputs[0])


def _write(model: ir.Model, name: str, data: np.ndarray, reader: ir.Node) -> None:
    replace_initializer(model, name, data, readers=[reader])


def reader_weight(node: ir.Node) -> tuple[ir.Value, int]:
    """(weight value, input-channel axis) of a conv or linear reading the channels."""
    weight = node.inputs[1]
    if weight is None or not weight.is_initializer():
        raise ValueError(f"{node.name}: weight is not an initializer")
    if node.op_type == "Conv":
        group = node.attributes.get("group")
        if group is not None and int(group.value) != 1:
            raise ValueError(f"{node.name}: grouped conv reader")
        return weight, 1
    if node.op_type == "Gemm":
        trans_a = node.attributes.get("transA")
        if trans_a is not None and int(trans_a.value):
            raise ValueError(f"{node.name}: Gemm with transA")
        trans_b = node.attributes.get("transB")
        return weight, 1 if trans_b is not None and int(trans_b.value) else 0
    if node.op_type == "MatMul":
        return weight, 0
    raise ValueError(f"{node.name}: {node.op_type} reader is not supported")


def _remap_reader(model: ir.Model, node: ir.Node, consumer_map: np.ndarray) -> None:
    weight, axis = reader_weight(node)
    data = array(model, weight.name).astype(np.float64)
    moved = np.moveaxis(data, axis, -1) @ consumer_map
    _write(model, weight.name, np.moveaxis(moved, -1, axis), node)


def _shift_reader(model: ir.Model, reader: ir.Node, shift: np.ndarray) -> None:
    """Add `shift` to the reader's output before its activation: lower its BN running
    mean, or raise its bias (Gemm C, conv bias). Without either there is nowhere to put it."""
    bn_node = _bn_after(reader) if reader.op_type == "Conv" else None
    if bn_node is not None:
        bn = batchnorm_params(model, bn_node)
        _write(model, bn.names[2], bn.mean - shift, bn_node)
        return
    bias = reader.inputs[2] if len(reader.inputs) > 2 else None
    if bias is not None and bias.is_initializer() and bias.const_value is not None:
        data = bias.const_value.numpy().astype(np.float64)
        if data.shape == shift.shape:
            _write(model, bias.name, data + shift, reader)


def _bn_after(node: ir.Node) -> ir.Node | None:
    uses = list(node.outputs[0].uses())
    if len(uses) == 1 and uses[0].node.op_type == "BatchNormalization" and uses[0].idx == 0:
        return uses[0].node
    return None


# Ops between a set's members and its readers that keep channels on axis 1.
_WALK_STOP = {"Conv", "Gemm", "MatMul", "Concat"}


def _fix_reshapes_and_shapes(model: ir.Model, nodes, cset: ChannelSet, k: int) -> None:
    """Forget stale shapes from the members to the readers, and give Reshapes there that
    spell out the old width (e.g. [-1, 1280] before a classifier) a new shape constant."""
    def follow(use) -> bool:
        if use.node.op_type in _WALK_STOP:
            return False
        if use.node.op_type == "Reshape" and use.idx == 0:
            _resize_shape_constant(model, use.node, cset.width, k)
        return True

    forget_shapes_downstream([v for m in cset.members for v in nodes[m.conv].outputs], follow)


def _resize_shape_constant(model: ir.Model, reshape: ir.Node, old: int, new: int) -> None:
    shape_value = reshape.inputs[1]
    if shape_value is None or not shape_value.is_initializer() or shape_value.const_value is None:
        return
    target = shape_value.const_value.numpy().copy()
    if target.ndim != 1 or target.size < 2 or int(target[1]) != old:
        return
    target[1] = new
    replace_initializer(model, shape_value.name, target, readers=[reshape])
