"""Bring an existing .onnx file in: check it, upgrade its opset, run it, cache it.

There is no torch model to compare with, so verification is: the checker with full
shape inference passes, onnxruntime runs it on inputs built from its declared input
types, and the outputs are finite. Those outputs become the reference for later passes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import onnx

from edgefold import onnx_io, progress
from edgefold.atomic import cache_directory
from edgefold.errors import EdgefoldError
from edgefold.export.execute import INFO_FILE, MODEL_FILE, REFERENCE_FILE, cache_folder, load_cached
from edgefold.export.sources import OPSET, cache_key
from edgefold.versions import export_versions
from edgefold.handle import ModelHandle
from edgefold.hashing import sha256_files
from edgefold.models.metadata import MODEL_KEY, SOURCE_KEY, TASK_KEY, model_task

# Largest synthetic input (elements): 1 GiB of float32. A declared dim of 1e12 or 2**62 is refused.
MAX_INPUT_ELEMENTS = 1 << 28
_NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8,
}


def synthetic_inputs(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs matching the graph's declared types; symbolic dims become small sizes."""
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = _NUMPY_TYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise EdgefoldError(f"unsupported model: input {value.name!r} has element type {tensor_type.elem_type}")
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if i == 0 else 8)
                 for i, d in enumerate(tensor_type.shape.dim)]
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            axis = max(range(len(shape)), key=shape.__getitem__)
            raise EdgefoldError(f"input {value.name!r} declares dim {axis} = {shape[axis]} (shape {shape}): too large "
                                f"to build a test input ({MAX_INPUT_ELEMENTS} elements at most)")
        if np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[value.name] = np.ones(shape, dtype=bool)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def import_onnx(path: Path, *, force: bool = False) -> ModelHandle:
    """Check, upgrade, run and cache an existing .onnx file and return its handle; reuses the cache unless `force`."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise EdgefoldError(f"{path} is empty (0 bytes), not an ONNX model")
    proto = onnx_io.load_proto(path)  # raises a clear error for missing/corrupt files
    if not proto.graph.node and not proto.graph.output:
        raise EdgefoldError(f"{path} holds no graph (no nodes, no outputs): not an ONNX model")
    onnx_io.load(path)  # also checks that external data is present and whole
    content = sha256_files(onnx_io.model_files(path))
    key = cache_key("onnx", {"content": content})
    # Models edgefold exported keep their name; other files are named after themselves.
    name = onnx_io.metadata(proto).get(MODEL_KEY) or (path.stem if path.stem != "model" else path.resolve().parent.name)
    folder = cache_folder(name, key)
    if not force and (cached := load_cached(folder, key)) is not None:
        progress.info(f"import of {path} reused from cache ({folder})")
        cached.info["cached"] = True
        return cached
    start = time.perf_counter()
    with cache_directory(folder) as staging, progress.step(f"import {path}"), _name_user_path(staging, path):
        model = onnx_io.load(path)
        opset = onnx_io.opset_version(proto)
        if opset < OPSET:
            model = _upgrade_opset(path, opset)
        meta = dict(model.metadata_props)
        model.metadata_props.setdefault(TASK_KEY, model_task(meta).value)
        model.metadata_props.setdefault(MODEL_KEY, name)
        model.metadata_props[SOURCE_KEY] = key
        saved = onnx_io.save(model, staging / MODEL_FILE)
        try:
            onnx_io.check(saved)
            feeds = synthetic_inputs(onnx_io.load_proto(saved))
            outputs = onnx_io.run(onnx_io.session(saved), feeds)
        except EdgefoldError as error:
            if opset < OPSET:  # say that the upgrade broke it, not some later pass
                raise EdgefoldError(f"{path}: after upgrading opset {opset} to {OPSET}: {error}") from None
            raise
        if not all(np.all(np.isfinite(v)) for v in outputs.values() if np.issubdtype(v.dtype, np.floating)):
            raise EdgefoldError(f"{path}: onnxruntime produced non-finite outputs on test inputs")
        np.savez(staging / REFERENCE_FILE, **{f"in.{k}": v for k, v in feeds.items()},
                 **{f"out.{k}": v for k, v in outputs.items()})
        meta = dict(model.metadata_props)
        info = {"name": name, "task": model_task(meta).value, "tokenizer": meta.get("edgefold.tokenizer"),
                "source_sha256": key, "input_sha256": content, "opset": max(opset, OPSET),
                "imported_from": str(path), "seconds": round(time.perf_counter() - start, 2),
                "versions": export_versions()}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    handle = load_cached(folder, key)
    assert handle is not None
    handle.info["cached"] = False
    return handle


@contextlib.contextmanager
def _name_user_path(staging: Path, user_path: Path):
    """Errors about the copy being written name the user's file, not the cache's temp folder."""
    try:
        yield
    except EdgefoldError as error:
        text = str(error).replace(str(staging / MODEL_FILE), str(user_path)).replace(str(staging), str(user_path.parent))
        raise EdgefoldError(text, exit_code=error.exit_code) from None


def _upgrade_opset(path: Path, opset: int):
    import onnx_ir as ir
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(onnx.load(str(path)), OPSET)
    except Exception as exc:
        raise EdgefoldError(f"{path}: cannot upgrade opset {opset} to {OPSET}: {str(exc).splitlines()[0]}") from None
    return ir.serde.deserialize_model(converted)
