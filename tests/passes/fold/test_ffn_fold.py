"""`ffn_fold`: what folding reads from an FFN's weights — producer rows (with bias column),
consumer columns, clustering features, outlier channels, layer sensitivity and norm-scaled rows —
on small hand-built gated (SwiGLU behind a LayerNormalization) and plain (bias, MatMul or Gemm) FFNs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from swiglu_graphs import swiglu_block

from edgefold.analysis import analyse
from edgefold.passes.common.channel_allocation import spectral_concentration
from edgefold.passes.fold.ffn_fold import (channel_features, consumer_columns, outlier_channels, producer_rows,
                                           scaled_producer_rows, sensitivity_score)

H, I = 8, 12


def _model(nodes, inits, output: str, dims=(2, 3, H)) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(dims))],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _gated(norm: bool = True, seed: int = 0):
    """[LayerNormalization(gain) ->] x + down(silu(x @ g) * (x @ u)); returns the model, group, weights, gain."""
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.2, 3.0, H).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gain", "beta"], ["xn"], name="ln", axis=-1)] if norm else []
    block, protos, weights, out = swiglu_block("ffn", "xn" if norm else "x", H, I, rng)
    inits = {t.name: numpy_helper.to_array(t) for t in protos}
    if norm:
        inits.update(gain=gain, beta=np.zeros(H, np.float32))
    model = _model(nodes + block, inits, out)
    [group] = analyse(model).ffns
    return model, group, weights, gain


def _plain(gemm: bool, seed: int = 1, gain: np.ndarray | None = None):
    """fc2(relu(fc1(x))) with biases: MatMul W[in, out] + Add, or Gemm with transB=1 and W[out, in];
    with `gain`, fc1 reads x * gain (an RMSNorm-style Mul)."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((H, I)).astype(np.float32), rng.standard_normal(I).astype(np.float32)
    w2, b2 = rng.standard_normal((I, H)).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    if gemm:  # 2-D input
        nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
                 helper.make_node("Relu", ["h"], ["a"], name="act"),
                 helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], name="fc2", transB=1)]
        inits = {"W1": w1.T.copy(), "b1": b1, "W2": w2.T.copy(), "b2": b2}
    else:
        nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"], name="fc1"),
                 helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias"),
                 helper.make_node("Relu", ["h"], ["a"], name="act"),
                 helper.make_node("MatMul", ["a", "W2"], ["y0"], name="fc2"),
                 helper.make_node("Add", ["y0", "b2"], ["y"], name="fc2_bias")]
        inits = {"W1": w1, "b1": b1, "W2": w2, "b2": b2}
    if gain is not None:
        nodes[0].input[0] = "xn"
        nodes.insert(0, helper.make_node("Mul", ["x", "gain"], ["xn"], name="rms_gain"))
        inits["gain"] = gain
    model = _model(nodes, inits, "y", dims=[6, H] if gemm else [2, 3, H])
    [group] = analyse(model).ffns
    return model, group, (w1, b1, w2, b2)


def test_rows_and_columns_of_a_gated_ffn():
    model, group, weights, _ = _gated()
    rows = producer_rows(model, group)
    assert len(rows) == 2 and all(r.dtype == np.float64 and r.shape == (I, H) for r in rows)
    np.testing.assert_array_equal(rows[0], weights["g"].T)  # gate first, then up
    np.testing.assert_array_equal(rows[1], weights["u"].T)
    np.testing.assert_array_equal(consumer_columns(model, group), weights["d"])


def test_rows_carry_the_bias_column_in_both_weight_layouts():
    for gemm in (False, True):
        model, group, (w1, b1, w2, _) = _plain(gemm)
        assert group.producers[0].out_axis == (0 if gemm else 1)
        [rows] = producer_rows(model, group)
        assert rows.shape == (I, H + 1)
        np.testing.assert_array_equal(rows[:, :H], w1.T)
        np.testing.assert_array_equal(rows[:, H], b1)
        columns = consumer_columns(model, group)
        assert columns.shape == (I, H)
        np.testing.assert_array_equal(columns, w2)


