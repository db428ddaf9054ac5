"""`fold`: exactness (ratio 0, duplicated channels), real shrinking, baselines, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.errors import EdgefoldError
from edgefold.export import export_module
from edgefold.model_stats import file_bytes, parameter_count
from edgefold.passes.base import PassContext
from edgefold.passes.fold.fold_math import anchor_assignment, anchor_maps, fold_ar_scale, fold_maps, kept_channels
from edgefold.passes.fold.kmeans import kmeans_labels
from edgefold.passes.registry import create_pass


# --- tiny models with planted duplicate channels ------------------------------------------

class GatedFfn(torch.nn.Module):
    """Residual SwiGLU; intermediate channels 9-11 duplicate 1-3 (gate and up rows)."""

    def __init__(self, hidden=16, inner=24):
        super().__init__()
        torch.manual_seed(0)
        self.gate = torch.nn.Linear(hidden, inner, bias=False)
        self.up = torch.nn.Linear(hidden, inner, bias=False)
        self.down = torch.nn.Linear(inner, hidden, bias=False)
        with torch.no_grad():
            for layer in (self.gate, self.up):
                layer.weight[9:12] = layer.weight[1:4]

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class ConvChain(torch.nn.Module):
    """conv-BN-relu6 -> depthwise-BN-relu6 -> 1x1 conv-BN (+ a residual 1x1 branch) -> fc.
    Channel 5 of the first set duplicates channel 3 everywhere it is produced."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.dw, self.b2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), torch.nn.BatchNorm2d(8)
        self.c2, self.b3 = torch.nn.Conv2d(8, 6, 1, bias=False), torch.nn.BatchNorm2d(6)
        self.c3, self.b4 = torch.nn.Conv2d(6, 6, 1, bias=False), torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6, 4)
        with torch.no_grad():
            for bn in (self.b1, self.b2, self.b3, self.b4):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
            for t in (self.c1.weight, self.b1.weight, self.b1.bias, self.b1.running_mean, self.b1.running_var,
                      self.dw.weight, self.b2.weight, self.b2.bias, self.b2.running_mean, self.b2.running_var):
                t[5] = t[3]

    def forward(self, x):
        x = torch.nn.functional.relu6(self.b1(self.c1(x)))
        x = torch.nn.functional.relu6(self.b2(self.dw(x)))
        y = self.b3(self.c2(x))
        y = y + self.b4(self.c3(y))  # residual add ties c2 and c3 channels
        return self.fc(torch.nn.functional.relu(y).mean((2, 3)))


class Attention(torch.nn.Module):
    """Multi-head self-attention (4 heads of 8); head 3 duplicates head 1 in q, k and v."""

    def __init__(self, hidden=32, heads=4):
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.dim = heads, hidden // heads
        self.q, self.k, self.v, self.o = (torch.nn.Linear(hidden, hidden) for _ in range(4))
        with torch.no_grad():
            for layer in (self.q, self.k, self.v):
                layer.weight[24:32] = layer.weight[8:16]
                layer.bias[24:32] = layer.bias[8:16]

    def forward(self, x):
        b, s, _ = x.shape
        split = lambda t: t.view(b, s, self.heads, self.dim).transpose(1, 2)  # noqa: E731
        out = torch.nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return x + self.o(out.transpose(1, 2).reshape(b, s, self.heads * self.dim))


