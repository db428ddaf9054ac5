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
    """Path of the external-data file kept beside `model_path` (`model.onnx` -> `model.onnx.data`)."""
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
    if path.stat().st_size == 0:  # protobuf would parse it as an empty model
        raise EdgefoldError(f"{path} is empty (0 bytes), not an ONNX model")
    return path


def load(path: str | os.PathLike) -> ir.Model:
    """Load a model for rewriting; tensors stay on disk until touched.

    Unnamed nodes get names here, once: analysis groups and passes refer to nodes by
    name, and this is the one place models are loaded.
    """
    path = _require_file(Path(path))
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf decode errors come in many types
        raise EdgefoldError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    _check_external_data(model, path)
    name_nodes(model)
    return model


def name_nodes(model: ir.Model) -> int:
    """Name every unnamed node `<op_type>_<index>` (its position in graph order) and rename
    repeats of a name the same way; returns how many changed.

    The first node with a given name keeps it, so graphs with unique names are untouched,
    and the new names depend only on the graph: loading a file twice gives the same names.
    """
    nodes = list(model.graph.all_nodes())  # subgraphs too: names are unique model-wide
    taken = {node.name for node in nodes if node.name}
    seen: set[str] = set()
    changed = 0
    for index, node in enumerate(nodes):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = f"{node.op_type}_{index}"
        candidate, suffix = base, 1
        while candidate in taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        node.name = candidate
        taken.add(candidate)
        seen.add(candidate)
        changed += 1
    return changed


def _check_external_data(model: ir.Model, path: Path) -> None:
    """External data must lie in the model's folder, be present and be whole.

    Where it points is checked before any file is opened or stat'ed, so a model cannot
    make edgefold read (or probe for) files elsewhere.
    """
    folder = path.resolve().parent
    tensors = [value.const_value for graph in _graphs(model) for value in graph.initializers.values()]
    external = [t for t in tensors if isinstance(t, ir.ExternalTensor)]
    for tensor in external:
        location = str(tensor.location)
        relative = not os.path.isabs(location) and ".." not in Path(location).parts and "\0" not in location
        if not relative or not (folder / location).resolve().is_relative_to(folder):  # resolve: symlinks out
            raise EdgefoldError(f"{path}: external data location {location!r} of tensor {tensor.name!r} points outside "
                                f"the model's folder; edgefold reads external data only from beside the model")
    for tensor in external:
        file = folder / str(tensor.location)
        if not file.is_file():
            raise EdgefoldError(f"{path}: external data file missing: {file.name}")
        stat = file.stat()
        if stat.st_size < (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes):
            raise EdgefoldError(f"{path}: external data file {file.name} is truncated")
        if stat.st_nlink > 1:  # onnx_ir refuses to read these (a link can smuggle in another file)
            raise EdgefoldError(f"{path}: external data file {file.name} has {stat.st_nlink} hard links; "
                                f"onnx_ir reads only singly linked files: copy it")


def _graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph and every subgraph (If/Loop/Scan bodies)."""
    graphs = [model.graph]
    for node in model.graph.all_nodes():
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                graphs.append(attribute.value)
            elif attribute.type == ir.AttributeType.GRAPHS:
                graphs.extend(attribute.value)
    return graphs


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
    """The model's default-domain ONNX opset version, or 0 if it imports none."""
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
