"""`quantize`: formats round-trip within their bounds, graphs run, budgets hold or are refused."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold.hashing import sha256_files
from edgefold.model_stats import file_bytes
from edgefold.passes.base import PassContext
from edgefold.passes.quantize import quant_formats as qf
from edgefold.passes.quantize.bit_allocation import Option, allocate
from edgefold.passes.registry import create_pass
from edgefold.targets.profiles import load_profile

FORMATS = ["fp32", "fp16", "fp8", "int8", "int8-g32", "int4-g32-sym", "int4-g64-sym", "int4-g128-sym", "int4-ch-sym",
           "int4-g32-asym", "int4-g128-asym", "int4-ch-asym", "int4-g32-min", "int4-g64-min",
           "int4-g32-sym-s8", "int4-g32-min-s8", "int4-g128-asym-s8", "int4-g32-min-s8t", "int4-g128-sym-s8t"]
VOCAB, HIDDEN, INNER = 64, 128, 192


# ---------------------------------------------------------------- format math


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("case", ["matmul", "transposed", "ragged", "conv"])
def test_round_trip_within_bound(name, case):
    rng = np.random.default_rng(0)
    shape, layout = {"matmul": ((128, 48), qf.Layout(1, 0)), "transposed": ((40, 256), qf.Layout(0, 1)),
                     "ragged": ((200, 24), qf.Layout(1, 0)), "conv": ((16, 64, 3, 3), qf.Layout(0, 1))}[case]
    weight = (rng.standard_normal(shape) * rng.uniform(0.01, 0.2, size=shape[-1])).astype(np.float32)
    weight.flat[::97] *= 8  # a few outliers
    fmt = qf.parse_format(name)
    if not qf.supports(shape, fmt, layout):
        pytest.skip("min scheme needs whole blocks")
    for search in (False, True):
        q = qf.quantize(weight, fmt, layout, search=search)
        approx = q.dequantize()
        assert approx.shape == weight.shape and approx.dtype == np.float32
        assert q.nbytes == qf.storage_bytes(shape, fmt, layout)  # sizes are known before quantizing
        if not search:
            assert np.all(np.abs(approx - weight) <= qf.error_bound(q, weight))
        else:  # the range search may clip, but never does worse than plain min/max per block
            plain = qf.quantize(weight, fmt, layout).dequantize()  # (-s8 re-rounds scales afterwards: ~)
            slack = 1 + 1e-6 if fmt.scale_bits == 16 else 1.25
            assert np.square(approx - weight).sum() <= np.square(plain - weight).sum() * slack
    if fmt.kind == "fp32":
        assert np.array_equal(approx, weight)
    relative = np.square(approx - weight).sum() / np.square(weight).sum()
    assert relative < {"fp32": 1e-30, "fp16": 1e-6, "fp8": 3e-3, "int8": 2e-3, "int4": 0.15}[fmt.kind]


def test_format_names_and_errors():
    assert qf.parse_format("int4").name == "int4-g32-asym"
    assert qf.parse_format("int4", block=128).name == "int4-g128-asym"
    assert qf.parse_format("int4-g64").name == "int4-g64-asym"
    assert qf.parse_format("int4", block=0, scheme="sym").name == "int4-ch-sym"
    assert qf.parse_format("INT4-G64-MIN-S8") == qf.Format("int4", 64, "min", 8)
    for name in FORMATS:
        assert qf.parse_format(name).name == name
    assert qf.parse_format("int4-g64-sym-s8t") == qf.Format("int4", 64, "sym", 8, "tensor")
    for bad in ["int3", "fp8-g32", "int8-asym", "int4-g1", "fp16-s8", "int4-ch-s8t"]:
        with pytest.raises(EdgefoldError):
            qf.parse_format(bad)


def test_nibble_packing_matches_onnx():
    values = np.array([1, -2, 3, 7, -8, 0, 5], np.int8)
    packed = qf.pack_nibbles(values)
    assert packed.tolist() == [0xE1, 0x73, 0x08, 0x05]  # first element in the low nibble
    assert np.array_equal(qf.unpack_nibbles(packed, 7, signed=True), values)
    reference = numpy_helper.to_array(helper.make_tensor("t", TensorProto.INT4, [7], values.tolist()))
    assert np.array_equal(reference.astype(np.int8), values)


def test_q4_1_grid_is_reproduced():
    """Weights on GGUF's Q4_1 grid (w = d q + m per 32 inputs) come back exactly from `min`."""
    rng = np.random.default_rng(1)
    d = rng.uniform(0.002, 0.01, (4, 1, 16)).astype(np.float16).astype(np.float32)
    m = -rng.uniform(0, 0.08, (4, 1, 16)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (4, 32, 16))
    q[:, 0], q[:, 1] = 0, 15
    weight = (q * d + m).reshape(128, 16).astype(np.float32)
    layout = qf.Layout(1, 0)
    assert np.array_equal(qf.quantize(weight, qf.parse_format("int4-g32-min"), layout).dequantize(), weight)
    s8 = qf.quantize(weight, qf.parse_format("int4-g32-min-s8"), layout).dequantize()
    rtn = qf.quantize(weight, qf.parse_format("int4-g32-asym"), layout).dequantize()
    assert np.square(s8 - weight).sum() < 0.02 * np.square(rtn - weight).sum()


