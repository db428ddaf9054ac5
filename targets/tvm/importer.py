"""ONNX -> Relax for one bucket, with the weights kept as function parameters.

Weights become parameters (not constants) so the library holds code only: they go to
the artifact's packed weight file, and a low-bit weight stays as its packed bytes all
the way to the kernel that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefold.errors import EdgefoldError
from edgefold.targets.tvm.buckets import Bucket


@dataclass
class ImportedModel:
    """A bucket's model in Relax: the IRModule, its input and weight names, and the weight arrays."""

    mod: object  # tvm.IRModule; `main(inputs..., weights...)`
    input_names: list[str]
    weight_names: list[str]
    weights: list[np.ndarray]
    collapsed: dict[str, int] = field(default_factory=dict)  # low-bit chains turned into Decode nodes


def import_bucket(model_path: Path, bucket: Bucket, workdir: Path) -> ImportedModel:
    """Static-shape copy of the model (low-bit chains collapsed), imported into Relax."""
    import onnx

    from edgefold.targets.tvm.converters import edgefold_converters
    from edgefold.targets.tvm.environment import load_tvm
    from edgefold.targets.tvm.lowbit import collapse_decoders
    from edgefold.targets.tvm.static_graph import inline_small_initializers, static_copy

    load_tvm()
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    collapsed: dict[str, int] = {}

    def rewrite(model):
        collapsed.update(collapse_decoders(model))
        inline_small_initializers(model)

    static_path = static_copy(Path(model_path), workdir / bucket.label / "model.onnx", bucket.shapes, rewrite)
    proto = onnx.load(str(static_path))
    with edgefold_converters():
        try:
            mod = from_onnx(proto, shape_dict={k: list(v) for k, v in bucket.shapes.items()},
                            dtype_dict=dict(bucket.dtypes), keep_params_in_input=True)
        except Exception as exc:  # the importer raises many types; name the first unsupported thing
            text = str(exc).strip().splitlines()
            raise EdgefoldError(f"TVM cannot import {model_path} at {bucket.describe()}: "
                                f"{type(exc).__name__}: {text[-1] if text else ''}"[:400]) from None
    del proto
    mod, params = relax.frontend.detach_params(mod)
    weights = [p.numpy() for p in params.get("main", [])]
    main = mod["main"]
    num_inputs = int(main.attrs["num_input"])
    names = [p.name for p in main.params]
    return ImportedModel(mod, names[:num_inputs], names[num_inputs:], weights, collapsed)
