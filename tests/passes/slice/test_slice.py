"""The `slice` pass: exactness at 0%, valid sliced graphs, KS = scipy, prune-once policy reuse."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.stats
import torch

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.errors import EdgefoldError
from edgefold.export import export_module
from edgefold.passes.base import PassContext
from edgefold.passes.slice.prune_policy import LayerMatrix, load_policy, train_policy
from edgefold.passes.slice.spectrum import ks_distance, singular_values
from edgefold.passes.registry import create_pass
from edgefold.passes.slice.slice import round_kept, water_fill

HIDDEN, INNER = 16, 64


class GatedBlock(torch.nn.Module):
    """Two pre-norm SwiGLU FFNs (RMSNorm gain as an explicit Mul, like the real exports)."""

    def __init__(self, seed=0, layers=2):
        super().__init__()
        torch.manual_seed(seed)
        self.gains = torch.nn.ParameterList([torch.nn.Parameter(torch.rand(HIDDEN) + 0.5) for _ in range(layers)])
        self.gate = torch.nn.ModuleList([torch.nn.Linear(HIDDEN, INNER, bias=False) for _ in range(layers)])
        self.up = torch.nn.ModuleList([torch.nn.Linear(HIDDEN, INNER, bias=False) for _ in range(layers)])
        self.down = torch.nn.ModuleList([torch.nn.Linear(INNER, HIDDEN, bias=False) for _ in range(layers)])

    def forward(self, x):
        for gain, gate, up, down in zip(self.gains, self.gate, self.up, self.down):
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * gain
            x = x + down(torch.nn.functional.silu(gate(h)) * up(h))
        return x


class PlainBlock(torch.nn.Module):
    """A BERT-style FFN with biases and a LayerNorm in front (same hidden size)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.fc1 = torch.nn.Linear(HIDDEN, INNER)
        self.fc2 = torch.nn.Linear(INNER, HIDDEN)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def _export(module, name, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(1))
    return export_module(module.eval(), {"x": x}, name=name, output_names=["y"],
                         dynamic_axes={"x": {0: "batch", 1: "seq"}})


def _slice(handle, options, out, *, profile=None):
    model = onnx_io.load(handle.path)
    graph_pass = create_pass("slice", options)
    context = PassContext(analysis=analyse(model), seed=0, profile=profile, model_path=handle.path)
    outcome = graph_pass.run(model, context)
    path = onnx_io.save(outcome.model, out / "model.onnx")
    return path, outcome.stats, graph_pass


def _mean_cosine(path, inputs, reference: dict, name: str) -> float:
    """Mean per-row cosine between the model's output `name` on `inputs` and the reference's."""
    got = onnx_io.run(onnx_io.session(path), inputs)[name].reshape(len(reference[name]), -1)
    ref = reference[name].reshape(len(got), -1)
    return float(np.mean((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)))


def _sha(path) -> str:
    digest = hashlib.sha256()
    for file in onnx_io.model_files(path):
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def gated(tmp_path, monkeypatch):
    return _export(GatedBlock(), "gated", tmp_path, monkeypatch)


