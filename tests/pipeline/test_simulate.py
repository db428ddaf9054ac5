"""`edgefold simulate`: DRAM column cache, byte accounting, DIP / DIP-CA replay."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.errors import EdgefoldError
from edgefold.simulate import (
    ColumnCache,
    Counts,
    Method,
    cache_aware_scores,
    keep_count,
    token_bytes,
    topk_mask,
    weight_layout,
)
from edgefold.simulate.cache import priority_fraction
from edgefold.simulate.engine import Masker
from edgefold.simulate.segments import SegmentedModel
from swiglu_graphs import swiglu_block

VOCAB, HIDDEN, INTER = 10, 4, 6


def tiny_lm(path, layers=1, hidden=HIDDEN, intermediate=INTER, vocab=VOCAB, seed=0):
    """input_ids -> embedding Gather -> [SwiGLU MLP + residual] x layers -> lm_head MatMul."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "embed"),
             numpy_helper.from_array(rng.standard_normal((hidden, vocab)).astype(np.float32), "lm_head")]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h0"], name="embed_lookup")]
    x = "h0"
    for layer in range(layers):
        block_nodes, block_inits, _, x = swiglu_block(f"l{layer}", x, hidden, intermediate, rng)
        nodes += block_nodes
        inits += block_inits
    nodes.append(helper.make_node("MatMul", [x, "lm_head"], ["logits"], name="lm_head_proj"))
    graph = helper.make_graph(nodes, "tiny_lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(onnx.shape_inference.infer_shapes(model), path)
    return path


def _replay(model_path, method, ids, fraction=0.5, policies=("lru",)):
    """Run `ids` windows through the segmented model with a masker; outputs and masker."""
    groups = analyse(onnx_io.load(model_path)).ffns
    segmented = SegmentedModel(model_path, groups)
    masker = Masker(segmented.widths, method, fraction, policies, ids.size)
    outputs = [segmented.run({"input_ids": window[None]}, masker)["logits"] for window in ids]
    return np.concatenate(outputs), masker


# --- the cache -----------------------------------------------------------------------

def _requests(*sets, width=4):
    out = np.zeros((len(sets), width), dtype=bool)
    for row, channels in enumerate(sets):
        out[row, list(channels)] = True
    return out


@pytest.mark.parametrize("policy, expected_hits, final", [
    # t0 {0,1}: cold. t1 {1,2}: 1 hits; full, evict 0 (oldest). t2 {0,3}: no hits; LRU keeps
    # the two newest {0,3}, LFU keeps the most used {0 (2 uses), 1 (2 uses)}. t3 {0,1}.
    ("lru", [0, 1, 0, 1], {0, 1}),
    ("lfu", [0, 1, 0, 2], {0, 1}),
])
def test_cache_hand_case(policy, expected_hits, final):
    requests = _requests({0, 1}, {1, 2}, {0, 3}, {0, 1})
    priority = np.array([[4, 3, 2, 1]] * 4, dtype=np.float32)  # lower channel = larger score
    cache = ColumnCache(4, 2, policy)
    hits = [cache.access(r, f) for r, f in zip(requests, priority_fraction(priority))]
    assert hits == expected_hits
    assert set(np.flatnonzero(cache.resident)) == final


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("width, capacity, keep", [(16, 8, 4), (16, 8, 12), (16, 0, 5), (16, 16, 5), (48, 20, 30)])
def test_window_replay_equals_token_by_token(policy, width, capacity, keep):
    rng = np.random.default_rng(width + capacity + keep)
    scores = np.abs(rng.standard_normal((200, width))) + 2 * np.abs(rng.standard_normal(width))  # some hot channels
    requests, fractions = topk_mask(scores, keep), priority_fraction(scores)
    one, batch = ColumnCache(width, capacity, policy), ColumnCache(width, capacity, policy)
    sequential = [one.access(r, f) for r, f in zip(requests, fractions)]
    windowed = np.concatenate([batch.replay(requests[i:i + 64], fractions[i:i + 64]) for i in range(0, 200, 64)])
    assert np.array_equal(sequential, windowed)
    assert np.array_equal(one.resident, batch.resident)
    assert int(one.resident.sum()) == min(capacity, int(requests.any(axis=0).sum()))


# --- byte accounting -------------------------------------------------------------------

def test_weight_layout_hand_computed(tmp_path):
    path = tiny_lm(tmp_path / "lm.onnx")
    model = onnx_io.load(path)
    layout = weight_layout(model, analyse(model).ffns)
    assert layout.bytes_per_weight == 4
    assert layout.mlp_bytes == 3 * HIDDEN * INTER * 4 == 288
    assert layout.resident_bytes == 2 * VOCAB * HIDDEN * 4 == 320  # embedding + lm_head
    assert layout.read_bytes == HIDDEN * 4 + HIDDEN * VOCAB * 4 == 176  # one embedding row + all of lm_head
    assert layout.input_column_bytes(0) == 2 * INTER * 4 == 48  # a row of W_gate and of W_up
    assert layout.intermediate_column_bytes(0) == HIDDEN * 4 == 16  # a row of W_down
    assert layout.cache_fraction(320 + 144) == 0.5
    with pytest.raises(EdgefoldError, match="non-MLP"):
        layout.cache_fraction(100)
    int4 = weight_layout(model, analyse(model).ffns, bytes_per_weight=0.5)
    assert int4.mlp_bytes == 36 and int4.input_column_bytes(0) == 6


def test_dense_byte_counts_hand_computed(tmp_path):
    """Dense, half the MLP cached: token 0 reads every column from flash; after that the
    cache holds 2 of 4 input columns (48 B) and 3 of 6 intermediate columns (16 B)."""
    path = tiny_lm(tmp_path / "lm.onnx")
    model = onnx_io.load(path)
    layout = weight_layout(model, analyse(model).ffns)
    _, masker = _replay(path, Method("dense"), np.array([[1, 2, 3]]))
    counts = masker.counts["lru"]
    assert counts.request_in[:, 0].tolist() == [4, 4, 4] and counts.hit_in[:, 0].tolist() == [0, 2, 2]
    assert counts.request_mid[:, 0].tolist() == [6, 6, 6] and counts.hit_mid[:, 0].tolist() == [0, 3, 3]
    traffic = token_bytes(layout, counts)
    assert traffic.flash.tolist() == [4 * 48 + 6 * 16, 2 * 48 + 3 * 16, 2 * 48 + 3 * 16] == [288, 144, 144]
    assert traffic.dram.tolist() == [288 + 176] * 3
    assert traffic.hit_rate.tolist() == [0.0, 0.5, 0.5]
    # 1 GB/s flash, 2 GB/s DRAM: token 0 = 288 ns + 232 ns.
    assert traffic.seconds(1.0, 2.0)[0] == pytest.approx(520e-9)
    assert traffic.tokens_per_second(1.0, 2.0) == pytest.approx(3 / (520e-9 + 2 * (144e-9 + 232e-9)))


def test_hand_counts_price_like_the_layout():
    from edgefold.simulate.layout import MlpShape, WeightLayout

    layout = WeightLayout((MlpShape(4, 6, 2), MlpShape(4, 6, 2)), 2.0, 1000, 500)
    counts = Counts(np.array([[2, 3]]), np.array([[1, 0]]), np.array([[6, 1]]), np.array([[6, 0]]))
    traffic = token_bytes(layout, counts)  # columns: input 24 B, intermediate 8 B
    assert traffic.requested.tolist() == [(2 + 3) * 24 + (6 + 1) * 8]
    assert traffic.flash.tolist() == [(1 + 3) * 24 + (0 + 1) * 8]
    assert traffic.dram.tolist() == [176 + 500]


# --- masks on real graphs -------------------------------------------------------------

def test_segmented_dense_equals_onnxruntime(tmp_path):
    path = tiny_lm(tmp_path / "lm.onnx", layers=3)
    ids = np.array([[1, 5, 7, 2, 9, 0]])
    logits, _ = _replay(path, Method("dense"), ids)
    np.testing.assert_array_equal(logits, onnx_io.run(path, {"input_ids": ids})["logits"])


def test_simulated_dip_equals_the_dip_graph(tmp_path):
    from edgefold.passes.base import PassContext
    from edgefold.passes.registry import create_pass

    path = tiny_lm(tmp_path / "lm.onnx", layers=3, hidden=16, intermediate=24)
    model = onnx_io.load(path)
    outcome = create_pass("dip", {"sparsity": 0.5}).run(model, PassContext(analysis=analyse(model)))
    dip_path = onnx_io.save(outcome.model, tmp_path / "dip" / "model.onnx")
    ids = np.array([[1, 5, 7, 2, 9, 0, 3, 3]])
    logits, masker = _replay(path, Method("dip", 0.5), ids)
    np.testing.assert_array_equal(logits, onnx_io.run(dip_path, {"input_ids": ids})["logits"])
    assert masker.counts["lru"].request_in.max() == 8 and masker.counts["lru"].request_mid.max() == 12


def test_gamma_one_equals_plain_dip(tmp_path):
    path = tiny_lm(tmp_path / "lm.onnx", layers=2, hidden=16, intermediate=24)
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, 16))
    plain, plain_masker = _replay(path, Method("dip", 0.5), ids, fraction=0.4)
    aware, aware_masker = _replay(path, Method("dip-ca", 0.5, gamma=1.0), ids, fraction=0.4)
    np.testing.assert_array_equal(plain, aware)
    for name in ("request_in", "hit_in", "request_mid", "hit_mid"):
        assert np.array_equal(getattr(plain_masker.counts["lru"], name), getattr(aware_masker.counts["lru"], name))


