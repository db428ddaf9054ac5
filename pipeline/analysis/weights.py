"""Each weight tensor once, with the bytes the model really stores for it.

A layer reads its weight through whatever compression left in front of it: the fp32
initializer, a Transpose of it (a tied lm_head), a DequantizeLinear chain (codes, scales,
zero points, minimums, 8-bit scales with their own steps), a Cast from fp16, or
MatMulNBits' own inputs. Everything a weight input is computed from without touching an
activation is that weight's storage, so its bytes are the model's real bytes whatever
the format. Readers whose largest stored tensor is the same share one weight: an embedding
tied to the lm_head is one weight read twice, and is counted once.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from edgefold.analysis.groups import WeightStorage

# (domain, op) -> inputs that hold the weight a layer multiplies by
WEIGHT_INPUTS = {
    ("", "MatMul"): (0, 1), ("", "Gemm"): (1,), ("", "Conv"): (1,), ("", "ConvTranspose"): (1,),
    ("", "Gather"): (0,), ("com.microsoft", "MatMulNBits"): (1, 2, 3),
}
KINDS = {"MatMul": "linear", "Gemm": "linear", "MatMulNBits": "linear", "Conv": "conv", "ConvTranspose": "conv",
         "Gather": "embedding"}
MIN_ELEMENTS = 256  # smaller constants (rotary frequencies, scalars) are not layer weights
# shape operands of the Reshapes around a block minimum: graph plumbing, not weight storage
_NOT_STORAGE = {ir.DataType.INT64}
_DTYPES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i4": "int4", "u4": "uint4", "i8": "int8", "u8": "uint8",
           "f8e4m3fn": "fp8"}  # the names quantize's formats use


def stored_weights(model: ir.Model) -> list[WeightStorage]:
    """Every layer weight of `model` once, in graph order of its first reader."""
    constant = _constant_values(model)
    groups: dict[str, dict] = {}  # by the weight's largest stored tensor (a tied table's readers share it)
    for node in model.graph:
        positions = WEIGHT_INPUTS.get((_domain(node), node.op_type))
        if positions is None or all(id(v) in constant for v in node.inputs if v is not None):
            continue  # not a layer, or one of constants only
        read = [node.inputs[i] for i in positions if i < len(node.inputs) and node.inputs[i] is not None
                and id(node.inputs[i]) in constant]
        tensors: dict[str, ir.Value] = {}
        for value in read:
            tensors.update(_storage(value))
        if not tensors:
            continue
        main = max(tensors, key=lambda name: _numel(tensors[name].const_value))
        group = groups.setdefault(main, {"readers": [], "read": [], "tensors": {}})
        group["readers"].append(node)
        group["read"].append(read[0])
        group["tensors"].update(tensors)
    return [w for w in map(_weight, groups.values()) if w.elements >= MIN_ELEMENTS]


def _weight(group: dict) -> WeightStorage:
    readers, tensors = group["readers"], group["tensors"]
    stored = {name: (_numel(v.const_value), v.const_value.dtype) for name, v in tensors.items()}
    nbits = [n for n in readers if n.op_type == "MatMulNBits"]
    if nbits:  # codes packed [N, blocks, block/2]: the weight's size is in the attributes
        elements = nbits[0].attributes.get_int("K", 0) * nbits[0].attributes.get_int("N", 0)
    else:  # the full-size codes (or the fp32/fp16 weight itself), or a value's static shape
        elements = max([n for n in map(_static_numel, group["read"]) if n] + [n for n, _ in stored.values()])
    largest = max(stored, key=lambda name: stored[name][0])
    return WeightStorage(
        name=_name(group), kind="+".join(sorted({KINDS[n.op_type] for n in readers})),
        readers=tuple(n.name for n in readers), elements=int(elements),
        bytes=sum(_bytes(n, dtype) for n, dtype in stored.values()), dtype=_dtype(stored[largest][1]),
        tensors=tuple(sorted(tensors)))


def _dtype(dtype: ir.DataType) -> str:
    return _DTYPES.get(dtype.short_name(), dtype.short_name())


def _name(group: dict) -> str:
    """The weight's name as its readers see it: quantize keeps the initializer's name on the
    rebuilt value; a tied head reads a Transpose of it; MatMulNBits reads `<name>_nbits`."""
    for node, value in zip(group["readers"], group["read"]):
        if node.op_type == "MatMulNBits":
            return value.name.removesuffix("_nbits")
        producer = value.producer()
        if value.name and (producer is None or producer.op_type != "Transpose"):
            return value.name
    return group["read"][0].name or group["readers"][0].name


def _storage(value: ir.Value) -> dict[str, ir.Value]:
    """The initializers a constant `value` is computed from."""
    found: dict[str, ir.Value] = {}
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        producer = current.producer()
        if producer is None:
            if current.const_value is not None and current.const_value.dtype not in _NOT_STORAGE:
                found[current.name] = current
            continue
        stack.extend(v for v in producer.inputs if v is not None)
    return found


def _constant_values(model: ir.Model) -> set[int]:
    """ids of the values computed from initializers alone (no graph input, no activation on the
    way), in one pass over the graph in its topological order."""
    constant = {id(v) for v in model.graph.initializers.values() if not v.is_graph_input()}
    for node in model.graph:
        if node.op_type not in ("If", "Loop", "Scan") and all(id(v) in constant for v in node.inputs if v is not None):
            constant.update(id(v) for v in node.outputs)
    return constant


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _numel(tensor) -> int:
    return int(math.prod(int(d) for d in tensor.shape))


def _static_numel(value: ir.Value) -> int | None:
    shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(math.prod(shape))


def _bytes(numel: int, dtype: ir.DataType) -> int:
    """Stored bytes: 4-bit types are packed two a byte, as ONNX stores them."""
    return int(math.ceil(numel * dtype.bitwidth / 8))