def test_ks_distance_matches_scipy():
    rng = np.random.default_rng(0)
    for trial in range(100):
        a = rng.normal(size=rng.integers(1, 60))
        b = rng.normal(0.4, 1.3, size=rng.integers(1, 60))
        if trial % 3 == 0:  # ties inside and across samples
            a, b = np.round(a, 1), np.round(b, 1)
        assert ks_distance(a, b) == pytest.approx(scipy.stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert ks_distance([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert ks_distance([0.0], [5.0]) == 1.0


def test_singular_values_gram_matches_svd():
    matrix = np.random.default_rng(1).normal(size=(90, 30))
    np.testing.assert_allclose(singular_values(matrix, method="gram"), singular_values(matrix), rtol=1e-9)
    np.testing.assert_allclose(singular_values(matrix), scipy.linalg.svdvals(matrix), rtol=1e-12)


def test_zero_ratio_is_exact(gated, tmp_path):
    inputs, reference = gated.reference_io()
    policy = tmp_path / "p.pt"
    path, stats, _ = _slice(gated, {"ratio": 0.0, "policy": str(policy), "episodes": 2}, tmp_path / "zero")
    onnx_io.check(path)
    np.testing.assert_array_equal(onnx_io.run(onnx_io.session(path), inputs)["y"], reference["y"])
    assert stats["channels_after"] == stats["channels_before"] == 2 * INNER


@pytest.mark.parametrize("method", ["policy", "magnitude", "random"])
def test_sliced_graph_is_valid_and_narrower(gated, tmp_path, method):
    inputs, reference = gated.reference_io()
    options = {"ratio": 0.5, "method": method, "policy": str(tmp_path / "p.pt"), "episodes": 2, "channel_multiple": 8}
    path, stats, _ = _slice(gated, options, tmp_path / method)
    onnx_io.check(path)
    got = onnx_io.run(onnx_io.session(path), inputs)["y"]
    assert got.shape == reference["y"].shape and np.isfinite(got).all()
    widths = [g.intermediate for g in analyse(onnx_io.load(path)).ffns]
    assert widths == [layer["kept"] for layer in stats["layers"]]
    assert all(w % 8 == 0 and w < INNER for w in widths)
    assert sum(widths) == pytest.approx(INNER, abs=8)  # half of 2 x 64 under the global budget
    assert not np.array_equal(got, reference["y"])


def test_policy_is_reused_for_new_ratio_and_new_model_without_training(gated, tmp_path, monkeypatch):
    policy = tmp_path / "policy.pt"
    _, first_stats, first = _slice(gated, {"ratio": 0.25, "policy": str(policy), "episodes": 20}, tmp_path / "a")
    assert first.policy_trained and first.timings["policy_train_s"] > 0
    saved = policy.read_bytes()

    _, stats, second = _slice(gated, {"ratio": 0.5, "policy": str(policy), "episodes": 20}, tmp_path / "b")
    assert not second.policy_trained and "policy_train_s" not in second.timings
    assert second.timings["policy_s"] < first.timings["policy_train_s"] / 5
    assert policy.read_bytes() == saved
    assert stats["policy_files"][0]["sha256"] == first_stats["policy_files"][0]["sha256"]

    # Another model (plain FFN, biases, LayerNorm) with the same hidden size reuses it too.
    plain = _export(PlainBlock(), "plain", tmp_path / "plain", monkeypatch)
    path, _, third = _slice(plain, {"ratio": 0.5, "policy": str(policy)}, tmp_path / "c")
    assert not third.policy_trained and policy.read_bytes() == saved
    onnx_io.check(path)
    assert [g.intermediate for g in analyse(onnx_io.load(path)).ffns] == [32]


def test_deterministic_bytes_and_policy(gated, tmp_path):
    paths = []
    for run in range(2):
        policy = tmp_path / f"p{run}.pt"
        path, _, _ = _slice(gated, {"ratio": 0.3, "policy": str(policy), "episodes": 5}, tmp_path / f"r{run}")
        paths.append((path, policy))
    assert _sha(paths[0][0]) == _sha(paths[1][0])
    assert paths[0][1].read_bytes() == paths[1][1].read_bytes()


def test_training_lowers_ks_and_policy_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    layers = [LayerMatrix(f"l{i}", rng.normal(size=(96, 24)) * rng.lognormal(0, 1, size=(96, 1))) for i in range(3)]
    policy, log = train_policy(layers, episodes=40, seed=0, layers_per_episode=3)
    assert log.episodes == 40 and not log.stopped_by_time
    assert log.mean_ks_last < log.mean_ks_first  # REINFORCE moved towards spectrum-preserving masks
    from edgefold.passes.slice.prune_policy import save_policy

    save_policy(policy, tmp_path / "x.pt", meta={"episodes": 40})
    loaded, meta = load_policy(tmp_path / "x.pt", hidden=24)
    np.testing.assert_array_equal(loaded.scores(layers[0].matrix), policy.scores(layers[0].matrix))
    assert meta == {"episodes": 40}
    with pytest.raises(EdgefoldError, match="hidden size 24"):
        load_policy(tmp_path / "x.pt", hidden=32)
    (tmp_path / "bad.pt").write_bytes(b"not a policy")
    with pytest.raises(EdgefoldError, match="not an edgefold slice policy"):
        load_policy(tmp_path / "bad.pt")


def test_explicit_ratios_profile_multiple_and_errors(gated, tmp_path):
    from edgefold.targets.profiles import load_profile

    _, stats, _ = _slice(gated, {"layer_ratios": {"ffn.0": 0.0, "ffn.1": 0.5}, "method": "magnitude"}, tmp_path / "e")
    assert [layer["kept"] for layer in stats["layers"]] == [INNER, 32]
    profile = load_profile("mobile-arm64")  # channel_multiple 16
    _, stats, _ = _slice(gated, {"ratio": 0.3, "method": "random", "allocation": "uniform"}, tmp_path / "m",
                         profile=profile)
    assert stats["multiple"] == 16 and all(layer["kept"] % 16 == 0 for layer in stats["layers"])
    with pytest.raises(EdgefoldError, match="no ratio for ffn.1"):
        _slice(gated, {"layer_ratios": {"ffn.0": 0.2}}, tmp_path / "x")
    with pytest.raises(EdgefoldError, match="bad options"):
        create_pass("slice", {"ratio": 1.5})


def test_allocation_helpers():
    widths = np.array([100, 100, 100])
    ratios = water_fill(np.array([1.0, 1.0, 10.0]), widths, budget=90, cap=0.5)
    assert ratios.max() <= 0.5 + 1e-12 and (ratios * widths).sum() == pytest.approx(90)
    with pytest.raises(EdgefoldError):
        water_fill(np.ones(3), widths, budget=200, cap=0.5)
    assert round_kept(1536, 0.0, 8) == 1536 and round_kept(1536, 0.2, 8) % 8 == 0 and round_kept(64, 0.99, 16) == 16


def test_activation_ranking_keeps_minilm_closer_than_random(minilm_handle, tmp_path):
    # method=activation runs the model on calibration text (not calibration-free); at the
    # same widths its channels must keep the encoder closer to the original than random ones.
    inputs, reference = minilm_handle.reference_io()
    name = next(iter(reference))

    options = {"ratio": 0.4, "allocation": "uniform", "calibration_samples": 4}
    path, stats, _ = _slice(minilm_handle, {**options, "method": "activation"}, tmp_path / "act")
    onnx_io.check(path)
    assert stats["calibration_samples"] == 4 and stats["channel_ratio"] == pytest.approx(0.4, abs=0.01)
    random_path, _, _ = _slice(minilm_handle, {**options, "method": "random"}, tmp_path / "random")
    assert _mean_cosine(path, inputs, reference, name) > _mean_cosine(random_path, inputs, reference, name) + 0.02


def test_activation_ranking_errors_are_one_line(gated, tmp_path):
    model = onnx_io.load(gated.path)
    graph_pass = create_pass("slice", {"ratio": 0.5, "method": "activation"})
    with pytest.raises(EdgefoldError, match="slice: calibration needs the model file"):
        graph_pass.run(model, PassContext(analysis=analyse(model), seed=0))
    with pytest.raises(EdgefoldError, match="slice: calibration needs a model with a known task.*method=policy"):
        _slice(gated, {"ratio": 0.5, "method": "activation"}, tmp_path / "x")


def test_cli_slices_minilm(cli, minilm_onnx, tmp_path):
    out = tmp_path / "out"
    result = cli("compress", minilm_onnx, "--pass", f"slice:ratio=0.3,episodes=3,policy={tmp_path / 'p.pt'}",
                 "-o", out, "--no-eval")
    assert result.code == 0, result.err
    widths = [g.intermediate for g in analyse(onnx_io.load(out / "model.onnx")).ffns]
    assert len(widths) == 6 and sum(widths) == pytest.approx(0.7 * 6 * 1536, abs=6 * 8)
    assert cli("compress", minilm_onnx, "--pass", "slice:ratio=0.3,method=nope", "-o", tmp_path / "bad").code == 2


@pytest.mark.slow
def test_smollm2_sliced_with_spectrum_allocation_runs(smollm2_handle, tmp_path):
    inputs, reference = smollm2_handle.reference_io()
    path, stats, _ = _slice(smollm2_handle, {"ratio": 0.2, "episodes": 2, "policy": str(tmp_path / "p.pt")},
                            tmp_path / "s")
    onnx_io.check(path)
    logits = onnx_io.run(onnx_io.session(path), inputs)["logits"]
    assert logits.shape == reference["logits"].shape and np.isfinite(logits).all()
    kept = [layer["kept"] for layer in stats["layers"]]
    assert len(kept) == 30 and all(k % 8 == 0 for k in kept) and len(set(kept)) > 1  # per-layer, not uniform
    assert stats["channel_ratio"] == pytest.approx(0.2, abs=0.01)
    # Layer 0 and the last two (the sensitive ones) keep more than the average layer.
    assert min(kept[0], kept[-1], kept[-2]) > np.mean(kept)


def test_calibration_energy_uses_the_asked_channel_axis():
    from edgefold.passes.common.calibration import _energy

    x = np.random.default_rng(0).normal(size=(2, 1, 3, 5))  # a 4-D MatMul input: channels last, not NCHW
    total, count = _energy(x, axis=-1)
    np.testing.assert_allclose(total, np.square(x).reshape(-1, 5).sum(0))
    assert count == 6
    assert _energy(x)[0].shape == (1,)  # the default reads 4-D as NCHW (quantize's conv inputs)


def test_activation_reads_the_users_calibration_text(minilm_handle, gated, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("The river flooded the town after days of rain.\n\n"
                    "Shares fell sharply on Monday as investors sold.\nA new vaccine was approved.\n", encoding="utf-8")
    options = {"ratio": 0.3, "method": "activation"}
    path, stats, _ = _slice(minilm_handle, {**options, "calibration_text": str(text)}, tmp_path / "own")
    onnx_io.check(path)
    assert stats["calibration_samples"] == 3  # the blank line is not a document
    documents = [line for line in text.read_text().split("\n") if line]
    assert stats["calibration_text_sha256"] == hashlib.sha256("\n".join(documents).encode()).hexdigest()
    _, two, _ = _slice(minilm_handle, {**options, "calibration_text": str(text), "calibration_samples": 2},
                       tmp_path / "two")
    assert two["calibration_samples"] == 2 and two["calibration_text_sha256"] != stats["calibration_text_sha256"]
    lee_path, lee_stats, _ = _slice(minilm_handle, {**options, "calibration_samples": 3}, tmp_path / "lee")
    assert "calibration_text_sha256" not in lee_stats and _sha(lee_path) != _sha(path)

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    for source, file, message in [(minilm_handle, tmp_path / "missing.txt", "calibration_text .*missing.txt: no such file"),
                                  (minilm_handle, empty, "slice: calibration_text .* has no text"),
                                  (gated, text, "slice: calibration_text needs a text model")]:
        with pytest.raises(EdgefoldError, match=message):
            _slice(source, {**options, "calibration_text": str(file)}, tmp_path / "bad")
    with pytest.raises(EdgefoldError, match="calibration_text is read only by method=activation or repair=lsq"):
        create_pass("slice", {"ratio": 0.3, "calibration_text": str(text)})


def test_lsq_repair_with_nothing_removed_is_exact(minilm_handle, tmp_path):
    inputs, reference = minilm_handle.reference_io()
    path, stats, _ = _slice(minilm_handle, {"ratio": 0.0, "method": "magnitude", "repair": "lsq",
                                            "calibration_samples": 2}, tmp_path / "zero")
    name = next(iter(reference))
    np.testing.assert_array_equal(onnx_io.run(onnx_io.session(path), inputs)[name], reference[name])
    assert stats["repair"] == "lsq" and stats["calibration_samples"] == 2
    assert all("lsq_error_ratio" not in layer for layer in stats["layers"])


def test_lsq_repair_brings_minilm_closer_and_records_its_calibration(minilm_handle, gated, tmp_path):
    # Same channels removed (magnitude ranking, uniform widths); the repair re-fits every
    # down projection on 4 Lee background documents and must keep the encoder closer to fp32
    # on the test inputs than plain slicing, and lower every layer's calibration error.
    inputs, reference = minilm_handle.reference_io()
    name = next(iter(reference))

    options = {"ratio": 0.4, "method": "magnitude", "allocation": "uniform"}
    plain, _, _ = _slice(minilm_handle, options, tmp_path / "plain")
    repaired, stats, _ = _slice(minilm_handle, {**options, "repair": "lsq", "calibration_samples": 4},
                                tmp_path / "lsq")
    onnx_io.check(repaired)
    assert _mean_cosine(repaired, inputs, reference, name) > _mean_cosine(plain, inputs, reference, name) + 0.01
    ratios = [layer["lsq_error_ratio"] for layer in stats["layers"]]
    assert len(ratios) == 6 and all(0 < r < 1 for r in ratios)
    assert stats["calibration_samples"] == 4 and len(stats["calibration_inputs_sha256"]) == 64
    # The bias went into the existing fc2 biases: the graph has the same nodes, narrower.
    assert [n.op_type for n in onnx_io.load(repaired).graph] == [n.op_type for n in onnx_io.load(plain).graph]
    again, again_stats, _ = _slice(minilm_handle, {**options, "repair": "lsq", "calibration_samples": 4},
                                   tmp_path / "again")
    assert _sha(again) == _sha(repaired) and again_stats == stats  # reproducible to the byte
    with pytest.raises(EdgefoldError, match="slice: calibration needs a model with a known task.*repair=none"):
        _slice(gated, {**options, "repair": "lsq"}, tmp_path / "bad")
