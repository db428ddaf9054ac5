"""`cleanup` and the pass registry."""

from __future__ import annotations

import numpy as np
import pytest

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold.passes.base import PassContext
from edgefold.passes.registry import available_passes, create_pass, parse_pass_spec


def test_spec_parsing():
    assert parse_pass_spec("fold:ratio=0.2,seed=3,method=magnitude") == (
        "fold", {"ratio": 0.2, "seed": 3, "method": "magnitude"})
    assert parse_pass_spec("quantize:layers=[1,2],fp8=true") == ("quantize", {"layers": [1, 2], "fp8": True})
    # Bare words in lists need no quotes (the README's `fold:structures=[conv]`).
    assert parse_pass_spec("fold:structures=[ffn,conv],repair=bn-stats") == (
        "fold", {"structures": ["ffn", "conv"], "repair": "bn-stats"})
    assert parse_pass_spec("cleanup") == ("cleanup", {})
    with pytest.raises(EdgefoldError):
        parse_pass_spec("fold:ratio")


def test_registry_validates_options():
    assert "cleanup" in available_passes()
    with pytest.raises(EdgefoldError, match="iterations"):
        create_pass("cleanup", {"iterations": "x"})
    with pytest.raises(EdgefoldError, match="bogus"):
        create_pass("cleanup", {"bogus": 1})


@pytest.mark.parametrize("fixture", ["effnet_handle", "minilm_handle"])
def test_cleanup_is_exact(fixture, request, tmp_path):
    handle = request.getfixturevalue(fixture)
    model = onnx_io.load(handle.path)
    outcome = create_pass("cleanup").run(model, PassContext())
    out = onnx_io.save(outcome.model, tmp_path / "model.onnx")
    onnx_io.check(out)
    inputs, reference = handle.reference_io()
    got = onnx_io.run(onnx_io.session(out), inputs)
    for name, value in reference.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6)
    assert outcome.stats["nodes_after"] <= outcome.stats["nodes_before"]


def test_cleanup_removes_dead_nodes_and_folds_constants(tmp_path):
    from onnx import TensorProto, helper

    import onnx

    nodes = [
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.FLOAT, [1], [2.0])),
        helper.make_node("Add", ["two", "two"], ["four"]),  # constant subgraph: folds away
        helper.make_node("Mul", ["x", "four"], ["y"]),
        helper.make_node("Relu", ["x"], ["unused"]),  # dead
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "in.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    model = onnx_io.load(path)
    create_pass("cleanup").run(model, PassContext())
    ops = [n.op_type for n in model.graph]
    assert ops == ["Mul"]
    out = onnx_io.save(model, tmp_path / "out.onnx")
    assert np.allclose(onnx_io.run(onnx_io.session(out), {"x": np.array([1, 2], np.float32)})["y"], [4, 8])