def test_cache_aware_masks_prefer_resident_channels(tmp_path):
    """gamma = 0 with K = capacity: after the first token the mask is the cache itself
    (every request hits); gamma = 0.5 lies between that and plain DIP."""
    path = tiny_lm(tmp_path / "lm.onnx", layers=2, hidden=16, intermediate=24)
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 16))
    rates = {}
    for gamma in (1.0, 0.5, 0.0):
        _, masker = _replay(path, Method("dip-ca", 0.5, gamma=gamma), ids, fraction=0.5)
        counts = masker.counts["lru"]
        rates[gamma] = counts.hit_in[1:].sum() / counts.request_in[1:].sum()
        if gamma == 0.0:
            assert np.array_equal(counts.hit_in[1:], counts.request_in[1:])
    assert rates[1.0] <= rates[0.5] <= rates[0.0] == 1.0
    assert rates[1.0] < 1.0


def test_score_formula():
    magnitude = np.array([[4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    resident = np.array([False, False, True, True])
    scores = cache_aware_scores(magnitude, resident, 0.25)
    np.testing.assert_allclose(scores, [[0.25, 0.1875, 0.5, 0.25]])
    assert set(np.flatnonzero(topk_mask(scores, 2)[0])) == {0, 2} or set(np.flatnonzero(topk_mask(scores, 2)[0])) == {2, 3}
    assert set(np.flatnonzero(topk_mask(cache_aware_scores(magnitude, resident, 1.0), 2)[0])) == {0, 1}
    assert keep_count(576, 0.5) == 288 and keep_count(1536, 0.75) == 384 and keep_count(8, 0.99) == 1


# --- the command ------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--profile", "host"], "no flash"),
    (["--gamma", "0.1,x"], "gamma"),
    (["--gamma", "1.5"], "gamma must be"),
    (["--sparsity", "1.0"], "sparsity"),
    (["--policy", "fifo"], "policy"),
    (["--tokens", "100", "--window", "512"], "tokens >= window"),
])
def test_cli_user_errors(cli, args, needle):
    result = cli("simulate", "smollm2-135m", *args)
    assert result.code == 2 and needle in result.err and result.err.count("\n") == 1


@pytest.mark.slow
def test_smollm2_simulation(cli, smollm2_handle, tmp_path):
    """Real SmolLM2 on real text: dense replays the exported model exactly, gamma = 1 is
    plain DIP, and cache-aware masks raise hit rate and tokens/s on both phones."""
    from edgefold.evaluate import evaluate

    out = tmp_path / "sim"
    result = cli("simulate", "smollm2-135m", "--profile", "mobile-arm64", "--profile", "mobile-arm64-ufs21",
                 "--tokens", "256", "--window", "256", "--sparsity", "0.5", "--gamma", "1,0.2",
                 "--cache-fraction", "0.5", "-o", out, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary == json.loads((out / "results.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"results.json", "per_token.npz", "hit_rate_vs_sparsity.png",
                                               "tokens_per_s_vs_sparsity.png"}
    rows = {(r["method"], r["profile"]): r for r in summary["rows"]}
    dense, dip = rows["dense", "mobile-arm64"], rows["DIP 50%", "mobile-arm64"]
    same, aware = rows["DIP-CA 50% g=1", "mobile-arm64"], rows["DIP-CA 50% g=0.2", "mobile-arm64"]
    assert dense["perplexity"] == pytest.approx(evaluate(smollm2_handle.path, tokens=256)["perplexity"], rel=1e-6)
    assert dense["hit_rate"] == pytest.approx(0.5, abs=0.01) and dense["mlp_read_fraction"] == 1.0
    assert same["perplexity"] == dip["perplexity"] and same["hit_rate"] == dip["hit_rate"]
    assert aware["hit_rate"] > dip["hit_rate"] + 0.1
    for profile in ("mobile-arm64", "mobile-arm64-ufs21"):
        assert rows["DIP-CA 50% g=0.2", profile]["tokens_per_s"] > rows["DIP 50%", profile]["tokens_per_s"]
        assert rows["DIP 50%", profile]["tokens_per_s"] > rows["dense", profile]["tokens_per_s"]
    assert rows["dense", "mobile-arm64-ufs21"]["tokens_per_s"] < dense["tokens_per_s"]  # slower flash
    series = np.load(out / "per_token.npz")
    assert series["DIP 50%|lru|0.5|hit_rate"].shape == (256,)
