"""`ModelHandle`: the one object that carries a model between stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefold.models.metadata import Task


@dataclass
class ModelHandle:
    """An exported ONNX model and what later stages need about it (task, tokenizer, source hash, reference I/O)."""

    path: Path  # model.onnx (external data beside it)
    name: str  # short name used for output folders
    task: Task
    tokenizer: str | None  # built-in name or folder, for text models
    source_sha256: str  # content hash of what the model came from
    reference: Path | None = None  # .npz with real inputs ("in.NAME") and outputs ("out.NAME")
    info: dict[str, Any] = field(default_factory=dict)  # export facts: error, seconds, versions

    def reference_io(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Recorded reference inputs and outputs, by tensor name; two empty dicts when there is no reference file."""
        if self.reference is None:
            return {}, {}
        with np.load(self.reference) as data:
            inputs = {k[3:]: data[k] for k in data.files if k.startswith("in.")}
            outputs = {k[4:]: data[k] for k in data.files if k.startswith("out.")}
        return inputs, outputs
