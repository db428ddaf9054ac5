"""Tiny hand-built SwiGLU graphs for the DIP pass and the flash simulator tests.

Weights are [in, out] like the exporter writes them, drawn in the order gate, up,
down from the caller's generator, so both test modules see the same numbers.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


def swiglu_block(prefix: str, x: str, hidden: int, intermediate: int, rng: np.random.Generator):
    """Nodes, initializers and weights of `x + down(silu(x @ g) * (x @ u))`; returns the output name too."""
    weights = {name: (rng.standard_normal(shape) * 0.5).astype(np.float32)
               for name, shape in [("g", (hidden, intermediate)), ("u", (hidden, intermediate)),
                                   ("d", (intermediate, hidden))]}
    inits = [numpy_helper.from_array(w, f"{prefix}.{name}") for name, w in weights.items()]
    p = prefix
    nodes = [
        helper.make_node("MatMul", [x, f"{p}.g"], [f"{p}.gate"], name=f"{p}.gate_proj"),
        helper.make_node("MatMul", [x, f"{p}.u"], [f"{p}.up"], name=f"{p}.up_proj"),
        helper.make_node("Sigmoid", [f"{p}.gate"], [f"{p}.sig"], name=f"{p}.sigmoid"),
        helper.make_node("Mul", [f"{p}.gate", f"{p}.sig"], [f"{p}.silu"], name=f"{p}.silu"),
        helper.make_node("Mul", [f"{p}.silu", f"{p}.up"], [f"{p}.h"], name=f"{p}.glu"),
        helper.make_node("MatMul", [f"{p}.h", f"{p}.d"], [f"{p}.y"], name=f"{p}.down_proj"),
        helper.make_node("Add", [x, f"{p}.y"], [f"{p}.out"], name=f"{p}.residual"),
    ]
    return nodes, inits, weights, f"{p}.out"
