"""report.json's per-layer sizes: each weight once (a tied embedding/lm_head too), with the bytes
the final model really stores for it, whatever form quantize left it in."""

from __future__ import annotations

import pytest

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.report.assemble import layer_sizes
from edgefold.passes.base import PassContext
from edgefold.passes.registry import create_pass

MIX = ["int8", "int4-g32-min-s8t", "int4-g64-asym", "int4-g128-asym-s8t"]


def _quantized(source, folder, options):
    outcome = create_pass("quantize", options).run(onnx_io.load(source), PassContext(model_path=source))
    path = onnx_io.save(outcome.model, folder / "model.onnx")
    return path, outcome.stats


@pytest.mark.parametrize("options", [
    {"avg_bits": 4.5, "formats": MIX},  # DequantizeLinear chains: codes, 8-bit scales, zero points, minimums
    {"avg_bits": 4.5},  # the default candidates: the tied table int4, the small projections fp16/fp32
    {"format": "int4-g32-asym", "emit": "onnxruntime"},  # MatMulNBits holds its own codes, scales, zeros
], ids=["int4-int8-mix", "default-mix", "matmul-nbits"])
def test_each_weight_once_with_the_bits_quantize_stored(tied_llama, tmp_path, options):
    path, stats = _quantized(tied_llama, tmp_path, options)
    before, after = analyse(onnx_io.load(tied_llama)), analyse(onnx_io.load(path))
    rows = layer_sizes(before, after)

    # the tied table is one weight read by the embedding Gather and by the lm_head MatMul
    (table,) = [w for w in after.weights if w.name == "model.lm_head.weight"]
    assert table.kind == "embedding+linear" and len(table.readers) == 2
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)) == stats["tensors"] == len(before.weights)
    assert [r["name"] for r in rows if "embedding" in r["kind"]] == ["model.lm_head.weight"]

    quantized = {row[0]: row for row in stats["layers"]}  # name, format, bytes before, bytes after, error
    assert set(names) == set(quantized)
    for row in rows:
        name, fmt, bytes_before, bytes_after, _ = quantized[row["name"]]
        assert (row["bytes_before"], row["bytes_after"]) == (bytes_before, bytes_after), name
        assert row["params_before"] == row["params_after"] == bytes_before // 4
        assert row["bits_after"] == pytest.approx(8 * bytes_after / (bytes_before // 4), abs=1e-4), (name, fmt)
        if fmt in MIX or fmt.startswith("int4"):
            assert 4 <= row["bits_after"] <= 8.5, (name, fmt, row["bits_after"])
        else:  # fp16 and fp32 stay what they are
            assert row["bits_after"] == {"fp16": 16, "fp32": 32}[fmt], (name, fmt)
    assert sum(r["bytes_after"] for r in rows) == stats["bytes_after"]
    assert 8 * stats["bytes_after"] / sum(r["params_after"] for r in rows) == pytest.approx(stats["avg_bits"], abs=1e-3)


def test_sliced_then_quantized_weights_match_by_name(tied_llama, tmp_path):
    """slice shrinks the FFN weights in place and quantize then stores them as codes: each row
    follows its weight through both (fewer params after, their real bytes), nothing is dropped."""
    model = onnx_io.load(tied_llama)
    model = create_pass("slice", {"ratio": 0.25, "method": "magnitude", "allocation": "uniform"}).run(
        model, PassContext(model_path=tied_llama)).model
    outcome = create_pass("quantize", {"format": "int8"}).run(model, PassContext(model_path=tied_llama))
    path = onnx_io.save(outcome.model, tmp_path / "model.onnx")
    rows = {r["name"]: r for r in layer_sizes(analyse(onnx_io.load(tied_llama)), analyse(onnx_io.load(path)))}
    assert len(rows) == len(outcome.stats["layers"])
    for name, _, _, bytes_after, _ in outcome.stats["layers"]:
        assert rows[name]["bytes_after"] == bytes_after and 8 <= rows[name]["bits_after"] <= 8.6
    ffn = [r for name, r in rows.items() if ".mlp." in name]
    assert ffn and all(r["params_after"] < r["params_before"] for r in ffn)
    assert all(r["params_after"] == r["params_before"] for name, r in rows.items() if ".mlp." not in name)
    assert all(r["bytes_after"] == 0 for r in layer_sizes(analyse(onnx_io.load(tied_llama)), None))
