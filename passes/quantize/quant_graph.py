"""Writing quantized weights into the graph: standard ONNX, or onnxruntime's MatMulNBits.

`emit_dequantize` replaces a weight initializer by the nodes that rebuild it from its
stored codes (DequantizeLinear, plus Cast for fp16 side tensors, plus Reshape/Add/Reshape
for a block minimum, plus a DequantizeLinear per 8-bit side tensor), and points every
reader at the result, which keeps the initializer's name. `emit_matmul_nbits` instead
replaces a plain MatMul by com.microsoft MatMulNBits (onnxruntime only).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgefold.passes.quantize import quant_formats as qf


_ONNX_CODE_TYPES = {
    ("int8", "sym"): ir.DataType.INT8,
    ("int4", "sym"): ir.DataType.INT4,
    ("int4", "asym"): ir.DataType.UINT4,
    ("int4", "min"): ir.DataType.UINT4,
    ("fp8", "sym"): ir.DataType.FLOAT8E4M3FN,
}


def _initializer(model: ir.Model, name: str, tensor: ir.TensorProtocol) -> ir.Value:
    name = _fresh(model, name)
    tensor.name = name
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    model.graph.register_initializer(value)
    return value


def _fresh(model: ir.Model, base: str) -> str:
    taken = model.graph.initializers
    candidate, index = base, 1
    while candidate in taken:
        index += 1
        candidate = f"{base}.{index}"
    return candidate


def _array_tensor(array: np.ndarray, name: str) -> ir.Tensor:
    return ir.Tensor(np.ascontiguousarray(array), name=name)


def _code_tensor(q: qf.QuantizedWeight, name: str) -> ir.TensorProtocol:
    dtype = _ONNX_CODE_TYPES[(q.format.kind, q.format.scheme)]
    if q.format.kind == "int4":  # signed or unsigned as the codes are (-s8 `min` codes are centred)
        dtype = ir.DataType.INT4 if q.codes.dtype == np.int8 else ir.DataType.UINT4
    if q.format.kind == "int4":
        return ir.PackedTensor(qf.pack_nibbles(q.codes), dtype, shape=ir.Shape(q.shape), name=name)
    if q.format.kind == "fp8":
        return ir.Tensor(q.codes, dtype=dtype, name=name)
    return ir.Tensor(q.codes.astype(np.int8), name=name)


def _node(op: str, inputs, attributes, name: str, out_name: str, dtype=ir.DataType.FLOAT, shape=None,
          domain: str = "") -> ir.Node:
    output = ir.Value(name=out_name, type=ir.TensorType(dtype), shape=ir.Shape(shape) if shape is not None else None)
    return ir.node(op, inputs, attributes, domain=domain, name=name, outputs=[output])


def _as_float(model, value: ir.Value, name: str, nodes: list) -> ir.Value:
    """fp16 side tensors (block scales, minimums) are cast to fp32 so the dequantization is fp32."""
    if value.const_value.dtype == ir.DataType.FLOAT:
        return value
    cast = _node("Cast", [value], {"to": ir.DataType.FLOAT}, f"{name}_cast", f"{value.name}_fp32",
                 shape=list(value.const_value.shape))
    nodes.append(cast)
    return cast.outputs[0]


def _dequantize_side(model, name: str, codes: np.ndarray, step: np.ndarray, zero: np.ndarray | None, axis: int | None,
                     nodes: list) -> ir.Value:
    """uint8 codes with one fp32 step (and zero point) per channel -> fp32 scales or minimums."""
    inputs = [_initializer(model, f"{name}_quantized", _array_tensor(codes.astype(np.uint8), "")),
              _initializer(model, f"{name}_step", _array_tensor(step.astype(np.float32), ""))]
    if zero is not None:
        inputs.append(_initializer(model, f"{name}_zero_point", _array_tensor(zero.astype(np.uint8), "")))
    attributes = {"axis": axis} if axis is not None else {}  # no axis: one step for the whole tensor
    node = _node("DequantizeLinear", inputs, attributes, f"{name}_dequantize", f"{name}_fp32",
                 shape=list(codes.shape))
    nodes.append(node)
    return node.outputs[0]


def emit_dequantize(model: ir.Model, name: str, value: ir.Value, q: qf.QuantizedWeight) -> list[ir.Node]:
    """Replace initializer `name` by standard ONNX that rebuilds it; returns the new nodes (to be
    inserted at the top of the graph: they read initializers only)."""
    shape, nodes = list(q.shape), []
    if q.format.kind == "fp16":
        half = _initializer(model, f"{name}_fp16", _array_tensor(q.codes, ""))
        nodes.append(_node("Cast", [half], {"to": ir.DataType.FLOAT}, f"{name}_cast", f"{name}_dq", shape=shape))
        return _rewire(model, name, value, nodes)
    codes = _initializer(model, f"{name}_quantized", _code_tensor(q, ""))
    if q.scale_codes is not None:  # 8-bit block scales, decoded by their own DequantizeLinear
        scale = _dequantize_side(model, f"{name}_scale", q.scale_codes, q.scale_step, None, q.channel_axis, nodes)
    else:
        scale = _as_float(model, _initializer(model, f"{name}_scale", _array_tensor(q.scale, "")), name, nodes)
    inputs = [codes, scale]
    if q.zero_point is not None:
        zero = ir.PackedTensor(qf.pack_nibbles(q.zero_point), ir.DataType.UINT4, shape=ir.Shape(q.zero_point.shape))
        inputs.append(_initializer(model, f"{name}_zero_point", zero))
    attributes = {"axis": q.axis}
    if q.block:
        attributes["block_size"] = q.block
    dq_out = f"{name}_dq" if q.minimum is None else f"{name}_dq_scaled"
    dequantize = _node("DequantizeLinear", inputs, attributes, f"{name}_dequantize", dq_out, shape=shape)
    nodes.append(dequantize)
    if q.minimum is not None:  # w = q * scale + min: add the per-block minimum over (blocks, block)
        blocks = shape[q.axis] // q.block
        split = shape[: q.axis] + [blocks, q.block] + shape[q.axis + 1:]
        min_shape = shape[: q.axis] + [blocks, 1] + shape[q.axis + 1:]
        if q.min_codes is not None:
            channel = q.channel_axis
            if channel is not None and channel > q.axis:  # the inserted block axis shifts it
                channel += 1
            minimum = _dequantize_side(model, f"{name}_min", q.min_codes.reshape(min_shape), q.min_step, q.min_zero,
                                       channel, nodes)
        else:
            minimum = _as_float(model, _initializer(model, f"{name}_min",
                                                    _array_tensor(q.minimum.reshape(min_shape), "")), f"{name}_min", nodes)
        split_shape = _initializer(model, f"{name}_block_shape", _array_tensor(np.array(split, np.int64), ""))
        whole_shape = _initializer(model, f"{name}_shape", _array_tensor(np.array(shape, np.int64), ""))
        nodes.append(_node("Reshape", [dequantize.outputs[0], split_shape], {}, f"{name}_split", f"{name}_blocks",
                           shape=split))
        nodes.append(_node("Add", [nodes[-1].outputs[0], minimum], {}, f"{name}_add_min", f"{name}_blocks_min",
                           shape=split))
        nodes.append(_node("Reshape", [nodes[-1].outputs[0], whole_shape], {}, f"{name}_merge", f"{name}_dq",
                           shape=shape))
    return _rewire(model, name, value, nodes)


def _rewire(model: ir.Model, name: str, old: ir.Value, nodes: list[ir.Node]) -> list[ir.Node]:
    """Point every reader at the rebuilt weight, drop the fp32 initializer, keep its name."""
    new = nodes[-1].outputs[0]
    for use in list(old.uses()):
        use.node.replace_input_with(use.idx, new)
    model.graph.initializers.pop(name)
    old.name = f"{name}_fp32"
    new.name = name  # readers keep reading a value of the same name
    return nodes


# ---------------------------------------------------------------- onnxruntime MatMulNBits


def nbits_ready(q: qf.QuantizedWeight) -> bool:
    """MatMulNBits takes int4 blocks along K (a power of two >= 16) and an integer zero point."""
    b = q.block
    return (q.format.kind == "int4" and q.format.scheme in ("sym", "asym") and q.axis == 0 and b >= 16
            and b & (b - 1) == 0)


def nbits_storage(shape, fmt: qf.Format, layout: qf.Layout) -> int | None:
    """Bytes MatMulNBits needs for this weight in this format, or None if it cannot take it."""
    axis, block = qf.grouping(tuple(shape), fmt, layout)
    if fmt.kind != "int4" or fmt.scheme == "min" or axis != 0 or block < 16 or block & (block - 1):
        return None
    k, n = shape
    blocks = math.ceil(k / block)
    zero = n * ((blocks + 1) // 2) if fmt.scheme == "asym" else 0
    return n * blocks * block // 2 + 4 * n * blocks + zero  # codes, fp32 scales, zero-point rows


def nbits_bytes(q: qf.QuantizedWeight) -> int:
    """Bytes this weight takes as onnxruntime's MatMulNBits (a MatMul weight W[K, N])."""
    return nbits_storage(q.shape, q.format, qf.Layout(1, 0))


