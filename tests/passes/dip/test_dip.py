"""`dip`: per-token top-K masks on MLP inputs and intermediates, in standard ONNX ops."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.errors import EdgefoldError
from edgefold.passes.base import PassContext
from edgefold.passes.registry import create_pass
from edgefold.passes.dip import keep_count
from edgefold.simulate.masking import topk_mask
from swiglu_graphs import swiglu_block


def tiny_gated_mlps(path, hidden=8, intermediate=12, layers=2, seed=0):
    """x -> [SwiGLU MLP + residual] x layers, weights [in, out] like the exporter writes."""
    rng = np.random.default_rng(seed)
    nodes, inits, weights = [], [], []
    x = "x"
    for layer in range(layers):
        block_nodes, block_inits, mats, x = swiglu_block(f"l{layer}", x, hidden, intermediate, rng)
        nodes += block_nodes
        inits += block_inits
        weights.append(mats)
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["b", "s", hidden])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return weights


def numpy_dip(x, weights, k_in, k_mid):
    """The method written out: top-K |x| feeds gate/up, top-K |GLU| feeds down."""
    for w in weights:
        xm = np.where(topk_mask(np.abs(x), k_in), x, 0)
        gate = xm @ w["g"]
        h = gate / (1 + np.exp(-gate)) * (xm @ w["u"])
        x = x + np.where(topk_mask(np.abs(h), k_mid), h, 0) @ w["d"]
    return x


def run_dip(src, dst, **options):
    model = onnx_io.load(src)
    outcome = create_pass("dip", options).run(model, PassContext(analysis=analyse(model)))
    onnx_io.save(outcome.model, dst)
    onnx_io.check(dst)
    return outcome.stats


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    weights = tiny_gated_mlps(path)
    x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)
    return path, weights, x


def _output(path, x):
    return next(iter(onnx_io.run(path, {"x": x}).values()))


def test_sparsity_zero_is_exact(tiny, tmp_path):
    path, _, x = tiny
    stats = run_dip(path, tmp_path / "dip0" / "model.onnx", sparsity=0.0)
    assert stats["mlps"] == 2 and stats["mlps_rewritten"] == 0 and stats["mlp_weight_fraction_read"] == 1.0
    assert np.array_equal(_output(path, x), _output(tmp_path / "dip0" / "model.onnx", x))


def test_masks_are_topk_of_magnitude(tiny, tmp_path):
    path, weights, x = tiny
    out = tmp_path / "dip" / "model.onnx"
    stats = run_dip(path, out, sparsity=0.5)
    assert (stats["input_keep"], stats["intermediate_keep"]) == (4, 6)
    assert stats["masks_inserted"] == 4 and stats["mlp_weight_fraction_read"] == pytest.approx(0.5)
    ops = [n.op_type for n in onnx_io.load_proto(out).graph.node]
    assert ops.count("TopK") == 4 and ops.count("Where") == 4
    got = _output(out, x)
    np.testing.assert_allclose(got, numpy_dip(x, weights, 4, 6), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, _output(path, x), atol=1e-3)  # it really prunes


def test_input_and_intermediate_sparsity_apart(tiny, tmp_path):
    path, weights, x = tiny
    out = tmp_path / "dip" / "model.onnx"
    stats = run_dip(path, out, sparsity=0.5, input_sparsity=0.0, intermediate_sparsity=0.75)
    assert stats["masks_inserted"] == 2 and stats["intermediate_keep"] == keep_count(12, 0.75) == 3
    np.testing.assert_allclose(_output(out, x), numpy_dip(x, weights, 8, 3), rtol=1e-5, atol=1e-5)


def test_deterministic(tiny, tmp_path):
    path, _, _ = tiny
    run_dip(path, tmp_path / "a" / "model.onnx", sparsity=0.3)
    run_dip(path, tmp_path / "b" / "model.onnx", sparsity=0.3)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_user_errors(tmp_path):
    with pytest.raises(EdgefoldError, match="sparsity"):
        create_pass("dip", {"sparsity": 1.0})
    with pytest.raises(EdgefoldError, match="bad options"):
        create_pass("dip", {"gamma": 0.5})  # DIP-CA lives in the simulator, not the graph
    path = tmp_path / "linear.onnx"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    with pytest.raises(EdgefoldError, match="no MLP"):
        run_dip(path, tmp_path / "out" / "model.onnx")


@pytest.mark.slow
def test_smollm2_dip_graph_matches_the_simulator(cli, smollm2_handle, tmp_path):
    """The runner validates the real rewritten model, and its perplexity is what the
    simulator gives with plain DIP masks on the same window (the simulator is what
    measures DIP-CA, so it must agree with the graph where both apply)."""
    from edgefold.evaluate.perplexity import wikipedia_tokens
    from edgefold.simulate.engine import Method, run_method
    from edgefold.simulate.segments import SegmentedModel

    out = tmp_path / "dip"
    result = cli("compress", "smollm2-135m", "--pass", "dip:sparsity=0.5", "-o", out, "--eval-tokens", "256")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["passes"][-1]
    assert record["stats"]["mlps_rewritten"] == 30 and record["stats"]["input_keep"] == 288
    onnx_ppl = record["metrics"]["perplexity"]
    assert onnx_ppl > 1.1 * manifest["baseline"]["perplexity"]  # 50% of the MLP per token is not free

    model = onnx_io.load(smollm2_handle.path)
    groups = analyse(model).ffns
    segmented = SegmentedModel(smollm2_handle.path, groups)
    windows = wikipedia_tokens("smollm2-135m", 256).reshape(1, 256)
    sim = run_method(segmented, windows, Method("dip", 0.5), cache_fraction=0.5)
    assert sim.perplexity == pytest.approx(onnx_ppl, rel=1e-5)
