"""Collapse every weight-decoding chain into one `edgefold.Decode` node before import.

The quantize pass writes standard ONNX: `DequantizeLinear` on INT4/UINT4 (block-wise),
INT8 (per channel or block) and FLOAT8E4M3FN codes, fp16 weights behind a `Cast`, the
`min` scheme's Reshape/Add/Reshape, and onnxruntime's `MatMulNBits`. TVM's importer
cannot read 4-bit initializers, block-wise or FP8 dequantization, nor MatMulNBits; and
even where it can, constant folding would expand the weights to fp32. So each chain
becomes one node whose inputs are the *packed* bytes (4-bit codes two a byte, as ONNX
stores them) plus scales, zero points and minimums, and whose output is the fp32 weight
(transposed when a Transpose read it). `converters.py` turns that node into one
decode kernel that `lowering.py` fuses into the matmul or gather that reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgefold.errors import EdgefoldError

DOMAIN = "edgefold"
OP = "Decode"
_CODE_KINDS = {
    ir.DataType.INT4: "int4", ir.DataType.UINT4: "uint4", ir.DataType.INT8: "int8",
    ir.DataType.UINT8: "uint8", ir.DataType.FLOAT8E4M3FN: "fp8e4m3",
}
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclass(frozen=True)
class SideCodes:
    """How a folded 8-bit scale or minimum was stored: value = (codes - zero) * step, with one
    step (and zero) per index of `axis`, or one for the whole tensor when `axis` is None."""

    codes: np.ndarray  # uint8, the shape of the folded tensor
    step: np.ndarray  # float32, [codes.shape[axis]] or [1]
    zero: np.ndarray | None  # uint8 like step, or None (0)
    axis: int | None


def collapse_decoders(model: ir.Model, side_codes: dict[str, SideCodes] | None = None) -> dict[str, int]:
    """Rewrite `model` in place; returns how many weights of each kind were collapsed.

    `side_codes`, if given, receives the 8-bit form of every scale or minimum that was
    folded to float32, by the name of the folded initializer (kernels that keep weights
    packed read those bytes instead of the float32 values)."""
    counts: dict[str, int] = {}
    folded = _fold_quantized_scales(model, side_codes)
    if folded:
        counts["8-bit scales/minimums"] = folded
    # Dequantization first: its fp16 scales sit behind Casts that are not fp16 weights.
    for node in list(model.graph):
        kind = None
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
            kind = _collapse_dequantize(model, node, side_codes)
        elif node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            kind = _collapse_matmul_nbits(model, node)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    _remove_dead(model)
    for node in list(model.graph):
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx") and _collapse_fp16(model, node):
            counts["fp16"] = counts.get("fp16", 0) + 1
    if counts:
        model.opset_imports[DOMAIN] = 1
        _remove_dead(model)
    return counts


def _fold_quantized_scales(model: ir.Model, side_codes: dict[str, SideCodes] | None = None) -> int:
    """Double quantization: a weight's block scales (or the block minimums of the `min`
    scheme) stored as 8-bit codes times a step: `DequantizeLinear(codes, step)` feeding
    the weight's DequantizeLinear scale, or the Add of the min chain. They are small (one
    per block), so they are evaluated here and kept as float32, a form the decode kernel
    reads. Returns how many were folded."""
    from onnx.reference import ReferenceEvaluator

    folded = 0
    for node in list(model.graph):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        if not all(v is None or v.const_value is not None for v in node.inputs):
            continue
        readers = list(node.outputs[0].uses())
        side_tensor = all((u.op_type == "DequantizeLinear" and index == 1) or u.op_type == "Add" for u, index in readers)
        if not readers or not side_tensor:  # a weight itself (read by MatMul/Gather/...) is collapsed below
            continue
        proto = ir.serde.serialize_node(node)
        inputs = {v.name: v.const_value.numpy() for v in node.inputs if v is not None}
        graph_model = onnx.helper.make_model(
            onnx.helper.make_graph([proto], "scale", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                                                      for n in inputs], [onnx.helper.make_tensor_value_info(
                                                          proto.output[0], onnx.TensorProto.UNDEFINED, None)]),
            opset_imports=[onnx.helper.make_opsetid("", 21)])
        (scale,) = ReferenceEvaluator(graph_model).run(None, inputs)
        value = _initializer(model, f"{node.outputs[0].name}.folded", np.asarray(scale, dtype=np.float32))
        if side_codes is not None and node.inputs[0].const_value.dtype == ir.DataType.UINT8:
            zero_input = node.inputs[2] if len(node.inputs) > 2 else None
            axis = node.attributes.get_int("axis", 1) if node.inputs[1].const_value.size > 1 else None
            codes = inputs[node.inputs[0].name]
            if axis is not None and axis < 0:
                axis += codes.ndim
            side_codes[value.name] = SideCodes(
                codes=np.asarray(codes, np.uint8), step=np.asarray(inputs[node.inputs[1].name], np.float32).reshape(-1),
                zero=None if zero_input is None else np.asarray(inputs[zero_input.name], np.uint8).reshape(-1),
                axis=axis)
        node.outputs[0].replace_all_uses_with(value)
        folded += 1
    if folded:
        _remove_dead(model)
    return folded


# ---------------------------------------------------------------- reading constants


def _const(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor behind a value: an initializer, or a Cast-to-float of one."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if (producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None
            and producer.inputs[0].const_value is not None
            and producer.attributes.get_int("to", 0) == ir.DataType.FLOAT):
        return producer.inputs[0].const_value
    return None


def _raw_bytes(tensor: ir.TensorProtocol) -> np.ndarray:
    """Stored bytes (4-bit types packed two a byte, low nibble first)."""
    return np.frombuffer(tensor.tobytes(), dtype=np.uint8).copy()


def _initializer(model: ir.Model, base: str, array: np.ndarray) -> ir.Value:
    name, index = base, 1
    while name in model.graph.initializers:
        index += 1
        name = f"{base}.{index}"
    tensor = ir.Tensor(np.require(array, requirements="C"), name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    model.graph.register_initializer(value)
    return value


# ---------------------------------------------------------------- DequantizeLinear


def _collapse_dequantize(model: ir.Model, node: ir.Node, side_codes: dict[str, SideCodes] | None = None) -> str | None:
    codes = node.inputs[0].const_value if node.inputs[0] is not None else None
    if codes is None or codes.dtype not in _CODE_KINDS:
        return None
    scale = _const(node.inputs[1])
    zero = _const(node.inputs[2]) if len(node.inputs) > 2 else None
    if scale is None or scale.dtype not in _FLOATS or (len(node.inputs) > 2 and node.inputs[2] is not None
                                                        and zero is None):
        return None
    kind = _CODE_KINDS[codes.dtype]
    shape = list(codes.shape)
    axis = node.attributes.get_int("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    block = node.attributes.get_int("block_size", 0)
    per_tensor = block == 0 and scale.size == 1 and bool(shape)
    if per_tensor:  # one scale for everything: spread it over axis 0
        axis = 0
    scale_array = _scale_array(scale.numpy(), shape, axis, block)
    name = node.inputs[0].name
    inputs = [_initializer(model, f"{name}.codes", _codes_array(codes, kind)),
              _initializer(model, f"{name}.scale", scale_array)]
    if side_codes is not None and node.inputs[1].name in side_codes:  # same blocked shape: same axes
        record = side_codes[node.inputs[1].name]
        side_codes[inputs[1].name] = SideCodes(record.codes.reshape(scale_array.shape), record.step, record.zero,
                                               record.axis)
    attributes = {"kind": kind, "shape": shape, "axis": axis, "block": block, "has_zero": 0, "has_min": 0}
    if zero is not None and kind != "fp8e4m3" and zero.numpy().astype(np.int32).any():
        # (an all-zero zero point changes nothing; FP8 zero points are always 0)
        if per_tensor and kind in ("int4", "uint4"):
            raise EdgefoldError(f"{node.name}: a per-tensor 4-bit zero point is not supported")
        inputs.append(_initializer(model, f"{name}.zero", _zero_array(zero, kind, scale_array.shape)))
        attributes["has_zero"] = 1
    output = node.outputs[0]
    minimum, output, min_name = _min_chain(output, shape, axis, block)
    if minimum is not None:
        inputs.append(_initializer(model, f"{name}.min", minimum.reshape(scale_array.shape)))
        if side_codes is not None and min_name in side_codes:
            # The minimum was stored with a size-1 axis after the block axis; the decode drops it.
            record = side_codes[min_name]
            moved = None if record.axis is None else (record.axis - 1 if record.axis > axis + 1 else record.axis)
            side_codes[inputs[-1].name] = SideCodes(record.codes.reshape(scale_array.shape), record.step,
                                                    record.zero, moved)
        attributes["has_min"] = 1
    _replace_readers(model, node, output, inputs, attributes, shape)
    return kind


def _scale_array(scale: np.ndarray, shape: list[int], axis: int, block: int) -> np.ndarray:
    """Scales in the shape the decode kernel indexes: per axis [C], or blocked like the weight."""
    if block == 0:
        return np.broadcast_to(scale.reshape(-1), (shape[axis],)).copy()
    blocked = list(shape)
    blocked[axis] = math.ceil(shape[axis] / block)
    return scale.reshape(blocked)


def _codes_array(codes: ir.TensorProtocol, kind: str) -> np.ndarray:
    raw = _raw_bytes(codes)
    if kind in ("int4", "uint4"):
        return raw  # flat, packed: the kernel unpacks nibble (index % 2) of byte (index // 2)
    if kind == "int8":
        return raw.view(np.int8).reshape(codes.shape)
    return raw.reshape(codes.shape)  # uint8, fp8 bytes


def _zero_array(zero: ir.TensorProtocol, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind in ("int4", "uint4"):
        return _raw_bytes(zero)
    values = zero.numpy().astype(np.int8 if kind == "int8" else np.uint8)
    return np.broadcast_to(values.reshape(-1) if values.size == 1 else values.reshape(shape), shape).copy()


def _min_chain(output: ir.Value, shape: list[int], axis: int, block: int):
    """The `min` scheme: Reshape(split blocks) -> Add(minimum) -> Reshape(back).
    Returns (min, last value, the minimum's initializer name)."""
    uses = list(output.uses())
    if block == 0 or len(uses) != 1 or uses[0].node.op_type != "Reshape" or output.is_graph_output():
        return None, output, None
    split = uses[0].node
    adds = list(split.outputs[0].uses())
    if len(adds) != 1 or adds[0].node.op_type != "Add":
        return None, output, None
    add = adds[0].node
    other = add.inputs[1 - adds[0].idx]
    minimum = _const(other)
    backs = list(add.outputs[0].uses())
    if minimum is None or len(backs) != 1 or backs[0].node.op_type != "Reshape":
        return None, output, None
    back = backs[0].node
    target = _const(back.inputs[1])
    if target is None or list(target.numpy().reshape(-1)) != shape:
        return None, output, None
    return minimum.numpy(), back.outputs[0], other.name


def _replace_readers(model: ir.Model, anchor: ir.Node, value: ir.Value, inputs: list[ir.Value],
                     attributes: dict, shape: list[int]) -> None:
    """One decode node for plain readers, one transposed decode per 2-D Transpose reader."""
    plain = []
    for use in list(value.uses()):
        reader = use.node
        if (reader.op_type == "Transpose" and len(shape) == 2
                and tuple(reader.attributes.get_ints("perm", [1, 0])) == (1, 0)):
            decoded = _decode_node(anchor, inputs, {**attributes, "transpose": 1}, [shape[1], shape[0]],
                                   reader.outputs[0].name)
            model.graph.insert_before(anchor, decoded)
            _take_over(model, reader.outputs[0], decoded.outputs[0])
        else:
            plain.append(use)
    if plain or value.is_graph_output():
        decoded = _decode_node(anchor, inputs, {**attributes, "transpose": 0}, shape, value.name)
        model.graph.insert_before(anchor, decoded)
        _take_over(model, value, decoded.outputs[0])


def _decode_node(anchor: ir.Node, inputs, attributes, out_shape, out_name) -> ir.Node:
    output = ir.Value(name=f"{out_name}.decoded", shape=ir.Shape(out_shape), type=ir.TensorType(ir.DataType.FLOAT))
    return ir.node(OP, inputs, attributes, domain=DOMAIN, name=f"{anchor.name or out_name}.decode", outputs=[output])


def _take_over(model: ir.Model, old: ir.Value, new: ir.Value) -> None:
    """Point every reader (and a graph output) at `new`; a graph output keeps its name."""
    is_output = old.is_graph_output()
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if is_output:
        name = old.name
        old.name = f"{name}.replaced"
        new.name = name


# ---------------------------------------------------------------- fp16 weights


def _collapse_fp16(model: ir.Model, node: ir.Node) -> str | None:
    source = node.inputs[0]
    if (source is None or source.const_value is None or source.const_value.dtype != ir.DataType.FLOAT16
            or node.attributes.get_int("to", 0) != ir.DataType.FLOAT or source.const_value.size < 1024):
        return None
    shape = list(source.const_value.shape)
    attributes = {"kind": "fp16", "shape": shape, "axis": 0, "block": 0, "has_zero": 0, "has_min": 0}
    _replace_readers(model, node, node.outputs[0], [source], attributes, shape)
    return "fp16"


# ---------------------------------------------------------------- MatMulNBits


def _collapse_matmul_nbits(model: ir.Model, node: ir.Node) -> str | None:
    """MatMulNBits(A, B[N, blocks, block/2]) -> MatMul(A, Decode(...) as W[K, N]) (+ bias)."""
    get = node.attributes.get_int
    k, n, bits, block = get("K", 0), get("N", 0), get("bits", 4), get("block_size", 0)
    extra = list(node.inputs[3:]) + [None] * 3
    zero_in, group_index, bias = extra[0], extra[1], extra[2]
    packed, scales = _const(node.inputs[1]), _const(node.inputs[2])
    if bits != 4 or block <= 0 or k % block or packed is None or scales is None or group_index is not None:
        raise EdgefoldError(f"MatMulNBits {node.name!r}: only 4-bit, K a multiple of block_size, no g_idx "
                            f"can be compiled (got bits={bits}, K={k}, block_size={block})")
    blocks = k // block
    name = node.inputs[1].name
    inputs = [_initializer(model, f"{name}.codes", _raw_bytes(packed)),
              _initializer(model, f"{name}.scale", scales.numpy().astype(np.float32).reshape(n, blocks))]
    attributes = {"kind": "uint4", "shape": [n, k], "axis": 1, "block": block, "has_zero": 1, "has_min": 0,
                  "transpose": 1}
    zero = _const(zero_in)
    if zero is None:
        zero_values = np.full((n, blocks), 8, np.uint8)
    elif zero.dtype == ir.DataType.UINT8:  # packed per row, rows padded to whole bytes
        rows = _raw_bytes(zero).reshape(n, -1)
        nibbles = np.stack([rows & 0xF, rows >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        zero_values = nibbles.astype(np.uint8)
    else:
        raise EdgefoldError(f"MatMulNBits {node.name!r}: float zero points are not supported")
    flat = zero_values.reshape(-1)
    flat = np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)])
    inputs.append(_initializer(model, f"{name}.zero", (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)))
    decode = _decode_node(node, inputs, attributes, [k, n], name)
    matmul_out = ir.Value(name=f"{node.outputs[0].name}.matmul", type=node.outputs[0].type)
    matmul = ir.node("MatMul", [node.inputs[0], decode.outputs[0]], {}, name=f"{node.name}.matmul",
                     outputs=[matmul_out])
    new_nodes = [decode, matmul]
    result = matmul_out
    if bias is not None:
        result = ir.Value(name=f"{node.outputs[0].name}.bias", type=node.outputs[0].type)
        new_nodes.append(ir.node("Add", [matmul_out, bias], {}, name=f"{node.name}.bias", outputs=[result]))
    model.graph.insert_before(node, new_nodes)
    _take_over(model, node.outputs[0], result)
    return "matmul_nbits"


def _remove_dead(model: ir.Model) -> None:
    import onnx_ir.passes.common as common_passes

    common_passes.RemoveUnusedNodesPass()(model)
    used = {v.name for n in model.graph for v in n.inputs if v is not None}
    used |= {v.name for v in model.graph.outputs}
    for name in [n for n in model.graph.initializers if n not in used]:
        model.graph.initializers.pop(name)