def _export(module, inputs, name, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    first = next(iter(inputs))
    axes = {first: {0: "batch"} if inputs[first].dim() == 4 else {0: "batch", 1: "seq"}}
    return export_module(module.eval(), inputs, name=name, output_names=["y"], dynamic_axes=axes)


def _fold(handle, tmp_path, tag, **options):
    model = onnx_io.load(handle.path)
    outcome = create_pass("fold", options).run(model, PassContext(analysis=analyse(model), seed=0))
    path = onnx_io.save(outcome.model, tmp_path / tag / "model.onnx")
    onnx_io.check(path)
    inputs, reference = handle.reference_io()
    got = onnx_io.run(onnx_io.session(path), inputs)["y"]
    return path, got, reference["y"], outcome.stats


@pytest.fixture
def ffn(tmp_path, monkeypatch):
    return _export(GatedFfn(), {"x": torch.randn(2, 5, 16)}, "fold-ffn", tmp_path, monkeypatch)


@pytest.fixture
def conv(tmp_path, monkeypatch):
    return _export(ConvChain(), {"x": torch.randn(2, 3, 8, 8)}, "fold-conv", tmp_path, monkeypatch)


@pytest.fixture
def attention(tmp_path, monkeypatch):
    return _export(Attention(), {"x": torch.randn(2, 5, 32)}, "fold-attn", tmp_path, monkeypatch)


# --- exactness -----------------------------------------------------------------------------

@pytest.mark.parametrize("merge", ["mean", "anchor"])
@pytest.mark.parametrize("which,structures", [("ffn", ["ffn"]), ("conv", ["conv"]), ("attention", ["attention"])])
def test_ratio_zero_is_exact(which, structures, request, tmp_path, merge):
    handle = request.getfixturevalue(which)
    path, got, reference, _ = _fold(handle, tmp_path, "r0", ratio=0.0, structures=structures, merge=merge)
    np.testing.assert_array_equal(got, reference)
    assert parameter_count(onnx_io.load(path)) == parameter_count(onnx_io.load(handle.path))


@pytest.mark.parametrize("merge", ["mean", "anchor"])
def test_duplicated_ffn_channels_fold_with_zero_error(ffn, tmp_path, merge):
    path, got, reference, stats = _fold(ffn, tmp_path, "dup", ratio=0.125, allocation="uniform", structures=["ffn"],
                                        merge=merge)
    assert stats["groups"]["ffn.0"] == [24, 21]
    np.testing.assert_allclose(got, reference, atol=1e-5)
    [group] = analyse(onnx_io.load(path)).ffns
    assert group.intermediate == 21
    assert parameter_count(onnx_io.load(path)) == parameter_count(onnx_io.load(ffn.path)) - 3 * 3 * 16


@pytest.mark.parametrize("merge", ["mean", "anchor"])
@pytest.mark.parametrize("repair", ["none", "bn-stats", "fold-ar"])
def test_duplicated_conv_channels_fold_with_zero_error(conv, tmp_path, repair, merge):
    sets = analyse(onnx_io.load(conv.path)).conv_groups
    if merge == "anchor" and repair == "fold-ar":
        with pytest.raises(EdgefoldError, match="fold-ar"):
            create_pass("fold", {"merge": merge, "repair": repair})
        return
    path, got, reference, stats = _fold(conv, tmp_path, f"{repair}-{merge}", ratio=0.0, layer_ratios={"conv.0": 0.125},
                                        structures=["conv"], repair=repair, merge=merge)
    assert stats["groups"]["conv.0"] == [8, 7]
    np.testing.assert_allclose(got, reference, atol=1e-5)
    widths = {g.name: g.out_channels for g in analyse(onnx_io.load(path)).conv_groups}
    assert widths["conv.0"] == widths["conv.1"] == 7  # depthwise follows its source
    assert len(sets) == len(widths)


def test_duplicated_heads_fold_with_zero_error(attention, tmp_path):
    path, got, reference, stats = _fold(attention, tmp_path, "heads", ratio=0.25, structures=["attention"])
    assert stats["groups"]["attn.0"] == [4, 3]
    np.testing.assert_allclose(got, reference, atol=1e-5)
    [group] = analyse(onnx_io.load(path)).attentions
    assert (group.num_heads, group.q.out_features, group.o.in_features) == (3, 24, 24)


# --- shrinking, baselines, determinism -------------------------------------------------------

def test_residual_tie_is_folded_jointly_and_classifier_follows(conv, tmp_path):
    path, _, _, stats = _fold(conv, tmp_path, "tie", ratio=0.0, layer_ratios={"conv.2": 0.5}, structures=["conv"])
    widths = {g.name: g.out_channels for g in analyse(onnx_io.load(path)).conv_groups}
    assert widths["conv.2"] == widths["conv.3"] == 3  # both sides of the residual add
    fc = next(v for k, v in onnx_io.load(path).graph.initializers.items() if k.startswith("fc.weight"))
    assert tuple(fc.shape) == (4, 3)


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_baselines_share_the_code_path_and_are_deterministic(ffn, tmp_path, method):
    a, got_a, _, stats = _fold(ffn, tmp_path, "a", ratio=0.5, method=method, structures=["ffn"], seed=3)
    b, got_b, _, _ = _fold(ffn, tmp_path, "b", ratio=0.5, method=method, structures=["ffn"], seed=3)
    assert stats["groups"]["ffn.0"][1] == 12
    assert a.with_suffix(".onnx.data").read_bytes() == b.with_suffix(".onnx.data").read_bytes()
    np.testing.assert_array_equal(got_a, got_b)


def test_magnitude_keeps_the_strongest_channels(ffn, tmp_path):
    path, _, _, _ = _fold(ffn, tmp_path, "mag", ratio=0.5, method="magnitude", allocation="uniform",
                          structures=["ffn"])
    original = onnx_io.load(ffn.path).graph.initializers
    model = onnx_io.load(path)
    [group] = analyse(model).ffns
    up = original[group.up.weight].const_value.numpy()  # [in, out]
    gate = original[group.gate.weight].const_value.numpy()
    down = original[group.down.weight].const_value.numpy()  # [inner, hidden]
    score = np.linalg.norm(np.concatenate([gate, up]), axis=0) * np.linalg.norm(down, axis=1)
    kept_up = model.graph.initializers[group.up.weight].const_value.numpy()
    expected = up[:, np.sort(np.argsort(-score, kind="stable")[:12])]
    np.testing.assert_array_equal(kept_up, expected)


def test_fold_is_byte_deterministic(conv, tmp_path):
    a, _, _, _ = _fold(conv, tmp_path, "a", ratio=0.3, structures=["conv"])
    b, _, _, _ = _fold(conv, tmp_path, "b", ratio=0.3, structures=["conv"])
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".onnx.data").read_bytes() == b.with_suffix(".onnx.data").read_bytes()