def emit_matmul_nbits(model: ir.Model, name: str, value: ir.Value, q: qf.QuantizedWeight) -> list[ir.Node]:
    """MatMul(A, W[K, N]) -> com.microsoft MatMulNBits(A, B[N, blocks, block/2], scales, zero points).

    The node goes in place of the MatMul, so nothing is returned for the top of the graph."""
    (use,) = list(value.uses())
    matmul = use.node
    k, n = q.shape
    blocks = math.ceil(k / q.block)
    codes = q.codes.astype(np.int16) + (8 if q.format.scheme == "sym" else 0)  # MatMulNBits codes are 0..15
    padded = np.full((blocks * q.block, n), 8 if q.format.scheme == "sym" else 0, np.int16)
    padded[:k] = codes
    per_column = padded.T.reshape(n, blocks, q.block)  # [N, blocks, block], K runs inside a block
    packed = qf.pack_nibbles(per_column).reshape(n, blocks, q.block // 2)
    inputs = [matmul.inputs[0],
              _initializer(model, f"{name}_nbits", _array_tensor(packed, "")),
              _initializer(model, f"{name}_nbits_scale", _array_tensor(q.scale.astype(np.float32).T.reshape(-1), ""))]
    if q.zero_point is not None:
        zero_rows = np.stack([qf.pack_nibbles(row) for row in q.zero_point.T])  # [N, ceil(blocks / 2)]
        inputs.append(_initializer(model, f"{name}_nbits_zero_point", _array_tensor(zero_rows.reshape(-1), "")))
    out = matmul.outputs[0]
    result = ir.Value(name=f"{out.name}_nbits", type=out.type, shape=out.shape)
    node = ir.node("MatMulNBits", inputs, {"K": k, "N": n, "bits": 4, "block_size": q.block},
                   domain="com.microsoft", name=f"{matmul.name}_nbits", outputs=[result])
    model.graph.insert_before(matmul, node)
    out.replace_all_uses_with(result, replace_graph_outputs=True)
    model.graph.remove(matmul, safe=True)
    model.graph.initializers.pop(name)
    out_name = out.name
    out.name = f"{out_name}_removed"
    result.name = out_name
    return []
