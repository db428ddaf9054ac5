"""What the analysis finds, as plain dataclasses.

Compression passes consume these by name: every `node`/`weight`/`bias` string is an
exact ONNX node name or initializer name in the analysed graph, so a pass can look
it up again after loading the same file. Nothing here holds onnx_ir objects, which
keeps groups cheap to copy, compare and write to JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class LinearRef:
    """A MatMul/Gemm whose weight is an initializer.

    `weight` is indexed by `out_axis` for output features and `in_axis` for input
    features: MatMul(x, W) has W [in, out] (out_axis=1); Gemm with transB=1 and a
    MatMul fed by Transpose(W) have W [out, in] (out_axis=0). When `transpose` is
    set the pass must slice the initializer, not the Transpose output.
    `bias_node` is the Add after a MatMul, or the Gemm itself when the bias is its C.
    `output` is the value that carries the finished (biased) result.
    """

    node: str
    weight: str
    out_axis: int
    in_axis: int
    bias: str | None = None
    bias_node: str | None = None
    transpose: str | None = None
    in_features: int = 0
    out_features: int = 0
    output: str = ""
    # Other nodes reading the same initializer (tied weights, or identical tensors the
    # exporter's optimizer merged): a pass must copy before editing, never edit in place.
    weight_shared_with: tuple[str, ...] = ()
    bias_shared_with: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class FfnGroup:
    """An MLP block: producers write `intermediate` channels, the consumer reads them.

    Channel c of the intermediate is output c of every producer and input c of the
    consumer, so pruning removes the same index from all of them (and from any bias).
    For kind "gated", producers[0] is the gate (the branch through the activation)
    and producers[1] the up projection; "plain" has a single producer.
    `nodes` are the elementwise nodes between producers and consumer.
    """

    name: str
    kind: Literal["gated", "plain"]
    activation: str
    producers: list[LinearRef]
    consumer: LinearRef
    hidden: int
    intermediate: int
    layer_label: str
    nodes: list[str] = field(default_factory=list)

    @property
    def gate(self) -> LinearRef | None:
        """The gate projection (the branch through the activation); None for a plain MLP."""
        return self.producers[0] if self.kind == "gated" else None

    @property
    def up(self) -> LinearRef:
        """The up projection (the only producer of a plain MLP)."""
        return self.producers[-1]

    @property
    def down(self) -> LinearRef:
        """The down projection, which reads the intermediate channels."""
        return self.consumer


@dataclass(frozen=True)
class AttentionGroup:
    """A multi-head attention block, GQA-aware.

    Channel layout is head-major: q output channels [h*head_dim, (h+1)*head_dim) are
    query head h; k/v channels likewise per kv head (v uses `v_head_dim`); o's input
    channel block h (v_head_dim wide) comes from query head h. `kv_groups[j]` lists the
    query heads that read kv head j, so removing kv head j removes those query heads.
    """

    name: str
    q: LinearRef
    k: LinearRef
    v: LinearRef
    o: LinearRef
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_groups: list[list[int]]
    layer_label: str
    v_head_dim: int = 0
    softmax: str = ""
    scores_matmul: str = ""
    context_matmul: str = ""
    kv_repeat: Literal["none", "interleave", "tile", "broadcast"] = "none"
    rope: bool = False
    # Reshape/Expand/Tile nodes on the q/k/v/merge paths: their shape inputs carry head
    # counts (often as constants shared across layers) and change when heads are pruned.
    shape_nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConvChannelGroup:
    """The output channels of one Conv, with what is folded into them.

    `batchnorm` and `activation_node` act per channel and are sliced with the conv.
    A depthwise conv keeps its input's channels: its group is tied to the group it
    reads (`channel_source` and a ChannelTie of kind "depthwise"), so they must be
    pruned together. `consumers` are the weighted nodes (convs incl. depthwise,
    Gemm/MatMul) and Concat nodes that read these channels, directly or through
    channel-preserving ops and residual adds.
    """

    name: str
    conv: str
    weight: str
    bias: str | None
    batchnorm: str | None
    activation: str | None
    depthwise: bool
    out_channels: int
    consumers: list[str]
    layer_label: str
    in_channels: int = 0
    kernel: tuple[int, ...] = ()
    group: int = 1
    activation_node: str | None = None
    output: str = ""
    channel_source: str | None = None
    prunable: bool = True


ChannelTieKind = Literal["residual-add", "elementwise", "concat", "depthwise", "residual-stream"]


@dataclass(frozen=True)
class ChannelTie:
    """Groups whose channels are bound together by one node.

    residual-add / elementwise (e.g. a squeeze-excite Mul) / depthwise: members' output
    channels must share one assignment.
    concat: members are concatenated in this order (offsets follow out_channels).
    residual-stream: a transformer's hidden dimension; members are the attention/FFN
    groups writing into it, `nodes` the residual Adds. Recorded, not prunable here.
    """

    kind: ChannelTieKind
    node: str
    members: list[str]
    nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayerRow:
    """One weighted layer for the per-layer table. MACs are per token (sequence
    models) or per image (CNNs); attention score/context products are not counted."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    bytes: int
    macs: int
    label: str = ""
    note: str = ""


