"""`input_norm_scale`: the gain of the norm in front of a linear, found in both ways exports write it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from edgefold.analysis.groups import LinearRef as Linear
from edgefold.passes.common.norm_scale import input_norm_scale

HIDDEN, OUT = 4, 3
GAIN = np.array([0.5, 2.0, 1.0, 0.0], np.float32)
WEIGHT = np.arange(HIDDEN * OUT, dtype=np.float32).reshape(HIDDEN, OUT)


def _model(front: str) -> ir.Model:
    """x -> [front] -> MatMul(W): front is an RMSNorm-style Mul by a gain, a LayerNormalization, or nothing."""
    inits = [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(GAIN, "gain"),
             numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta")]
    nodes = {
        "mul": [helper.make_node("Mul", ["x", "gain"], ["h"], name="mul")],
        "layernorm": [helper.make_node("LayerNormalization", ["x", "gain", "beta"], ["h"], name="ln", axis=-1)],
        "none": [helper.make_node("Relu", ["x"], ["h"], name="relu")],
    }[front]
    nodes.append(helper.make_node("MatMul", ["h", "W"], ["y"], name="linear"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, OUT])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


LINEAR = Linear(node="linear", weight="W", out_axis=1, in_axis=0, in_features=HIDDEN, out_features=OUT)


def test_gain_from_mul_and_from_layernorm():
    for front in ("mul", "layernorm"):
        scale = input_norm_scale(_model(front), LINEAR)
        assert scale is not None and scale.dtype == np.float64
        np.testing.assert_array_equal(scale, GAIN)


def test_no_norm_or_wrong_width_gives_none():
    assert input_norm_scale(_model("none"), LINEAR) is None
    wider = Linear(node="linear", weight="W", out_axis=1, in_axis=0, in_features=HIDDEN + 1, out_features=OUT)
    assert input_norm_scale(_model("mul"), wider) is None
    assert input_norm_scale(_model("mul"), Linear(node="absent", weight="W", out_axis=1, in_axis=0)) is None
