"""`initializers`: looking nodes and weights up by name, replacing an initializer in place or
(when other nodes read it too) as a private copy for the given readers, and forgetting shapes.
Rewrites are run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.passes.common.initializers import (array, forget_shape, forget_shapes_downstream, node_by_name,
                                                 replace_initializer)

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
X = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)


def _shared_weight_model(extra_inits=()) -> ir.Model:
    """y1 = x @ W, y2 = relu(x) @ W: one initializer read by two MatMuls; one node is unnamed."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y1"], name="mm1"),
             helper.make_node("Relu", ["x"], ["r"]),  # no name
             helper.make_node("MatMul", ["r", "W"], ["y2"], name="mm2")]
    inits = [numpy_helper.from_array(W, "W")] + [numpy_helper.from_array(a, n) for n, a in extra_inits]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 3])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _run(model: ir.Model, tmp_path, tag: str) -> dict[str, np.ndarray]:
    path = onnx_io.save(model, tmp_path / tag / "model.onnx")
    onnx_io.check(path)
    return onnx_io.run(onnx_io.session(path), {"x": X})


def test_node_by_name_and_array():
    model = _shared_weight_model()
    nodes = node_by_name(model)
    assert sorted(nodes) == ["mm1", "mm2"]  # the unnamed Relu is left out
    assert nodes["mm1"].op_type == "MatMul"
    data = array(model, "W")
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, W)
    with pytest.raises(KeyError):
        array(model, "absent")


def test_replace_in_place_when_every_reader_is_named(tmp_path):
    model = _shared_weight_model()
    nodes = node_by_name(model)
    new = np.arange(8, dtype=np.float64).reshape(4, 2)  # narrower, and float64: stored as the old dtype
    name = replace_initializer(model, "W", new, readers=[nodes["mm1"], nodes["mm2"]])
    assert name == "W" and list(model.graph.initializers) == ["W"]
    value = model.graph.initializers["W"]
    assert value.const_value.dtype == ir.DataType.FLOAT and tuple(value.shape) == (4, 2)
    np.testing.assert_array_equal(array(model, "W"), new.astype(np.float32))
    for output in model.graph.outputs:
        output.shape = ir.Shape([2, 2])
    got = _run(model, tmp_path, "inplace")
    np.testing.assert_allclose(got["y1"], X @ new, rtol=1e-6)
    np.testing.assert_allclose(got["y2"], np.maximum(X, 0) @ new, rtol=1e-6)


def test_replace_without_readers_edits_in_place():
    model = _shared_weight_model()
    assert replace_initializer(model, "W", 2 * W) == "W"
    assert len(model.graph.initializers) == 1
    np.testing.assert_array_equal(array(model, "W"), 2 * W)


def test_shared_initializer_gets_a_private_copy(tmp_path):
    model = _shared_weight_model()
    nodes = node_by_name(model)
    name = replace_initializer(model, "W", -W, readers=[nodes["mm2"]])
    assert name == "W.mm2"
    np.testing.assert_array_equal(array(model, "W"), W)  # the other reader's weight is intact
    np.testing.assert_array_equal(array(model, "W.mm2"), -W)
    assert nodes["mm1"].inputs[1].name == "W" and nodes["mm2"].inputs[1].name == "W.mm2"
    got = _run(model, tmp_path, "copy")
    np.testing.assert_array_equal(got["y1"], X @ W)
    np.testing.assert_allclose(got["y2"], np.maximum(X, 0) @ -W, rtol=1e-6)


def test_private_copy_name_does_not_clash():
    taken = np.zeros(1, np.float32)
    model = _shared_weight_model(extra_inits=[("W.mm1", taken), ("W.mm1.2", taken)])
    nodes = node_by_name(model)
    name = replace_initializer(model, "W", 3 * W, readers=[nodes["mm1"]])
    assert name == "W.mm1.3"
    np.testing.assert_array_equal(array(model, "W.mm1"), taken)  # the existing ones are untouched
    np.testing.assert_array_equal(array(model, "W.mm1.3"), 3 * W)
    assert nodes["mm1"].inputs[1].name == "W.mm1.3"


def test_forget_shape_keeps_graph_outputs():
    model = _shared_weight_model()
    relu_out = next(n for n in model.graph if n.op_type == "Relu").outputs[0]
    relu_out.shape = ir.Shape([2, 4])
    forget_shape(relu_out)
    assert relu_out.shape is None
    y1 = model.graph.outputs[0]
    forget_shape(y1)
    assert tuple(y1.shape) == (2, 3)
    forget_shape(None)  # nothing to do, no error


def test_forget_shapes_downstream_stops_where_follow_says():
    """x -> Relu -> Neg -> Abs -> y, and x -> Sigmoid -> Identity -> s: the walk forgets every shape
    it reaches except graph outputs, and none past a reader `follow` refuses."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["n"], name="neg"),
             helper.make_node("Abs", ["n"], ["y"], name="abs"), helper.make_node("Sigmoid", ["x"], ["g"], name="sig"),
             helper.make_node("Identity", ["g"], ["s"], name="id")]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("r", "n", "g")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 4])], value_info=vi)
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    by_name = node_by_name(model)
    shape = {name: (lambda n=name: by_name[n].outputs[0].shape) for name in ("relu", "neg", "abs", "sig")}
    seen = []

    def follow(use):
        seen.append(use.node.name)
        return use.node.name != "sig"

    forget_shapes_downstream(by_name["relu"].inputs, follow)  # from x
    assert shape["relu"]() is None and shape["neg"]() is None
    assert shape["abs"]() is not None  # a graph output keeps its shape
    assert shape["sig"]() is not None  # past a refused reader nothing is forgotten
    assert sorted(seen) == ["abs", "neg", "relu", "sig"]
