"""`export`: anything the user names -> a verified, cached ONNX model (`ModelHandle`).

Sources: a built-in name (`smollm2-135m`, `minilm-l6`, `efficientnet-lite0`,
`digits-cnn`), a Hugging Face model folder, an existing `.onnx` file, or (from Python)
a `torch.nn.Module` with example inputs. Exports go through torch's dynamo exporter
at opset 21 with dynamic batch/sequence axes, are checked against torch on real inputs
at several shapes, and are cached by content hash: a second export is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefold.errors import EdgefoldError
from edgefold.export.onnx_import import import_onnx
from edgefold.export.execute import MODEL_FILE, export_plan, is_cache_folder, load_cached
from edgefold.export.sources import builtin_plan, hf_folder_plan, module_plan
from edgefold.handle import ModelHandle
from edgefold.models.builtin import BUILTINS
from edgefold.models.metadata import Task

DEFAULT_MODEL = "smollm2-135m"


def model_file(model: str | Path) -> Path:
    """The ONNX file a command works on: an .onnx path as given, the model.onnx of a folder edgefold
    wrote (a build or artifact), or the cached export of a built-in name or Hugging Face folder."""
    from edgefold.atomic import read_own_manifest

    path = Path(model)
    if str(model) not in BUILTINS and path.is_dir() and (path / MODEL_FILE).is_file() \
            and read_own_manifest(path) is not None:
        return path / MODEL_FILE
    if path.suffix == ".onnx":
        if not path.exists():
            raise EdgefoldError(f"model file not found: {path}")
        return path
    return export_model(str(model)).path


def export_model(source: str | Path | None = None, *, force: bool = False) -> ModelHandle:
    """Resolve `source` (default: the embedded SmolLM2) and return a verified model."""
    source = DEFAULT_MODEL if source is None else source
    text = str(source)
    if text in BUILTINS:
        return export_plan(builtin_plan(text), force=force)
    path = Path(text)
    if path.suffix == ".onnx" or path.is_file():
        # A model straight from edgefold's export cache needs no second import.
        from_cache = path.name == MODEL_FILE and is_cache_folder(path.parent) and not force
        cached = load_cached(path.parent) if from_cache else None
        return cached or import_onnx(path, force=force)
    if path.is_dir():
        return export_plan(hf_folder_plan(path), force=force)
    if not path.exists() and ("/" in text or path.suffix):
        raise EdgefoldError(f"model not found: {text}")
    known = ", ".join(BUILTINS)
    raise EdgefoldError(f"unknown model {text!r}: give a built-in name ({known}), a model folder or an .onnx file")


def export_module(module, example_inputs: dict[str, Any], *, name: str = "model", task: Task = Task.GENERIC,
                  tokenizer: str | None = None, output_names: list[str] | None = None,
                  dynamic_axes: dict[str, dict[int, str]] | None = None,
                  check_inputs: list[dict[str, Any]] | None = None, force: bool = False) -> ModelHandle:
    """Export a torch.nn.Module (the Python API entry)."""
    plan = module_plan(module, example_inputs, name=name, task=task, tokenizer=tokenizer,
                       output_names=output_names or ["output"], dynamic_axes=dynamic_axes,
                       check_inputs=check_inputs)
    return export_plan(plan, force=force)


__all__ = ["DEFAULT_MODEL", "export_model", "export_module", "model_file"]
