"""Make an exported graph reproducible and readable.

torch's exporter stamps every node with stack traces (absolute file paths: different
bytes on every machine) and names most weights `val_123`. We drop the volatile
metadata, keep the module path (`pkg.torch.onnx.name_scopes`) for labels, and give
weights of MatMul/Gemm/Conv the torch parameter name they came from.
"""

from __future__ import annotations

import ast
import re

import onnx_ir as ir

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_VOLATILE_KEYS = (
    "pkg.torch.onnx.stack_trace",
    "pkg.torch.onnx.fx_node",
    "pkg.torch.onnx.class_hierarchy",
    "namespace",
)
_GENERATED_NAME = re.compile(r"^(val_|_val_)\d+$")
_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1}


def module_path(node: ir.Node) -> str | None:
    """The torch module a node came from, e.g. 'model.layers.0.mlp.up_proj'."""
    raw = node.metadata_props.get(NAME_SCOPES_KEY)
    if not raw:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    # The last entry is the op's own name (linear_4); the one before is its module.
    modules = [s for s in scopes[:-1] if s]
    return modules[-1] if modules else None


def strip_volatile_metadata(model: ir.Model) -> None:
    """Remove machine-specific exporter metadata (stack traces, fx nodes) in place; module paths stay."""
    for node in model.graph.all_nodes():
        for key in _VOLATILE_KEYS:
            node.metadata_props.pop(key, None)
    for value in list(model.graph.inputs) + list(model.graph.outputs):
        value.metadata_props.clear()
    for value in model.graph.initializers.values():
        value.metadata_props.clear()


def name_weights_after_modules(model: ir.Model) -> int:
    """Rename generated weight names to '<module>.weight'; returns how many changed."""
    taken = set(model.graph.initializers)
    renamed = 0
    for node in model.graph.all_nodes():
        index = _WEIGHT_OPS.get(node.op_type)
        if index is None or len(node.inputs) <= index:
            continue
        weight = node.inputs[index]
        if weight is None or weight.name is None or not weight.is_initializer():
            continue
        if not _GENERATED_NAME.match(weight.name):
            continue
        scope = module_path(node)
        if not scope:
            continue
        base = f"{scope}.weight"
        candidate, suffix = base, 1
        while candidate in taken:
            suffix += 1
            candidate = f"{base}.{suffix}"
        taken.discard(weight.name)
        weight.name = candidate  # onnx_ir keeps the initializer map in sync
        taken.add(candidate)
        renamed += 1
    return renamed