def test_channel_features():
    rng = np.random.default_rng(2)
    gate, up = rng.standard_normal((5, H)), rng.standard_normal((5, H))
    gate[3], up[3] = gate[1], up[1]  # a duplicate
    gate[4], up[4] = 2 * gate[1], 2 * up[1]  # same direction, twice as strong
    gate[2], up[2] = 0.0, 0.0  # a dead channel
    features = channel_features([gate, up])
    assert features.shape == (5, 2 * H + 2)
    unit, logs = features[:, : 2 * H], features[:, 2 * H:]
    np.testing.assert_allclose(np.linalg.norm(unit[[0, 1, 3, 4]], axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(features[3], features[1])
    np.testing.assert_allclose(unit[4], unit[1], atol=1e-15)
    np.testing.assert_allclose(logs[4] - logs[1], np.log(2.0), atol=1e-12)  # the log norms keep them apart
    np.testing.assert_allclose(logs[0], [np.log(np.linalg.norm(gate[0])), np.log(np.linalg.norm(up[0]))])
    np.testing.assert_array_equal(unit[2], 0.0)
    np.testing.assert_allclose(logs[2], np.log(1e-12))


def test_outlier_channels():
    rows = [np.eye(6, H), np.eye(6, H)]  # every channel's producer-norm product is 1
    rows[0][4] *= 10.0
    rows[1][4] *= 10.0  # channel 4: 100 x the median
    assert outlier_channels(rows, 0.0).tolist() == [False] * 6  # 0: none
    assert outlier_channels(rows, 50.0).tolist() == [False, False, False, False, True, False]
    assert not outlier_channels(rows, 100.0).any()  # strictly above threshold x median
    rows[0][1] *= 3.0
    assert outlier_channels(rows, 2.0).tolist() == [False, True, False, False, True, False]


def test_sensitivity_score_uses_the_norm_gain_and_not_the_bias():
    model, group, weights, gain = _gated()
    stacked = np.concatenate([weights["g"].T, weights["u"].T]).astype(np.float64)
    score = sensitivity_score(model, group)
    assert score == spectral_concentration(stacked * gain.astype(np.float64)[None, :])
    assert score != spectral_concentration(stacked)
    assert sensitivity_score(model, group, producer_rows(model, group)) == score
    bare, bare_group, bare_weights, _ = _gated(norm=False)
    assert sensitivity_score(bare, bare_group) == spectral_concentration(
        np.concatenate([bare_weights["g"].T, bare_weights["u"].T]).astype(np.float64))
    plain, plain_group, (w1, *_rest) = _plain(gemm=False)
    assert sensitivity_score(plain, plain_group) == spectral_concentration(w1.T.astype(np.float64))


def test_rank_one_producers_score_one():
    model, group, weights, _ = _gated(norm=False)
    direction = np.linspace(-1.0, 1.0, H)
    rows = [np.outer(np.arange(1, I + 1), direction), np.outer(np.ones(I), 3 * direction)]
    assert abs(sensitivity_score(model, group, rows) - 1.0) < 1e-12
    assert sensitivity_score(model, group) < 0.9  # random producers are far from rank one


def test_scaled_producer_rows():
    model, group, weights, gain = _gated()
    rows = producer_rows(model, group)
    kept = [r.copy() for r in rows]
    scaled = scaled_producer_rows(model, group, rows)
    for r, s in zip(rows, scaled):
        np.testing.assert_array_equal(s, r * gain.astype(np.float64)[None, :])
    for r, k in zip(rows, kept):
        np.testing.assert_array_equal(r, k)  # the caller's rows are not touched
    np.testing.assert_array_equal(scaled_producer_rows(model, group)[0], scaled[0])
    bare, bare_group, _, _ = _gated(norm=False)
    bare_rows = producer_rows(bare, bare_group)
    copies = scaled_producer_rows(bare, bare_group, bare_rows)
    assert all(c is not r and np.array_equal(c, r) for c, r in zip(copies, bare_rows))


def test_scaled_rows_leave_the_bias_column():
    gain = np.linspace(0.5, 2.0, H).astype(np.float32)
    model, group, (w1, b1, _, _) = _plain(gemm=False, gain=gain)
    [rows] = scaled_producer_rows(model, group)
    np.testing.assert_array_equal(rows[:, :H], w1.T.astype(np.float64) * gain.astype(np.float64)[None, :])
    np.testing.assert_array_equal(rows[:, H], b1)
