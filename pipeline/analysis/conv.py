"""Conv channel groups and the ties between them (depthwise, residual adds, concats).

Each Conv with an initializer weight is one group: its output channels, with the
per-channel BatchNormalization and activation right after it folded in. We then push
"which groups' channels does this value carry" forward through the graph in
topological order: channel-preserving ops pass it on, weighted nodes record
themselves as consumers, depthwise convs add their own group (their channels are the
input's channels), Adds tie both sides, Concats tie their inputs in order. Channels
that reach anything else (graph outputs, reshapes that mix channels, unknown ops)
make their groups unprunable, reported as left as is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import onnx_ir as ir

from edgefold.analysis.graph_index import GraphIndex, metadata_only
from edgefold.analysis.groups import ChannelTie, ConvChannelGroup
from edgefold.analysis.linear import Linears

# Per-channel-independent ops that keep the channel axis where it is.
PASS_OPS = {
    "Relu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu",
    "Selu", "Celu", "Softplus", "Mish", "Identity", "Cast", "Dropout", "MaxPool",
    "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample", "Gelu",
}
ACTIVATIONS = {
    "Relu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Celu",
    "Softplus", "Mish", "Gelu",
}
SCALAR_OPS = {"Mul", "Div", "Add", "Sub", "Pow"}
REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2"}


@dataclass
class _Space:
    """The groups whose channels a value carries (concat: `concat` names the node)."""

    groups: frozenset[str]
    concat: str | None = None


@dataclass
class _Draft:
    group: ConvChannelGroup
    node: ir.Node
    absorbed: list[ir.Node] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    blocked: str | None = None
    channel_source: str | None = None


def find_conv_groups(ix: GraphIndex, linears: Linears) -> tuple[list[ConvChannelGroup], list[ChannelTie], list[str], set[str]]:
    """Returns groups, ties, left-as-is notes, and the linears consuming conv channels."""
    drafts: dict[str, _Draft] = {}
    by_conv: dict[int, _Draft] = {}
    absorbed: set[int] = set()
    notes: list[str] = []
    for node in ix.nodes:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        draft = _draft(ix, node, len(drafts), notes)
        if draft is None:
            continue
        drafts[draft.group.name] = draft
        by_conv[id(node)] = draft
        absorbed.update(id(n) for n in draft.absorbed)

    flow = _Flow(ix, linears, drafts)
    for node in ix.nodes:
        if id(node) in absorbed:
            continue
        if node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
            flow.conv(node, by_conv.get(id(node)))
        else:
            flow.other(node)
    flow.block_graph_outputs()
    flow.spread_blocks()

    groups: list[ConvChannelGroup] = []
    for draft in drafts.values():
        reason = draft.blocked
        prunable = reason is None and draft.group.prunable
        if reason is not None:
            notes.append(f"{draft.group.name} {draft.node.name} ({draft.group.layer_label}): channels left as is — {reason}")
        consumers = sorted(set(draft.consumers), key=lambda name: ix.order(ix.node(name)))
        groups.append(
            dataclasses.replace(draft.group, consumers=consumers, channel_source=draft.channel_source, prunable=prunable)
        )
    return groups, flow.ties, notes, flow.linear_consumers


def _draft(ix: GraphIndex, node: ir.Node, index: int, notes: list[str]) -> _Draft | None:
    if not node.name:  # groups refer to nodes by name (onnx_io.load names them all)
        notes.append(f"Conv ({ix.label(node)}): left as is — the node has no name")
        return None
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    shape = ix.const_shape(weight) if ix.initializer(weight) is not None else None
    if shape is None or len(shape) < 3:
        notes.append(f"Conv {node.name} ({ix.label(node)}): left as is — weight is not an initializer")
        return None
    group = int(ix.attr(node, "group", 1) or 1)
    out_channels, in_per_group = shape[0], shape[1]
    in_channels = in_per_group * group
    depthwise = group > 1 and in_per_group == 1 and out_channels == group
    if group > 1 and not depthwise:
        notes.append(f"Conv {node.name} ({ix.label(node)}): left as is — grouped conv (group={group}) is not supported")
        return None
    blocked = None
    bias = None
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    if bias_value is not None:
        if ix.initializer(bias_value) is not None:
            bias = bias_value.name
        else:
            blocked = f"bias {bias_value.name} is computed, not an initializer (fold constants first)"

    absorbed: list[ir.Node] = []
    out = node.outputs[0]
    batchnorm = None
    bn = _sole_reader(ix, out)
    if bn is not None and bn.name and bn.op_type == "BatchNormalization" and len(bn.outputs) == 1 and all(
        ix.initializer(v) is not None for v in bn.inputs[1:5]
    ):
        batchnorm = bn.name
        absorbed.append(bn)
        out = bn.outputs[0]
    activation, act_nodes = _activation_after(ix, out)
    if not all(n.name for n in act_nodes):
        activation, act_nodes = None, []
    if act_nodes:
        absorbed.extend(act_nodes)
        out = act_nodes[-1].outputs[0]
    label = weight.name[: -len(".weight")] if weight.name.endswith(".weight") else ix.label(node)
    draft_group = ConvChannelGroup(
        name=f"conv.{index}",
        conv=node.name,
        weight=weight.name,
        bias=bias,
        batchnorm=batchnorm,
        activation=activation,
        depthwise=depthwise,
        out_channels=out_channels,
        consumers=[],
        layer_label=label,
        in_channels=in_channels,
        kernel=tuple(shape[2:]),
        group=group,
        activation_node=act_nodes[-1].name if act_nodes else None,
        output=out.name,
    )
    return _Draft(group=draft_group, node=node, absorbed=absorbed, blocked=blocked)


def _sole_reader(ix: GraphIndex, value: ir.Value) -> ir.Node | None:
    readers = ix.value_readers(value)
    if len(readers) != 1 or ix.is_graph_output(value):
        return None
    return readers[0]


def _activation_after(ix: GraphIndex, value: ir.Value) -> tuple[str | None, list[ir.Node]]:
    """A per-channel activation reading only `value` (x*sigmoid(x) counts as silu)."""
    if ix.is_graph_output(value):
        return None, []
    readers = ix.value_readers(value)
    if len(readers) == 1 and readers[0].op_type in ACTIVATIONS and readers[0].inputs[0] is value:
        act = readers[0]
        if act.op_type == "Clip" and len(act.inputs) > 1:
            low = ix.small_const(act.inputs[1])
            high = ix.small_const(act.inputs[2]) if len(act.inputs) > 2 else None
            if low is not None and high is not None and float(low) == 0.0 and float(high) == 6.0:
                return "relu6", [act]
            if any(v is not None and not ix.is_scalar_constant(v) for v in act.inputs[1:]):
                return None, []
            return "clip", [act]
        if act.op_type == "HardSigmoid":
            return None, []  # usually half of a hard-swish; leave it to the flow
        name = {"LeakyRelu": "leaky_relu", "HardSwish": "hardswish"}.get(act.op_type, act.op_type.lower())
        return name, [act]
    if len(readers) == 2:
        sig = next((r for r in readers if r.op_type in ("Sigmoid", "HardSigmoid")), None)
        mul = next((r for r in readers if r.op_type == "Mul"), None)
        if sig is not None and mul is not None and set(map(id, mul.inputs)) == {id(value), id(sig.outputs[0])}:
            if len(ix.value_readers(sig.outputs[0])) == 1:
                return ("silu" if sig.op_type == "Sigmoid" else "hardswish"), [sig, mul]
    return None, []


class _Flow:
    """Forward propagation of channel spaces; collects consumers, ties and blocks."""

    def __init__(self, ix: GraphIndex, linears: Linears, drafts: dict[str, _Draft]):
        self.ix = ix
        self.linears = linears
        self.drafts = drafts
        self.space: dict[int, _Space] = {}
        self.ties: list[ChannelTie] = []
        self.concat_members: dict[str, list[str]] = {}  # one representative per input, in order
        self.concat_groups: dict[str, frozenset[str]] = {}  # every group any input carries
        self.linear_consumers: set[str] = set()

    # -- helpers --------------------------------------------------------------------
    def _spaces_of(self, node: ir.Node) -> list[tuple[int, ir.Value, _Space]]:
        return [(i, v, self.space[id(v)]) for i, v in enumerate(node.inputs) if v is not None and id(v) in self.space]

    def _members(self, space: _Space) -> list[str]:
        groups = self.concat_groups.get(space.concat, frozenset()) if space.concat is not None else space.groups
        return sorted(groups, key=self._index)

    def _index(self, name: str) -> int:
        return int(name.rsplit(".", 1)[1])

    def _consume(self, space: _Space, reader: ir.Node) -> None:
        if not reader.name:  # a consumer the passes could not find again
            self._block(space, f"read by an unnamed {reader.op_type}")
            return
        for name in self._members(space):
            self.drafts[name].consumers.append(reader.name)

    def _block(self, space: _Space, reason: str) -> None:
        for name in self._members(space):
            draft = self.drafts[name]
            if draft.blocked is None:
                draft.blocked = reason

    # -- nodes ----------------------------------------------------------------------
    def conv(self, node: ir.Node, draft: _Draft | None) -> None:
        x = node.inputs[0]
        incoming = self.space.get(id(x)) if x is not None else None
        if draft is None:  # unsupported conv (grouped, computed weight): channels stop here
            if incoming is not None:
                self._block(incoming, f"read by unsupported Conv {node.name}")
            return
        out = self.ix.value(draft.group.output)
        if incoming is not None:
            self._consume(incoming, node)
        if not draft.group.depthwise:
            self.space[id(out)] = _Space(frozenset({draft.group.name}))
            return
        # Depthwise: output channel c is input channel c, so the groups are tied.
        if incoming is None:
            draft.blocked = f"depthwise channels come from {x.name if x is not None else 'nothing'}, which no conv group owns"
            self.space[id(out)] = _Space(frozenset({draft.group.name}))
            return
        if incoming.concat is not None:
            draft.blocked = f"depthwise conv over concat {incoming.concat} is not supported"
            self._block(incoming, f"read by depthwise {node.name} after a concat")
            self.space[id(out)] = _Space(frozenset({draft.group.name}))
            return
        members = sorted(incoming.groups, key=self._index)
        draft.channel_source = members[0]
        self.ties.append(ChannelTie(kind="depthwise", node=node.name, members=members + [draft.group.name]))
        self.space[id(out)] = _Space(incoming.groups | {draft.group.name})

    def other(self, node: ir.Node) -> None:
        spaced = self._spaces_of(node)
        if not spaced:
            return
        op = node.op_type
        if all(metadata_only(node, v) for _, v, _ in spaced):
            return  # reads shape or dtype only
        ix = self.ix
        if node.name in self.linears.by_node:
            index, value, space = spaced[0]
            ref = self.linears.by_node[node.name]
            dims = ix.shape(value)
            if len(spaced) == 1 and index == 0 and dims is not None and len(dims) == 2 and dims[1] == ref.in_features:
                self._consume(space, node)
                self.linear_consumers.add(node.name)
            else:
                self._block(space, f"read by {op} {node.name} along a non-channel axis")
            return
        if op in PASS_OPS and len(spaced) == 1 and spaced[0][0] == 0:
            self._pass(node, spaced[0][2])
            return
        if op in REDUCE_OPS and len(spaced) == 1 and spaced[0][0] == 0 and self._spatial_reduce(node):
            self._pass(node, spaced[0][2])
            return
        if op in ("Reshape", "Flatten") and len(spaced) == 1 and spaced[0][0] == 0 and self._flattens_pooled(node):
            self._pass(node, spaced[0][2])
            return
        if op in SCALAR_OPS and len(spaced) == 1 and len(node.inputs) == 2:
            other = node.inputs[1 - spaced[0][0]]
            if ix.is_scalar_constant(other):
                self._pass(node, spaced[0][2])
                return
        if op in ("Add", "Sub", "Mul", "Max", "Min") and len(spaced) == 2 and len(node.inputs) == 2:
            a, b = spaced[0][2], spaced[1][2]
            if a.concat is None and b.concat is None:
                merged = a.groups | b.groups
                if a.groups != b.groups:  # x*sigmoid(x) reads one space twice: no tie needed
                    kind = "residual-add" if op in ("Add", "Sub") else "elementwise"
                    self.ties.append(ChannelTie(kind=kind, node=node.name, members=sorted(merged, key=self._index)))
                self._pass(node, _Space(merged))
                return
        if op == "Concat" and self._channel_axis(node) and len(spaced) == len([v for v in node.inputs if v is not None]):
            members: list[str] = []
            for _, _, space in spaced:
                if space.concat is not None or not space.groups:
                    break
                members.append(sorted(space.groups, key=self._index)[0])
            else:
                for _, _, space in spaced:
                    self._consume(space, node)
                self.concat_members[node.name] = members
                self.concat_groups[node.name] = frozenset().union(*(space.groups for _, _, space in spaced))
                self.ties.append(ChannelTie(kind="concat", node=node.name, members=members))
                self.space[id(node.outputs[0])] = _Space(frozenset(), concat=node.name)
                return
        for _, _, space in spaced:
            self._block(space, f"channels reach {op} {node.name}, which is not understood")

    def _pass(self, node: ir.Node, space: _Space) -> None:
        for out in node.outputs[:1]:
            self.space[id(out)] = space

    def _channel_axis(self, node: ir.Node) -> bool:
        axis = int(self.ix.attr(node, "axis", 0))
        rank = next((len(d) for v in node.inputs if (d := self.ix.shape(v)) is not None), None)
        return axis == 1 or (rank is not None and axis == 1 - rank)

    def _spatial_reduce(self, node: ir.Node) -> bool:
        dims = self.ix.shape(node.inputs[0])
        if dims is None:
            return False
        rank = len(dims)
        axes = self.ix.small_const(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None:
            axes = self.ix.attr(node, "axes")
        if axes is None:
            return False
        axes = {int(a) % rank for a in list(axes)}
        # With or without keepdims, reducing only spatial axes leaves channels on axis 1.
        return 0 not in axes and 1 not in axes

    def _flattens_pooled(self, node: ir.Node) -> bool:
        """[N, C, 1, 1] -> [N, C] keeps channel c at position c."""
        dims_in = self.ix.shape(node.inputs[0])
        dims_out = self.ix.shape(node.outputs[0])
        if dims_in is None or dims_out is None or len(dims_in) < 2 or len(dims_out) != 2:
            return False
        return all(d == 1 for d in dims_in[2:]) and dims_in[1] is not None and dims_out[1] == dims_in[1]

    # -- finishing ------------------------------------------------------------------
    def block_graph_outputs(self) -> None:
        for value in self.ix.graph.outputs:
            space = self.space.get(id(value))
            if space is not None:
                self._block(space, f"channels are graph output {value.name}")

    def spread_blocks(self) -> None:
        """Tied groups share one channel assignment, so one blocked member blocks all.

        Concat members keep independent channels (only offsets are shared): not spread.
        """
        changed = True
        while changed:
            changed = False
            for tie in self.ties:
                if tie.kind == "concat":
                    continue
                reasons = [self.drafts[m].blocked for m in tie.members if self.drafts[m].blocked]
                if not reasons:
                    continue
                for m in tie.members:
                    if self.drafts[m].blocked is None:
                        self.drafts[m].blocked = f"tied by {tie.kind} {tie.node} to blocked channels ({reasons[0]})"
                        changed = True
