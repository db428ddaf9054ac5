"""The per-feature gain of the norm right in front of a linear layer.

An FFN (or attention projection) reads `norm(x) * gain`. Folding that gain into the
reader's input columns gives the matrix really applied to the normalised input; without
it a feature the norm suppresses (gain ~0) would look important. Shared by `slice` (its
FFN1 matrices) and `fold` (scaled producer rows, sensitivity).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.initializers import node_by_name

NORM_OPS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")


def input_norm_scale(model: ir.Model, linear, nodes: dict[str, ir.Node] | None = None) -> np.ndarray | None:
    """float64 [in_features] gain of the norm feeding `linear`, or None when there is none.

    The gain is either a Mul by a constant vector (how the exports write RMSNorm) or the
    scale input of a LayerNormalization/RMSNormalization node.
    """
    nodes = nodes if nodes is not None else node_by_name(model)
    node = nodes.get(linear.node)
    if node is None or not node.inputs or node.inputs[0] is None:
        return None
    source = node.inputs[0].producer()  # the analysis only takes MatMul/Gemm with x as input 0
    if source is None:
        return None
    if source.op_type == "Mul":
        candidates = [v for v in source.inputs if v is not None and v.const_value is not None]
    elif source.op_type in NORM_OPS and len(source.inputs) > 1 and source.inputs[1] is not None:
        candidates = [source.inputs[1]]
    else:
        candidates = []
    for value in candidates:
        if value.const_value is None:
            continue
        scale = np.asarray(value.const_value.numpy(), dtype=np.float64).reshape(-1)
        if scale.size == linear.in_features:
            return scale
    return None