# ---------------------------------------------------------------- allocator


def test_allocator_is_optimal_and_never_over_budget():
    rng = np.random.default_rng(2)
    layers = [[Option(f"f{k}", int(b), float(e)) for k, (b, e) in
               enumerate(zip(sorted(rng.integers(10, 200, 4)), sorted(rng.random(4), reverse=True)))]
              for _ in range(6)]
    least = sum(options[0].nbytes for options in layers)
    most = sum(options[-1].nbytes for options in layers)
    for budget in np.linspace(least, most, 6).astype(int):
        picks = allocate(layers, budget, resolution=50)
        used = sum(layers[i][p].nbytes for i, p in enumerate(picks))
        assert used <= budget
        best = min((sum(layers[i][c].error for i, c in enumerate(combo)) for combo in
                    itertools.product(range(4), repeat=6)
                    if sum(layers[i][c].nbytes for i, c in enumerate(combo)) <= budget), default=None)
        assert best is not None
        assert sum(layers[i][p].error for i, p in enumerate(picks)) <= best * 1.05 + 1e-9
    with pytest.raises(EdgefoldError, match="impossible"):
        allocate(layers, least - 1)


# ---------------------------------------------------------------- graphs


def _tiny_lm(path) -> None:
    """ids -> Gather(E) -> MatMul W1 -> Relu -> MatMul W2 -> MatMul Transpose(E): a tied lm_head."""
    rng = np.random.default_rng(3)
    embed = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32) * 0.1
    w1 = rng.standard_normal((HIDDEN, INNER)).astype(np.float32) * 0.05
    w2 = rng.standard_normal((INNER, HIDDEN)).astype(np.float32) * 0.05
    gamma = rng.uniform(0.5, 2, HIDDEN).astype(np.float32)
    nodes = [helper.make_node("Gather", ["embed", "ids"], ["x"], name="gather"),
             helper.make_node("Mul", ["x", "gamma"], ["xn"], name="norm"),
             helper.make_node("MatMul", ["xn", "w1"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="down"),
             helper.make_node("Transpose", ["embed"], ["embed_t"], perm=[1, 0], name="tied"),
             helper.make_node("MatMul", ["y", "embed_t"], ["logits"], name="head")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "t", VOCAB])],
        initializer=[numpy_helper.from_array(a, n) for n, a in
                     [("embed", embed), ("w1", w1), ("w2", w2), ("gamma", gamma)]])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)


def _tiny_cnn(path) -> None:
    rng = np.random.default_rng(4)
    conv = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    depthwise = rng.standard_normal((32, 1, 3, 3)).astype(np.float32) * 0.3
    fc = rng.standard_normal((10, 32)).astype(np.float32) * 0.2
    nodes = [helper.make_node("Conv", ["image", "conv"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "depthwise"], ["d"], pads=[1, 1, 1, 1], group=32, name="dw"),
             helper.make_node("GlobalAveragePool", ["d"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["out"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 16, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 10])],
        initializer=[numpy_helper.from_array(a, n) for n, a in [("conv", conv), ("depthwise", depthwise), ("fc", fc)]])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "model.onnx"
    _tiny_lm(path)
    return path


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    _tiny_cnn(path)
    return path


