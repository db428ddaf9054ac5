"""The transformer residual stream: one tie over the hidden dimension.

Every attention output projection and FFN down projection adds into the same hidden
vector, so their output channels (and every norm on the stream) share one index
space. We record it so passes know the hidden size is tied; it is not a prunable group.
"""

from __future__ import annotations

from edgefold.analysis.graph_index import GraphIndex
from edgefold.analysis.groups import AttentionGroup, ChannelTie, FfnGroup


def residual_stream(ix: GraphIndex, ffns: list[FfnGroup], attentions: list[AttentionGroup]) -> ChannelTie | None:
    """The tie over the hidden dimension shared by every attention/FFN output that adds into the residual stream;
    None if no block output feeds a residual Add."""
    writers = {a.o.output: a.name for a in attentions}
    writers.update({f.consumer.output: f.name for f in ffns})
    found = []
    for output, group in writers.items():
        value = ix.value(output)
        for reader in ix.consumers(value):
            if reader.op_type == "Add" and not any(ix.is_constant(v) for v in reader.inputs):
                found.append((ix.order(reader), reader.name, group))
    if not found:
        return None
    found.sort()
    return ChannelTie(
        kind="residual-stream",
        node=found[0][1],
        members=[group for _, _, group in found],
        nodes=[name for _, name, _ in found],
    )
