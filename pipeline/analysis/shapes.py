"""Fill in value shapes the file does not carry, without loading weights.

The dynamo exporter writes value_info for every value, but graphs from other tools
(or hand-built ones) often do not. Detectors need channel/head sizes, so when any node
output lacks a shape we run ONNX shape inference on a structure-only copy of the model
(external tensors stay references; big in-memory tensors are replaced by empty
external stubs) and return the result as a name -> dims map.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

Dims = tuple[int | None, ...]

# Inline tensors above this size are stubbed out: shape inference only reads small
# constants (Reshape targets, axes), never weights.
_STUB_ABOVE_BYTES = 4096


def infer_missing(model: ir.Model) -> dict[str, Dims]:
    """Shapes inferred by ONNX for node outputs the file leaves unshaped, by value name (None for unknown dims);
    empty if nothing is missing or inference fails."""
    missing = {v.name for node in model.graph for v in node.outputs if v.shape is None and v.name}
    if not missing:
        return {}
    proto = ir.to_proto(model)
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.ByteSize() > _STUB_ABOVE_BYTES:
            _stub(tensor)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort; detectors then fall back to constants
        return {}
    found: dict[str, Dims] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        if info.name not in missing or not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        found[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return found


def _stub(tensor: onnx.TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "__edgefold_structure_only__"