# --- math and allocation ---------------------------------------------------------------------

def test_fold_maps_and_fold_ar():
    labels = np.array([0, 1, 0, 2])
    producer, consumer = fold_maps(labels)
    np.testing.assert_allclose(producer, [[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(consumer, producer.T > 0)
    rows = np.array([[1.0, 2, 3], [0, 1, 0], [1, 2, 3], [3, 1, 2]])
    np.testing.assert_allclose(fold_ar_scale(labels, rows), [1, 1, 1])  # identical members: no repair
    uncorrelated = np.array([[1.0, -1, 0], [0, 1, 0], [-1, 1, 0.0], [3, 1, 2]])  # correlation -1 -> clipped to 0
    np.testing.assert_allclose(fold_ar_scale(labels, uncorrelated)[0], np.sqrt(2))
    assert kept_channels(1536, 0.2, 8) == 1232 and kept_channels(10, 0.0) == 10


def test_anchor_fold_keeps_important_channels_and_folds_duplicates_exactly():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(10, 6))
    rows[7] = rows[2]  # a duplicate
    rows[8] = 2.0 * rows[4]  # a scaled copy
    importance = np.linalg.norm(rows, axis=1) ** 2
    labels, anchors = anchor_assignment(importance, rows, 8)
    assert list(anchors) == [0, 1, 2, 3, 4, 5, 6, 9]  # the two copies go, their originals stay
    assert labels[7] == 2 and labels[8] == 4
    producer, consumer = anchor_maps(labels, anchors, rows)
    assert consumer[7, 2] == pytest.approx(1.0) and consumer[8, 4] == pytest.approx(2.0)
    # For a linear channel (and so for any positively homogeneous one) the fold is exact here.
    down, x = rng.normal(size=(10, 3)), rng.normal(size=6)
    np.testing.assert_allclose(down.T @ (rows @ x), (consumer.T @ down).T @ (producer @ rows @ x), rtol=1e-10)
    # Without copies the least important channels go; a protected channel stays even when it
    # is the least important one with a twin, and takes no members while another anchor exists.
    plain = rng.normal(size=(6, 4))
    plain[5] = plain[3]
    weights = np.array([5.0, 1.0, 4.0, 0.1, 3.0, 2.0])
    protected = np.array([False, False, False, True, False, False])
    labels, kept = anchor_assignment(weights, plain, 3, protected)
    assert list(kept) == [0, 2, 3]
    assert (labels[[1, 4, 5]] != 1).all()  # label 1 is the protected anchor (channel 3)
    with pytest.raises(ValueError):
        anchor_assignment(weights, plain, 0)


@pytest.mark.parametrize("which,structures", [("ffn", ["ffn"]), ("conv", ["conv"])])
def test_auto_merge_anchors_ffns_and_bn_convs_unless_fold_ar(which, structures, request, tmp_path):
    handle = request.getfixturevalue(which)
    def folded(tag, **options):
        path, got, *_ = _fold(handle, tmp_path, tag, ratio=0.3, structures=structures, **options)
        return got
    np.testing.assert_array_equal(folded("auto"), folded("anchor", merge="anchor"))
    assert not np.array_equal(folded("auto2"), folded("mean", merge="mean"))
    np.testing.assert_array_equal(folded("auto-ar", repair="fold-ar"), folded("mean-ar", merge="mean", repair="fold-ar"))


def test_kmeans_is_seeded_and_canonical():
    x = np.random.default_rng(0).normal(size=(40, 5))
    a = kmeans_labels(x, 7, seed=1)
    assert np.array_equal(a, kmeans_labels(x, 7, seed=1))
    assert a[0] == 0 and len(np.unique(a)) == 7
    first = [int(np.flatnonzero(a == c)[0]) for c in range(7)]
    assert first == sorted(first)


# --- config and errors -----------------------------------------------------------------------

def test_bad_options_are_user_errors(ffn):
    with pytest.raises(EdgefoldError, match="ratio"):
        create_pass("fold", {"ratio": 1.5})
    with pytest.raises(EdgefoldError, match="method"):
        create_pass("fold", {"method": "bogus"})
    model = onnx_io.load(ffn.path)
    with pytest.raises(EdgefoldError, match="no foldable"):
        create_pass("fold", {"layer_ratios": {"ffn.9": 0.5}}).run(model, PassContext(analysis=analyse(model)))
    with pytest.raises(EdgefoldError, match="no foldable conv"):
        create_pass("fold", {"structures": ["conv"]}).run(model, PassContext(analysis=analyse(model)))


def test_cli_folds_digits_cnn(cli, tmp_path, digits_onnx):
    out = tmp_path / "digits-folded"
    result = cli("compress", digits_onnx, "--pass", "fold:ratio=0.25,method=fold", "-o", out, "--no-eval")
    assert result.code == 0, result.err
    folded = out / "model.onnx"
    assert parameter_count(onnx_io.load(folded)) < parameter_count(onnx_io.load(digits_onnx))
    assert file_bytes(folded) < file_bytes(digits_onnx)


@pytest.mark.slow
def test_minilm_ffn_and_heads_fold_for_real(minilm_handle, tmp_path):
    path, got, reference, stats = _fold_real(minilm_handle, tmp_path, ratio=0.25, structures=["ffn", "attention"])
    before, after = analyse(onnx_io.load(minilm_handle.path)), analyse(onnx_io.load(path))
    assert after.totals["macs"] < 0.85 * before.totals["macs"]
    assert all(a.num_heads == 9 for a in after.attentions)
    cosine = float((got * reference).sum() / np.linalg.norm(got) / np.linalg.norm(reference))
    assert cosine > 0.5  # 25% of FFN channels and 3 of 12 heads gone, no data: far from exact, far from noise


def _fold_real(handle, tmp_path, **options):
    model = onnx_io.load(handle.path)
    outcome = create_pass("fold", options).run(model, PassContext(analysis=analyse(model), seed=0))
    path = onnx_io.save(outcome.model, tmp_path / "real" / "model.onnx")
    onnx_io.check(path)
    inputs, reference = handle.reference_io()
    name = next(iter(reference))
    return path, onnx_io.run(onnx_io.session(path), inputs)[name], reference[name], outcome.stats


def _fold_with_path(handle, tmp_path, tag, **options):
    """Like _fold_real, with the model file in the context (repair=lsq calibrates on it)."""
    model = onnx_io.load(handle.path)
    outcome = create_pass("fold", options).run(model, PassContext(analysis=analyse(model), seed=0,
                                                                  model_path=handle.path))
    path = onnx_io.save(outcome.model, tmp_path / tag / "model.onnx")
    onnx_io.check(path)
    inputs, reference = handle.reference_io()
    name = next(iter(reference))
    return path, onnx_io.run(onnx_io.session(path), inputs)[name], reference[name], outcome.stats


def test_lsq_repair_refits_minilm_ffns_and_is_exact_at_zero(minilm_handle, tmp_path):
    def cosine(got, ref):
        got, ref = got.reshape(len(ref), -1), ref.reshape(len(ref), -1)
        return float(np.mean((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)))

    _, got, reference, stats = _fold_with_path(minilm_handle, tmp_path, "zero", ratio=0.0, structures=["ffn"],
                                               repair="lsq", calibration_samples=2)
    np.testing.assert_array_equal(got, reference)
    assert stats["repair"] == "lsq" and stats["lsq_error_ratio"] == {}
    options = {"ratio": 0.3, "structures": ["ffn"], "allocation": "uniform"}
    _, plain, _, _ = _fold_with_path(minilm_handle, tmp_path, "plain", **options)
    path, repaired, _, stats = _fold_with_path(minilm_handle, tmp_path, "lsq", repair="lsq", calibration_samples=4,
                                               **options)
    assert cosine(repaired, reference) > cosine(plain, reference) + 0.01
    assert len(stats["lsq_error_ratio"]) == 6 and all(0 < r < 1 for r in stats["lsq_error_ratio"].values())
    assert stats["calibration_samples"] == 4 and len(stats["calibration_inputs_sha256"]) == 64
    # The pruning baseline's kept channels (a selection, sorted) are re-fitted the same way.
    _, pruned, _, _ = _fold_with_path(minilm_handle, tmp_path, "mag", method="magnitude", **options)
    _, pruned_lsq, _, stats = _fold_with_path(minilm_handle, tmp_path, "mag-lsq", method="magnitude", repair="lsq",
                                              calibration_samples=4, **options)
    assert cosine(pruned_lsq, reference) > cosine(pruned, reference) + 0.01
    assert all(0 < r < 1 for r in stats["lsq_error_ratio"].values())
    with pytest.raises(EdgefoldError, match="repair=lsq re-fits.*merge=anchor"):
        create_pass("fold", {"repair": "lsq", "merge": "mean"})
    with pytest.raises(EdgefoldError, match="calibration_text is read only by repair=lsq"):
        create_pass("fold", {"calibration_text": str(tmp_path)})