LM_FEEDS = {"ids": np.array([[1, 5, 9, 63, 0], [2, 2, 40, 17, 8]], np.int64)}
CNN_FEEDS = {"image": np.random.default_rng(5).standard_normal((2, 16, 8, 8)).astype(np.float32)}


def _apply(path, out_dir, options, profile=None):
    model = onnx_io.load(path)
    outcome = create_pass("quantize", {"min_elements": 0, **options}).run(
        model, PassContext(profile=profile, model_path=path))
    out = onnx_io.save(outcome.model, out_dir / "model.onnx")
    onnx_io.check(out)
    return out, outcome.stats


def _session(path):
    """onnxruntime with basic optimisations only: at higher levels it rewrites DequantizeLinear ->
    MatMul into its own MatMulNBits, which quantizes activations (not what the graph says)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(path, feeds):
    return _session(path).run(None, feeds)[0]


def _with_dequantized_weights(path, stats, layouts, out_path):
    """The original graph with each quantized weight replaced by what its format decodes to."""
    proto = onnx.load(str(path))
    formats = {row[0]: row[1] for row in stats["layers"]}
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # w1 reads the output of Mul(x, gamma): its input energy (gamma^2) weighs the -s8 refit
    importance = {"w1": np.square(arrays["gamma"].astype(np.float64))} if "gamma" in arrays else {}
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name in formats:
            weight = numpy_helper.to_array(tensor)
            q = qf.quantize(weight, qf.parse_format(formats[tensor.name]), layouts[tensor.name],
                            importance=importance.get(tensor.name))
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(q.dequantize(), tensor.name))
    onnx.save(proto, str(out_path))
    return out_path


LM_LAYOUTS = {"embed": qf.Layout(0, 1), "w1": qf.Layout(1, 0), "w2": qf.Layout(1, 0)}
CNN_LAYOUTS = {"conv": qf.Layout(0, 1), "depthwise": qf.Layout(0, 1), "fc": qf.Layout(0, 1)}


@pytest.mark.parametrize("fmt", ["fp16", "fp8", "int8", "int4-g32-sym", "int4-g64-asym", "int4-ch-sym", "int4-g32-min",
                                 "int4-g32-min-s8", "int4-g64-asym-s8", "int4-g32-min-s8t", "int4-g64-sym-s8t"])
def test_graph_decodes_like_numpy(tiny_lm, tmp_path, fmt):
    out, stats = _apply(tiny_lm, tmp_path, {"format": fmt})
    assert {row[1] for row in stats["layers"]} == {fmt}
    reference = _with_dequantized_weights(tiny_lm, stats, LM_LAYOUTS, tmp_path / "reference.onnx")
    np.testing.assert_allclose(_run(out, LM_FEEDS), _run(reference, LM_FEEDS), rtol=1e-5, atol=1e-6)
    proto = onnx.load(str(out), load_external_data=False)
    stored = [t.name for t in proto.graph.initializer if t.name.startswith("embed")]
    # the tied table is stored once (codes, scales...) and read by both the Gather and the Transpose
    assert "embed" not in stored and sum(n in ("embed_quantized", "embed_fp16") for n in stored) == 1
    readers = [n.op_type for n in proto.graph.node if "embed" in n.input]
    assert sorted(readers) == ["Gather", "Transpose"]
    onnx_io.run(onnx_io.session(out), LM_FEEDS)  # and the default (fully optimised) session runs it


def test_fp32_is_exact(tiny_lm, tmp_path):
    out, stats = _apply(tiny_lm, tmp_path, {"format": "fp32"})
    assert stats["bytes_after"] == stats["bytes_before"]
    assert np.array_equal(_run(out, LM_FEEDS), _run(tiny_lm, LM_FEEDS))
    assert [n.op_type for n in onnx_io.load(out).graph] == [n.op_type for n in onnx_io.load(tiny_lm).graph]


def test_file_really_shrinks_and_is_deterministic(tiny_lm, tmp_path):
    for options in ({"format": "int4-g32-sym"}, {"avg_bits": 5.0}):
        (tmp_path / "a").mkdir(exist_ok=True), (tmp_path / "b").mkdir(exist_ok=True)
        first, stats = _apply(tiny_lm, tmp_path / "a", options)
        second, _ = _apply(tiny_lm, tmp_path / "b", options)
        assert sha256_files(onnx_io.model_files(first)) == sha256_files(onnx_io.model_files(second))
    first, stats = _apply(tiny_lm, tmp_path / "a", {"format": "int4-g32-sym"})
    weights = VOCAB * HIDDEN + 2 * HIDDEN * INNER
    assert stats["bytes_after"] == weights // 2 + 2 * weights // 32  # packed nibbles + fp16 block scales
    assert file_bytes(first) < file_bytes(tiny_lm) / 5


@pytest.mark.parametrize("fmt", ["int8", "int4-g16-asym", "fp8"])
def test_convolutions_and_gemm(tiny_cnn, tmp_path, fmt):
    out, stats = _apply(tiny_cnn, tmp_path, {"format": fmt})
    assert [row[0] for row in stats["layers"]] == ["conv", "depthwise", "fc"]
    reference = _with_dequantized_weights(tiny_cnn, stats, CNN_LAYOUTS, tmp_path / "reference.onnx")
    np.testing.assert_allclose(_run(out, CNN_FEEDS), _run(reference, CNN_FEEDS), rtol=1e-5, atol=1e-6)
    if fmt == "int4-g16-asym":  # 16 input channels per block in the conv; depthwise falls back to per channel
        codes = {t.name: list(t.dims) for t in onnx.load(str(out)).graph.initializer}
        assert codes["conv_scale"] == [32, 1, 3, 3] and codes["depthwise_scale"] == [32]


@pytest.mark.parametrize("avg_bits", [4.6, 6.0, 9.0])
def test_avg_bits_budget_is_met(tiny_lm, tmp_path, avg_bits):
    out, stats = _apply(tiny_lm, tmp_path, {"avg_bits": avg_bits})
    assert stats["avg_bits"] <= avg_bits
    assert stats["avg_bits"] > avg_bits - 1.0  # the allocator spends the budget, it does not just go low
    assert stats["bytes_after"] <= stats["budget"]["budget_bytes"]
    onnx_io.run(onnx_io.session(out), LM_FEEDS)


def test_size_budget_is_met(tiny_lm, tmp_path):
    limit_mb = 0.06
    out, stats = _apply(tiny_lm, tmp_path, {"size_mb": limit_mb})
    assert file_bytes(out) <= limit_mb * 1e6
    assert len(stats["formats"]) >= 1


def test_impossible_budgets_are_refused(tiny_lm, tmp_path):
    with pytest.raises(EdgefoldError, match="impossible.*bits per weight"):
        _apply(tiny_lm, tmp_path, {"avg_bits": 3.0})
    with pytest.raises(EdgefoldError, match="impossible.*MB"):
        _apply(tiny_lm, tmp_path, {"size_mb": 0.001})
    with pytest.raises(EdgefoldError, match="one of"):
        create_pass("quantize", {"avg_bits": 4.5, "format": "int8"})


def test_fp8_needs_a_profile_that_has_it(tiny_lm, tmp_path):
    with pytest.raises(EdgefoldError, match="host.*fp8.*server-gpu"):
        _apply(tiny_lm, tmp_path, {"format": "fp8"}, profile=load_profile("host"))
    _, stats = _apply(tiny_lm, tmp_path, {"format": "fp8"}, profile=load_profile("server-gpu"))
    assert stats["formats"] == {"fp8": 3}
    _, stats = _apply(tiny_lm, tmp_path, {"avg_bits": 9.0}, profile=load_profile("host"))
    assert "fp8" not in stats["formats"] and "fp8" not in stats["budget"]["candidates"]


def test_matmul_nbits_for_onnxruntime(tiny_lm, tmp_path):
    (tmp_path / "std").mkdir(), (tmp_path / "ort").mkdir()
    standard, _ = _apply(tiny_lm, tmp_path / "std", {"format": "int4-g32-asym"})
    ort, stats = _apply(tiny_lm, tmp_path / "ort", {"format": "int4-g32-asym", "emit": "onnxruntime"})
    ops = [n.op_type for n in onnx_io.load(ort).graph]
    assert ops.count("MatMulNBits") == 2  # w1, w2; the tied table stays DequantizeLinear
    np.testing.assert_allclose(_run(standard, LM_FEEDS), _run(ort, LM_FEEDS), rtol=1e-4, atol=1e-5)


def test_mixed_prefers_sensitive_weights(tiny_lm, tmp_path):
    """With room for only some weights to stay precise, the tied table (embedding + head) gets them."""
    _, stats = _apply(tiny_lm, tmp_path, {"avg_bits": 6.0, "formats": ["int8", "int4-g128-sym"]})
    formats = {row[0]: row[1] for row in stats["layers"]}
    assert formats["embed"] == "int8"


# ---------------------------------------------------------------- real models


def test_minilm_int8_through_the_cli(cli, minilm_onnx, tmp_path):
    result = cli("compress", minilm_onnx, "--pass", "quantize:format=int8", "-o", tmp_path / "out", "--no-eval")
    assert result.code == 0, result.err
    manifest = __import__("json").loads((tmp_path / "out" / "manifest.json").read_text())
    record = manifest["passes"][0]
    assert record["fidelity"]["cosine"] > 0.999
    assert record["file_bytes"] < manifest["model"]["file_bytes"] / 3
    refused = cli("compress", minilm_onnx, "--pass", "quantize:format=fp8", "-o", tmp_path / "x", "--no-eval")
    assert refused.code == 2 and "fp8" in refused.err


@pytest.mark.slow
def test_smollm2_tied_embedding_quantized_once(smollm2_handle, tmp_path):
    model = onnx_io.load(smollm2_handle.path)
    outcome = create_pass("quantize", {"format": "int4-g32-min-s8", "embedding": "int8"}).run(
        model, PassContext(model_path=smollm2_handle.path))
    rows = {row[0]: row for row in outcome.stats["layers"]}
    assert rows["model.lm_head.weight"][1] == "int8"
    assert len(rows) == 211 and math.isclose(outcome.stats["avg_bits"], 5.32, abs_tol=0.02)
    out = onnx_io.save(outcome.model, tmp_path / "model.onnx")
    assert file_bytes(out) < 0.2 * file_bytes(smollm2_handle.path)
    proto = onnx.load(str(out), load_external_data=False)
    assert sorted(n.op_type for n in proto.graph.node if "model.lm_head.weight" in n.input) == ["Gather", "Transpose"]
    inputs, reference = smollm2_handle.reference_io()
    got = onnx_io.run(onnx_io.session(out), inputs)
    for name, value in reference.items():  # the weights sit on a 4-bit grid that -min-s8 nearly reproduces
        a, b = got[name].reshape(-1).astype(np.float64), value.reshape(-1).astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_activation_scaling_keeps_the_function(tiny_lm, tmp_path):
    from edgefold.passes.quantize.act_scaling import scale_norm_inputs
    from edgefold.passes.quantize.quantize import find_sites

    model = onnx_io.load(tiny_lm)
    sites = find_sites(model, min_elements=0, exclude=[])
    energy = np.random.default_rng(6).uniform(0.01, 100, HIDDEN)
    for site in sites:
        for reader in site.readers:
            reader.energy = energy if reader.axis == site.layout.in_axis else None
    before = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    assert scale_norm_inputs(model, sites, 0.5) == 1  # the Mul(x, gamma) feeding w1
    after = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}
    assert not np.allclose(after["w1"], before["w1"]) and not np.allclose(after["gamma"], before["gamma"])
    assert np.array_equal(after["w2"], before["w2"]) and np.array_equal(after["embed"], before["embed"])
    out = onnx_io.save(model, tmp_path / "model.onnx")
    np.testing.assert_allclose(_run(out, LM_FEEDS), _run(tiny_lm, LM_FEEDS), rtol=1e-4, atol=1e-6)


def test_calibration_reads_the_users_text(minilm_onnx, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("Rain flooded the valley overnight.\nThe council approved the new budget.\n", encoding="utf-8")
    _, stats = _apply(minilm_onnx, tmp_path, {"format": "int8", "act_scale": 0.5, "calibration_text": str(text)})
    assert stats["calibration_samples"] == 2
    assert stats["calibration_text_sha256"] == hashlib.sha256(text.read_bytes().rstrip(b"\n")).hexdigest()
    # Options under which the text would be read but change nothing are refused.
    for ignored in ({"format": "int8"}, {"format": "int8", "sensitivity": "calibration"}):
        with pytest.raises(EdgefoldError, match="calibration_text is read only with act_scale"):
            create_pass("quantize", {**ignored, "calibration_text": str(text)})


def test_calibration_needs_a_known_task(tiny_lm, tmp_path):
    with pytest.raises(EdgefoldError, match="calibration needs a model with a known task"):
        _apply(tiny_lm, tmp_path, {"format": "int4", "act_scale": 0.5})


def test_gptq_lowers_minilm_output_error_on_its_calibration_text(minilm_onnx, tmp_path):
    """method=gptq on a real model: every MatMul weight gets a measured Hessian, the file is the same
    size as round-to-nearest's (same scales, only codes move), and the model's output on the
    calibration documents is closer to fp32 than round-to-nearest's."""
    from edgefold.passes.common.calibration import calibration_feeds

    text = tmp_path / "calibration.txt"
    text.write_text("\n".join([
        "Rain flooded the valley overnight and the river broke its banks.",
        "The council approved the new budget after a long debate on Tuesday.",
        "Scientists measured the temperature of the ocean at several depths.",
        "The team won the final match with a goal in the last minute.",
        "Farmers in the region reported a poor harvest because of the drought.",
        "The museum opened a new exhibition of paintings from the last century."]) + "\n", encoding="utf-8")
    options = {"format": "int4-g32-asym", "min_elements": 1024}
    rtn, rtn_stats = _apply(minilm_onnx, tmp_path / "rtn", {**options})
    gptq, stats = _apply(minilm_onnx, tmp_path / "gptq", {**options, "method": "gptq", "calibration_text": str(text)})
    assert stats["gptq_weights"] >= 36 and stats["calibration_samples"] == 6  # 6 linears x 6 layers
    assert [row[3] for row in stats["layers"]] == [row[3] for row in rtn_stats["layers"]]
    feeds = calibration_feeds(minilm_onnx, 6, "test", "", text)
    reference, rtn_session, gptq_session = (onnx_io.session(p) for p in (minilm_onnx, rtn, gptq))
    names = [i.name for i in reference.get_inputs()]
    error = {"rtn": 0.0, "gptq": 0.0}
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in names}
        want = reference.run(None, feed)[0]
        for key, session in (("rtn", rtn_session), ("gptq", gptq_session)):
            error[key] += float(np.square(session.run(None, feed)[0] - want).sum())
    assert error["gptq"] < 0.8 * error["rtn"], error
    with pytest.raises(EdgefoldError, match="does not go with act_scale"):
        create_pass("quantize", {"format": "int8", "method": "gptq", "act_scale": 0.5})


def test_gptq_with_no_integer_weight_reads_no_data(tiny_lm, tmp_path):
    """Nothing to round against data: no calibration run (this model has no task to calibrate on)."""
    _, stats = _apply(tiny_lm, tmp_path, {"format": "fp16", "method": "gptq"})
    assert stats["gptq_weights"] == 0 and "calibration_samples" not in stats
    with pytest.raises(EdgefoldError, match="use method=rtn"):
        _apply(tiny_lm, tmp_path, {"format": "int8", "method": "gptq"})
