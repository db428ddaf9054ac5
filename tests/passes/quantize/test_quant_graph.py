"""`quant_graph`: the ONNX that rebuilds a quantized weight (`emit_dequantize`) decodes in
onnxruntime to exactly `QuantizedWeight.dequantize()` for every format and layout; the
onnxruntime-only MatMulNBits (`emit_matmul_nbits`) computes x @ dequantize() and takes the bytes
`nbits_storage` says; `nbits_ready` says which weights it can take."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.passes.quantize import quant_formats as qf
from edgefold.passes.quantize.quant_graph import (emit_dequantize, emit_matmul_nbits, nbits_bytes, nbits_ready,
                                                  nbits_storage)

MATMUL = qf.Layout(1, 0)  # W[in, out]
CONV = qf.Layout(0, 1)  # W[out, in, kh, kw]


def _weight(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape) * rng.uniform(0.02, 0.3, size=shape[-1])
    weight.flat[::37] *= 6  # a few outliers
    return weight.astype(np.float32)


def _model(weight: np.ndarray, *, conv: bool, copy_out: bool = True) -> ir.Model:
    """y = x @ W (or Conv(x, W)), and W itself as a second output (through Identity)."""
    if conv:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[1], 5, 5])
        nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
        y_shape = [2, weight.shape[0], 5, 5]
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, weight.shape[0]])
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")]
        y_shape = [3, weight.shape[1]]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if copy_out:
        nodes.append(helper.make_node("Identity", ["W"], ["w_out"], name="copy"))
        outputs.append(helper.make_tensor_value_info("w_out", TensorProto.FLOAT, list(weight.shape)))
    graph = helper.make_graph(nodes, "g", [x], outputs, [numpy_helper.from_array(weight, "W")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _feeds(weight: np.ndarray, conv: bool) -> dict[str, np.ndarray]:
    shape = (2, weight.shape[1], 5, 5) if conv else (3, weight.shape[0])
    return {"x": np.random.default_rng(9).standard_normal(shape).astype(np.float32)}


def _save(model: ir.Model, tmp_path, tag: str):
    model.opset_imports[""] = 21
    if any(n.domain == "com.microsoft" for n in model.graph):
        model.opset_imports["com.microsoft"] = 1
    path = onnx_io.save(model, tmp_path / tag / "model.onnx")
    if not any(n.domain == "com.microsoft" for n in model.graph):
        onnx_io.check(path)
    return path


def _run(path, feeds, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _dequantized_graph(weight, fmt_name, layout, tmp_path):
    model = _model(weight, conv=layout == CONV)
    q = qf.quantize(weight, qf.parse_format(fmt_name), layout)
    value = model.graph.initializers["W"]
    nodes = emit_dequantize(model, "W", value, q)
    model.graph.insert_before(next(iter(model.graph)), nodes)
    return model, q, nodes


def _code_dtype(fmt: str, q: qf.QuantizedWeight) -> ir.DataType:
    """The ONNX type of the stored codes: 4-bit codes keep their sign (-s8 `min` codes are centred)."""
    if fmt.startswith("int4"):
        return ir.DataType.INT4 if q.codes.dtype == np.int8 else ir.DataType.UINT4
    return {"fp16": ir.DataType.FLOAT16, "fp8": ir.DataType.FLOAT8E4M3FN}.get(fmt, ir.DataType.INT8)


MATMUL_FORMATS = ["fp16", "fp8", "int8", "int8-g32", "int4-g32-sym", "int4-ch-sym", "int4-g32-asym", "int4-ch-asym",
                  "int4-g16-min", "int4-g32-sym-s8", "int4-g32-asym-s8", "int4-g32-min-s8", "int4-g64-min-s8t",
                  "int4-g64-sym-s8t"]


@pytest.mark.parametrize("fmt", MATMUL_FORMATS)
def test_matmul_weight_decodes_bit_for_bit(tmp_path, fmt):
    weight = _weight((128, 24), seed=1)
    model, q, nodes = _dequantized_graph(weight, fmt, MATMUL, tmp_path)
    assert "W" not in model.graph.initializers
    assert nodes[-1].outputs[0].name == "W"  # the readers still read a value named W
    assert {n.op_type for n in model.graph if n.name in ("matmul", "copy")} == {"MatMul", "Identity"}
    assert all(n.inputs[0 if n.name == "copy" else 1] is nodes[-1].outputs[0] for n in model.graph
               if n.name in ("matmul", "copy"))
    path = _save(model, tmp_path, fmt)
    feeds = _feeds(weight, conv=False)
    y, decoded = _run(path, feeds)
    expected = q.dequantize()
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_allclose(y, feeds["x"] @ expected, rtol=1e-5, atol=1e-5)
    stored = {n: v.const_value for n, v in model.graph.initializers.items()}
    codes = stored["W_fp16"] if fmt == "fp16" else stored["W_quantized"]
    assert codes.dtype == _code_dtype(fmt, q)
    if fmt.startswith("int4") and "-sym" in fmt:
        assert codes.dtype == ir.DataType.INT4
    assert tuple(codes.shape) == weight.shape
    if fmt.endswith(("-s8", "-s8t")):
        assert stored["W_scale_quantized"].dtype == ir.DataType.UINT8  # 8-bit block scales are stored as codes


@pytest.mark.parametrize("fmt", ["fp16", "int8", "fp8", "int4-g16-sym", "int4-g16-asym", "int4-g16-min",
                                 "int4-g16-min-s8", "int4-ch-sym"])
def test_conv_weight_decodes_bit_for_bit(tmp_path, fmt):
    weight = _weight((8, 32, 3, 3), seed=2)
    model, q, _ = _dequantized_graph(weight, fmt, CONV, tmp_path)
    path = _save(model, tmp_path, fmt)
    feeds = _feeds(weight, conv=True)
    _, decoded = _run(path, feeds)
    np.testing.assert_array_equal(decoded, q.dequantize())


def test_side_tensor_names_do_not_clash(tmp_path):
    weight = _weight((64, 16), seed=3)
    model = _model(weight, conv=False)
    taken = ir.Value(name="W_quantized", shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.Tensor(np.zeros(1, np.float32), name="W_quantized"))
    model.graph.register_initializer(taken)
    q = qf.quantize(weight, qf.parse_format("int4-g32-asym"), MATMUL)
    model.graph.insert_before(next(iter(model.graph)), emit_dequantize(model, "W", model.graph.initializers["W"], q))
    assert "W_quantized.2" in model.graph.initializers
    np.testing.assert_array_equal(model.graph.initializers["W_quantized"].const_value.numpy(), np.zeros(1))
    _, decoded = _run(_save(model, tmp_path, "clash"), _feeds(weight, conv=False))
    np.testing.assert_array_equal(decoded, q.dequantize())


def test_nbits_ready():
    weight = _weight((128, 16), seed=4)
    for name, layout, ready in [("int4-g32-sym", MATMUL, True), ("int4-g16-asym", MATMUL, True),
                                ("int4-g128-asym", MATMUL, True), ("int4-g32-min", MATMUL, False),
                                ("int4-ch-sym", MATMUL, False), ("int4-g8-sym", MATMUL, False),
                                ("int4-g24-sym", MATMUL, False), ("int8", MATMUL, False), ("fp16", MATMUL, False),
                                ("int4-g32-sym", qf.Layout(0, 1), False)]:
        q = qf.quantize(weight if layout == MATMUL else weight.T.copy(), qf.parse_format(name), layout)
        assert nbits_ready(q) is ready, name
        assert (nbits_storage(q.shape, q.format, layout) is not None) is ready, name


@pytest.mark.parametrize("fmt,k", [("int4-g32-sym", 128), ("int4-g32-asym", 128), ("int4-g16-asym", 80),
                                   ("int4-g64-sym", 96), ("int4-g32-asym", 160)])
def test_matmul_nbits_computes_the_dequantized_product(tmp_path, fmt, k):
    weight = _weight((k, 24), seed=5)
    model = _model(weight, conv=False, copy_out=False)
    q = qf.quantize(weight, qf.parse_format(fmt), MATMUL)
    assert nbits_ready(q)
    assert emit_matmul_nbits(model, "W", model.graph.initializers["W"], q) == []
    ops = [n.op_type for n in model.graph]
    assert ops == ["MatMulNBits"] and "W" not in model.graph.initializers
    assert model.graph.outputs[0].name == "y"
    stored = sum(v.const_value.nbytes for v in model.graph.initializers.values())
    assert stored == nbits_storage(weight.shape, q.format, MATMUL) == nbits_bytes(q)
    path = _save(model, tmp_path, f"{fmt}-{k}")
    feeds = _feeds(weight, conv=False)
    [y] = _run(path, feeds)
    expected = feeds["x"].astype(np.float64) @ q.dequantize().astype(np.float64)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    [y_optimised] = _run(path, feeds, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    np.testing.assert_allclose(y_optimised, expected, rtol=1e-4, atol=1e-4)