@dataclass(frozen=True)
class WeightStorage:
    """One weight tensor as the model stores it (analysis/weights.py): whatever format it is
    in, `bytes` are all the bytes that hold it (codes, scales, zero points, minimums)."""

    name: str  # what the readers read: the original initializer's name (quantize keeps it)
    kind: str  # embedding, linear, conv; "embedding+linear" for an embedding tied to the lm_head
    readers: tuple[str, ...]  # node names, graph order
    elements: int
    bytes: int
    dtype: str  # of the largest stored tensor (the codes): fp32, fp16, fp8, int8, int4, uint4, ...
    tensors: tuple[str, ...]  # the initializers that hold it

    @property
    def bits(self) -> float:
        """Stored bits per weight element, counting scales and zero points; 0.0 for an empty tensor."""
        return 8.0 * self.bytes / self.elements if self.elements else 0.0

    def keys(self) -> tuple[str, ...]:
        """Names that find the same weight in another version of the graph, best first: its name,
        then its readers (MatMulNBits is named after the MatMul it replaced, plus `_nbits`)."""
        return tuple(dict.fromkeys([self.name, *self.readers, *(r.removesuffix("_nbits") for r in self.readers)]))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    return value


@dataclass
class Analysis:
    """Everything found in one graph. Lists are in graph (topological) order."""

    ffns: list[FfnGroup]
    attentions: list[AttentionGroup]
    conv_groups: list[ConvChannelGroup]
    ties: list[ChannelTie]
    layers: list[LayerRow]
    left_as_is: list[str]
    totals: dict[str, Any]
    weights: list[WeightStorage] = field(default_factory=list)  # each weight once, as stored

    def summary(self) -> dict[str, int]:
        """Counts of what was found (groups, ties, layers, left-as-is), keyed by short names for tables and JSON."""
        depthwise = sum(1 for g in self.conv_groups if g.depthwise)
        ties: dict[str, int] = {}
        for tie in self.ties:
            ties[tie.kind] = ties.get(tie.kind, 0) + 1
        return {
            "ffn": len(self.ffns),
            "ffn_gated": sum(1 for f in self.ffns if f.kind == "gated"),
            "attention": len(self.attentions),
            "conv": len(self.conv_groups),
            "conv_depthwise": depthwise,
            "conv_prunable": sum(1 for g in self.conv_groups if g.prunable),
            "ties_residual_add": ties.get("residual-add", 0),
            "ties_concat": ties.get("concat", 0),
            "ties_depthwise": ties.get("depthwise", 0),
            "ties_residual_stream": ties.get("residual-stream", 0),
            "layers": len(self.layers),
            "left_as_is": len(self.left_as_is),
        }

    def to_json(self) -> dict[str, Any]:
        """A stable, JSON-ready dict (dict keys sorted; lists in graph order)."""
        return {
            "attentions": _plain(self.attentions),
            "conv_groups": _plain(self.conv_groups),
            "ffns": _plain(self.ffns),
            "layers": _plain(self.layers),
            "left_as_is": list(self.left_as_is),
            "summary": _plain(self.summary()),
            "ties": _plain(self.ties),
            "totals": _plain(self.totals),
        }
