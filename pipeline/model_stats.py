"""Size figures every stage reports the same way: parameters and bytes on disk."""

from __future__ import annotations

import math
from pathlib import Path

from edgefold import onnx_io


def file_bytes(model_path: Path) -> int:
    """Size on disk of a model: the .onnx file plus its external-data file, in bytes."""
    return sum(p.stat().st_size for p in onnx_io.model_files(Path(model_path)))


def parameter_count(model) -> int:
    """Elements in all initializers (a packed int4 weight counts its logical elements)."""
    total = 0
    for value in model.graph.initializers.values():
        shape = value.shape if value.shape is not None else value.const_value.shape
        total += math.prod(int(d) for d in shape) if shape is not None else 0
    return total
