"""Tiny ONNX models with every low-bit weight format the quantize pass writes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _pack(values: np.ndarray) -> bytes:
    flat = (values.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _int4_tensor(name, values, signed):
    tensor = helper.make_tensor(name, TensorProto.INT4 if signed else TensorProto.UINT4, values.shape,
                                _pack(values), raw=True)
    return tensor


def weight_formats_model(path, *, k=64, n=48, vocab=40, seed=0, formats=None):
    """x[1,4,k] -> six matmuls with different weight formats, summed; plus a gathered int4 table.

    Formats: int4 block 32 sym (fp16 scales behind a Cast), uint4 block 16 with zero point,
    int8 per-channel, fp8 e4m3 per-channel, fp16, uint4 `min` scheme, and an embedding
    table (int4, block along hidden) read by Gather and by a transposed MatMul (tied head).
    """
    rng = np.random.default_rng(seed)
    inits, nodes, terms = [], [], []

    def add(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))

    # int4 sym, block 32 along K (axis 0), fp16 scales behind a Cast
    q = rng.integers(-8, 8, size=(k, n))
    inits.append(_int4_tensor("w_int4", q, True))
    add("w_int4_scale16", (rng.random((k // 32, n)) * 0.1 + 0.01).astype(np.float16))
    nodes.append(helper.make_node("Cast", ["w_int4_scale16"], ["w_int4_scale"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("DequantizeLinear", ["w_int4", "w_int4_scale"], ["w_int4_dq"], axis=0, block_size=32))
    # uint4 asym, block 16, zero point
    q = rng.integers(0, 16, size=(k, n))
    inits.append(_int4_tensor("w_uint4", q, False))
    add("w_uint4_scale", (rng.random((k // 16, n)) * 0.1 + 0.01).astype(np.float32))
    inits.append(_int4_tensor("w_uint4_zero", rng.integers(0, 16, size=(k // 16, n)), False))
    nodes.append(helper.make_node("DequantizeLinear", ["w_uint4", "w_uint4_scale", "w_uint4_zero"], ["w_uint4_dq"],
                                  axis=0, block_size=16))
    # int8 per output channel (axis 1)
    add("w_int8", rng.integers(-127, 128, size=(k, n)).astype(np.int8))
    add("w_int8_scale", (rng.random(n) * 0.01 + 0.001).astype(np.float32))
    nodes.append(helper.make_node("DequantizeLinear", ["w_int8", "w_int8_scale"], ["w_int8_dq"], axis=1))
    # fp8 e4m3fn per output channel, every bit pattern that is not NaN
    codes = rng.integers(0, 256, size=(k, n)).astype(np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x3C
    codes[0, :16] = np.arange(16)  # subnormals and zero
    inits.append(helper.make_tensor("w_fp8", TensorProto.FLOAT8E4M3FN, (k, n), codes.tobytes(), raw=True))
    add("w_fp8_scale", (rng.random(n) * 0.01 + 0.001).astype(np.float32))
    nodes.append(helper.make_node("DequantizeLinear", ["w_fp8", "w_fp8_scale"], ["w_fp8_dq"], axis=1))
    # fp16 weight behind a Cast
    add("w_fp16", (rng.standard_normal((k, n)) * 0.1).astype(np.float16))
    nodes.append(helper.make_node("Cast", ["w_fp16"], ["w_fp16_dq"], to=TensorProto.FLOAT))
    # uint4 `min` scheme: DequantizeLinear -> Reshape(split) -> Add(min) -> Reshape
    q = rng.integers(0, 16, size=(k, n))
    inits.append(_int4_tensor("w_min", q, False))
    add("w_min_scale", (rng.random((k // 32, n)) * 0.1 + 0.01).astype(np.float32))
    add("w_min_min", (rng.standard_normal((k // 32, 1, n)) * 0.1).astype(np.float32))
    add("w_min_split", np.array([k // 32, 32, n], np.int64))
    add("w_min_shape", np.array([k, n], np.int64))
    nodes.append(helper.make_node("DequantizeLinear", ["w_min", "w_min_scale"], ["w_min_scaled"], axis=0, block_size=32))
    nodes.append(helper.make_node("Reshape", ["w_min_scaled", "w_min_split"], ["w_min_blocks"]))
    nodes.append(helper.make_node("Add", ["w_min_blocks", "w_min_min"], ["w_min_added"]))
    nodes.append(helper.make_node("Reshape", ["w_min_added", "w_min_shape"], ["w_min_dq"]))
    for name in formats or ("w_int4", "w_uint4", "w_int8", "w_fp8", "w_fp16", "w_min"):
        nodes.append(helper.make_node("MatMul", ["x", f"{name}_dq"], [f"{name}_y"]))
        terms.append(f"{name}_y")
    # tied int4 table [vocab, n] blocked along n (axis 1): Gather rows + Transpose -> MatMul head
    q = rng.integers(-8, 8, size=(vocab, n))
    inits.append(_int4_tensor("table", q, True))
    add("table_scale", (rng.random((vocab, n // 16)) * 0.1 + 0.01).astype(np.float32))
    nodes.append(helper.make_node("DequantizeLinear", ["table", "table_scale"], ["table_dq"], axis=1, block_size=16))
    nodes.append(helper.make_node("Gather", ["table_dq", "ids"], ["embedded"], axis=0))
    nodes.append(helper.make_node("Transpose", ["table_dq"], ["table_t"], perm=[1, 0]))
    total = terms[0]
    for index, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"sum{index}"]))
        total = f"sum{index}"
    nodes.append(helper.make_node("Add", [total, "embedded"], ["hidden"]))
    nodes.append(helper.make_node("MatMul", ["hidden", "table_t"], ["logits"]))
    graph = helper.make_graph(
        nodes, "weight_formats",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, k]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, vocab])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes

    tidy = ir.from_proto(model)  # drop what the chosen formats leave unused
    common_passes.RemoveUnusedNodesPass()(tidy)
    used = {v.name for node in tidy.graph for v in node.inputs if v is not None}
    for name in [n for n in tidy.graph.initializers if n not in used]:
        tidy.graph.initializers.pop(name)
    model = ir.to_proto(tidy)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def matmul_nbits_model(path, *, k=64, n=40, block=32, seed=0, with_zero=True):
    """x[1,3,k] -> com.microsoft MatMulNBits (4-bit, block `block`) + bias, the onnxruntime-only format."""
    rng = np.random.default_rng(seed)
    blocks = k // block
    codes = rng.integers(0, 16, size=(n, blocks, block))
    packed = np.frombuffer(_pack(codes), np.uint8).reshape(n, blocks, block // 2)
    inits = [numpy_helper.from_array(packed, "B"),
             numpy_helper.from_array((rng.random(n * blocks) * 0.1 + 0.01).astype(np.float32), "scales"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias")]
    inputs = ["x", "B", "scales"]
    if with_zero:
        zero = rng.integers(0, 16, size=(n, blocks))
        rows = np.stack([np.frombuffer(_pack(row), np.uint8) for row in zero])  # each row padded to bytes
        inits.append(numpy_helper.from_array(rows.reshape(-1), "zero_points"))
        inputs.append("zero_points")
    else:
        inputs.append("")
    inputs += ["", "bias"]
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph(
        [node], "matmul_nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=10)
    onnx.save(model, str(path))
    return path
