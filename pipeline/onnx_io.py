"""The one place that reads, writes, checks and runs ONNX files.

Models live on disk as `model.onnx` plus one external-data file beside it, so a
135M-parameter LLM never has to fit in a 2 GB protobuf. In memory, passes work on
`onnx_ir.Model` (lazy, memory-mapped tensors). Nobody else opens protobufs by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from edgefold.errors import EdgefoldError

MIN_OPSET = 21
EXTERNAL_DATA_SUFFIX = ".data"
# Tensors smaller than this stay inside the protobuf (shape constants, norms' scales).
EXTERNAL_THRESHOLD_BYTES = 1024


def data_path_for(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + EXTERNAL_DATA_SUFFIX)


def model_files(model_path: Path) -> list[Path]:
    """The files that make up a saved model: the graph and its external data, if any."""
    model_path = Path(model_path)
    files = [model_path]
    data = data_path_for(model_path)
    if data.exists():
        files.append(data)
    return files


def _require_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise EdgefoldError(f"model file not found: {path}")
    if not path.is_file():
        raise EdgefoldError(f"not a file: {path}")
    return path


def load(path: str | os.PathLike) -> ir.Model:
    """Load a model for rewriting; tensors stay on disk until touched."""
    path = _require_file(Path(path))
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf decode errors come in many types
        raise EdgefoldError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    _check_external_data_present(model, path)
    return model


def _check_external_data_present(model: ir.Model, path: Path) -> None:
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            location = Path(tensor.base_dir) / tensor.location
            if not location.exists():
                raise EdgefoldError(f"{path}: external data file missing: {location.name}")
            if location.stat().st_size < tensor.offset + tensor.length:
                raise EdgefoldError(f"{path}: external data file {location.name} is truncated")


def save(model: ir.Model, path: str | os.PathLike) -> Path:
    """Save deterministically: same graph, same bytes (names and order are preserved)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data_path_for(path)
    # ir.save refuses to overwrite external data that the model itself still reads from.
    ir.save(model, path, external_data=data.name, size_threshold_bytes=EXTERNAL_THRESHOLD_BYTES)
    return path


def load_proto(path: str | os.PathLike, with_data: bool = False) -> onnx.ModelProto:
    """Read-only protobuf view (graph structure, metadata) for light inspection."""
    path = _require_file(Path(path))
    try:
        return onnx.load(str(path), load_external_data=with_data)
    except Exception as exc:
        raise EdgefoldError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None


def check(path: str | os.PathLike) -> None:
    """Full onnx.checker with strict shape inference; raises EdgefoldError on failure."""
    path = _require_file(Path(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise EdgefoldError(f"{path} fails onnx.checker: {_first_line(exc)}") from None
    opset = opset_version(load_proto(path))
    if opset < MIN_OPSET:
        raise EdgefoldError(f"{path} uses opset {opset}; edgefold needs opset >= {MIN_OPSET}")


def opset_version(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session; errors become one-line user errors."""
    import onnxruntime as ort

    path = _require_file(Path(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgefoldError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from None


def run(session_or_path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run once; returns outputs by name."""
    sess = session(session_or_path) if isinstance(session_or_path, (str, os.PathLike)) else session_or_path
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values))


def metadata(path_or_model) -> dict[str, str]:
    """The model's metadata_props (edgefold keeps task/tokenizer/source there)."""
    if isinstance(path_or_model, ir.Model):
        return dict(path_or_model.metadata_props)
    proto = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_proto(path_or_model)
    return {p.key: p.value for p in proto.metadata_props}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
