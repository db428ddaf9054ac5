"""Fix a bucket's input shapes in the ONNX graph and fold the shape arithmetic away.

With the inputs static, every Shape/Gather/Concat chain that computes reshape targets
and the causal mask becomes a constant, which is what TVM's importer can take. Only
small tensors are folded: weights, and anything computed from them, stay as they are
(dequantization in particular is kept, so low-bit weights stay low-bit).
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from edgefold import onnx_io
from edgefold.onnxscript_private import fold_constants_pass

# Elements: shape vectors and masks are tiny; weights are far larger than this.
_FOLD_INPUT_LIMIT = 8192
_FOLD_OUTPUT_LIMIT = 1 << 20
_WEIGHT_ELEMENTS = 1024  # initializers this big are weights, never folded into new tensors


def _only_small_inputs(node: ir.Node) -> bool | None:
    for value in node.inputs:
        tensor = value.const_value if value is not None else None
        if tensor is None:
            continue
        if tensor.size > _FOLD_INPUT_LIMIT or (value.is_initializer() and tensor.size >= _WEIGHT_ELEMENTS):
            return False  # a weight (or something as big): keep it, and its format, as it is
    return None  # default rules for the rest


def make_static(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> ir.Model:
    """Set input shapes and fold what became constant; edits `model` in place."""
    for value in model.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape(list(shapes[value.name]))
    for value in model.graph.outputs:  # stale symbolic output shapes would be checked against
        value.shape = None
    folding = fold_constants_pass(input_size_limit=_FOLD_INPUT_LIMIT, output_size_limit=_FOLD_OUTPUT_LIMIT,
                                  should_fold=_only_small_inputs)
    ir.passes.Sequential(
        ir.passes.PassManager([folding, common_passes.RemoveUnusedNodesPass()], steps=4, early_stop=True),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.RemoveUnusedNodesPass(),
    )(model)
    return model


def static_copy(source: Path, destination: Path, shapes: dict[str, tuple[int, ...]], rewrite=None) -> Path:
    """Load `source`, fix shapes (and apply `rewrite(model)`), save to `destination`."""
    model = onnx_io.load(source)
    make_static(model, shapes)
    if rewrite is not None:
        rewrite(model)
    destination.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, destination, external_data=destination.name + ".data", size_threshold_bytes=1024)
    return destination


def inline_small_initializers(model: ir.Model, limit: int = 1024) -> int:
    """Small initializers (shape vectors, norm scales) become Constant nodes.

    The importer turns initializers into function parameters (the weight file) and
    Constant nodes into constants compiled into the library. Shape vectors must be
    constants (a parameter shape would make Reshape dynamic); tiny tensors are not
    worth a slot in the weight file.
    """
    moved = 0
    first = next(iter(model.graph), None)
    for name, value in list(model.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.size >= limit or value.is_graph_input():
            continue
        output = ir.Value(name=f"{name}.const", shape=value.shape, type=value.type)
        # In memory: an external tensor would keep the source file's offsets in the new file.
        inline = ir.Tensor(tensor.numpy(), name=name)
        node = ir.node("Constant", [], {"value": inline}, name=f"{name}.constant", outputs=[output])
        if first is None:
            model.graph.append(node)
        else:
            model.graph.insert_before(first, node)
        value.replace_all_uses_with(output)
        if value.is_graph_output():
            outputs = model.graph.outputs
            outputs[list(outputs).index(value)] = output
        model.graph.initializers.pop(name)
        moved += 1
    return moved
