"""Least-squares consumer repair: exact with nothing removed, never worse than no repair,
exact where the removed channels are predictable, and the bias lands in the graph."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.passes.common.initializers import node_by_name
from edgefold.passes.common.lsq_repair import Refit, output_error, refit_consumer, write_refit


def _moments(h: np.ndarray) -> np.ndarray:
    augmented = np.hstack([h, np.ones((len(h), 1))])
    return augmented.T @ augmented / len(h)


def _activations(rng, tokens=400, width=12):
    mixing = rng.normal(size=(width, width))
    return rng.normal(size=(tokens, width)) @ mixing + rng.normal(size=width)  # correlated, non-zero mean


@pytest.mark.parametrize("damping", [0.0, 0.1, 10.0])
def test_nothing_removed_is_exact(damping):
    rng = np.random.default_rng(0)
    h, weight = _activations(rng), rng.normal(size=(12, 5))
    refit = refit_consumer(weight, np.arange(12), weight, _moments(h), damping)
    np.testing.assert_allclose(refit.weight, weight, atol=1e-9)
    np.testing.assert_allclose(refit.bias, 0.0, atol=1e-9)


def test_output_error_is_the_mean_squared_output_difference():
    rng = np.random.default_rng(1)
    h, weight = _activations(rng), rng.normal(size=(12, 5))
    kept = np.array([0, 2, 3, 7, 8, 11])
    new, bias = rng.normal(size=(6, 5)), rng.normal(size=5)
    direct = np.mean(np.sum((h @ weight - (h[:, kept] @ new + bias)) ** 2, axis=1))
    assert output_error(weight, kept, new, bias, _moments(h)) == pytest.approx(direct, rel=1e-9)


def test_repair_never_raises_the_calibration_error_and_damping_moves_toward_the_start():
    rng = np.random.default_rng(2)
    h, weight = _activations(rng), rng.normal(size=(12, 5))
    kept = np.array([1, 4, 5, 6, 9, 10])
    start = weight[kept]  # plain slicing
    moments = _moments(h)
    unrepaired = output_error(weight, kept, start, None, moments)
    errors, distances = [], []
    for damping in (0.0, 0.01, 1.0, 100.0):
        refit = refit_consumer(weight, kept, start, moments, damping)
        errors.append(output_error(weight, kept, refit.weight, refit.bias, moments))
        distances.append(np.linalg.norm(refit.weight - start))
    assert max(errors) <= unrepaired
    assert errors == sorted(errors) and distances == sorted(distances, reverse=True)
    assert errors[0] < 0.7 * unrepaired


def test_predictable_channels_are_recovered_exactly():
    # The removed channels are an affine function of the kept ones: the re-fit (with its bias)
    # reproduces the original output on every token, not only on average.
    rng = np.random.default_rng(3)
    kept_h = rng.normal(size=(300, 6))
    removed_h = kept_h @ rng.normal(size=(6, 3)) + np.array([1.0, -2.0, 0.5])
    h = np.hstack([kept_h, removed_h])
    weight = rng.normal(size=(9, 4))
    refit = refit_consumer(weight, np.arange(6), weight[:6], _moments(h), 0.0)
    np.testing.assert_allclose(kept_h @ refit.weight + refit.bias, h @ weight, atol=1e-8)


def test_bad_shapes_are_refused():
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(8, 3))
    with pytest.raises(ValueError, match="moments are"):
        refit_consumer(weight, np.arange(4), weight[:4], np.eye(8), 0.1)
    with pytest.raises(ValueError, match="start weight"):
        refit_consumer(weight, np.arange(4), weight[:3], np.eye(9), 0.1)


def _linear_model(path, *, with_bias: bool):
    """x[2,8] -> MatMul(W[8,3]) (-> Add(b)) -> Relu -> y: the consumer's result has a reader."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="down")]
    last = "mm"
    if with_bias:
        inits.append(numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["biased"], name="down_bias"))
        last = "biased"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


class _Ref:  # the fields of an analysis LinearRef that write_refit reads
    def __init__(self, bias: str | None, bias_node: str | None):
        self.node, self.weight, self.in_axis, self.transpose = "down", "w", 0, None
        self.bias, self.bias_node = bias, bias_node


@pytest.mark.parametrize("with_bias", [False, True])
def test_write_refit_stores_weight_and_bias_and_the_graph_runs(tmp_path, with_bias):
    path = _linear_model(tmp_path / "m.onnx", with_bias=with_bias)
    model = onnx_io.load(path)
    x = np.random.default_rng(6).normal(size=(2, 8)).astype(np.float32)
    old_bias = model.graph.initializers["b"].const_value.numpy() if with_bias else np.zeros(3, np.float32)
    refit = Refit(np.random.default_rng(7).normal(size=(8, 3)), np.array([0.5, -1.0, 2.0]))
    write_refit(model, _Ref("b" if with_bias else None, "down_bias" if with_bias else None), refit,
                node_by_name(model))
    out = onnx_io.save(model, tmp_path / "out" / "model.onnx")
    onnx_io.check(out)
    got = onnx_io.run(onnx_io.session(out), {"x": x})["y"]
    want = np.maximum(x @ refit.weight.astype(np.float32) + old_bias + refit.bias.astype(np.float32), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    adds = [n for n in ir.load(str(out)).graph if n.op_type == "Add"]
    assert len(adds) == 1  # an existing bias absorbs the new one; otherwise one Add is inserted
