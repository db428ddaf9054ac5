"""Graph analysis: find prunable structures and the channel groups that change together.

`analyse(model)` reads an ONNX graph as the dynamo exporter writes it and returns an
`Analysis` of FFN blocks, attention blocks (GQA-aware), conv channel groups, the ties
between them, a per-layer cost table, and what was left as is. Groups refer to exact
ONNX node and initializer names so compression passes can act on them.
"""

from edgefold.analysis.analyser import analyse
from edgefold.analysis.groups import (
    Analysis,
    AttentionGroup,
    ChannelTie,
    ConvChannelGroup,
    FfnGroup,
    LayerRow,
    LinearRef,
    WeightStorage,
)
from edgefold.analysis.report import print_table

__all__ = [
    "Analysis",
    "AttentionGroup",
    "ChannelTie",
    "ConvChannelGroup",
    "FfnGroup",
    "LayerRow",
    "LinearRef",
    "WeightStorage",
    "analyse",
    "print_table",
]
