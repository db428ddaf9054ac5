"""Run an `ExportPlan`: torch -> ONNX -> tidy -> verify -> cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgefold import onnx_io, progress
from edgefold.atomic import cache_directory, cache_root
from edgefold.errors import EdgefoldError
from edgefold.export.graph_tidy import name_weights_after_modules, strip_volatile_metadata
from edgefold.export.sources import OPSET, ExportPlan
from edgefold.versions import export_versions
from edgefold.export.verify import output_error, require_faithful
from edgefold.handle import ModelHandle
from edgefold.models.metadata import MODEL_KEY, SOURCE_KEY, TASK_KEY, TOKENIZER_KEY, Task
from edgefold.safe_names import safe_name

MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.npz"
INFO_FILE = "export.json"


def exports_dir() -> Path:
    """Folder in the edgefold cache that holds exported and imported models."""
    return cache_root() / "exports"


def cache_folder(name: str, key: str) -> Path:
    """Where the export of `name` with cache key `key` lives (the name made path-safe)."""
    return exports_dir() / f"{safe_name(name)}-{key[:16]}"


def is_cache_folder(folder: Path) -> bool:
    """True for a folder directly inside the export cache."""
    try:
        return Path(folder).resolve().parent == exports_dir().resolve()
    except OSError:
        return False


def load_cached(folder: Path, key: str | None = None) -> ModelHandle | None:
    """The cached export in `folder`, or None if absent, unreadable or made for another key."""
    info_path = folder / INFO_FILE
    if not (info_path.is_file() and (folder / MODEL_FILE).is_file()):
        return None
    try:
        info = json.loads(info_path.read_text())
        Task(info["task"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(info, dict) or (key is not None and info.get("source_sha256") != key):
        return None  # a stale or foreign entry under this name: export again
    return ModelHandle(path=folder / MODEL_FILE, name=info["name"], task=Task(info["task"]),
                       tokenizer=info.get("tokenizer"), source_sha256=info["source_sha256"],
                       reference=folder / REFERENCE_FILE, info=info)


def export_plan(plan: ExportPlan, *, force: bool = False) -> ModelHandle:
    """Export a plan to a verified, cached ONNX model and return its handle; reuses the cache unless `force`."""
    key = plan.cache_key()
    folder = cache_folder(plan.name, key)
    if not force:
        cached = load_cached(folder, key)
        if cached is not None:
            progress.info(f"export of {plan.name} reused from cache ({folder})")
            cached.info["cached"] = True
            return cached
    with cache_directory(folder) as staging:
        _export_into(plan, staging, key)
    handle = load_cached(folder, key)
    assert handle is not None
    handle.info["cached"] = False
    return handle


def _export_into(plan: ExportPlan, staging: Path, key: str) -> dict:
    import torch

    start = time.perf_counter()
    with progress.step(f"load {plan.name}"):
        module = plan.build_module().eval()
        input_sets = plan.input_sets()
    example = input_sets[0]
    args = tuple(torch.from_numpy(example[name]) for name in plan.input_names)
    dynamic_shapes = tuple(
        {axis: torch.export.Dim(dim_name, min=1) for axis, dim_name in plan.dynamic_axes.get(name, {}).items()} or None
        for name in plan.input_names
    )
    with progress.step(f"export {plan.name} to ONNX (torch dynamo, opset {OPSET})"):
        program = _torch_export(module, args, plan, dynamic_shapes)
        model = program.model
        from edgefold.passes.cleanup.cleanup import tidy_graph

        tidy_graph(model, fuse_batchnorm=False)
        strip_volatile_metadata(model)
        name_weights_after_modules(model)
        model.metadata_props.update({
            TASK_KEY: plan.task.value,
            MODEL_KEY: plan.name,
            SOURCE_KEY: key,
        })
        if plan.tokenizer:
            model.metadata_props[TOKENIZER_KEY] = plan.tokenizer
        model.producer_name = "edgefold"
        path = onnx_io.save(model, staging / MODEL_FILE)
        del program, model
    with progress.step(f"verify {plan.name} against torch on {len(input_sets)} real input sets"):
        onnx_io.check(path)
        sess = onnx_io.session(path)
        errors = []
        reference: dict[str, np.ndarray] = {}
        for index, feeds in enumerate(input_sets):
            with torch.no_grad():
                outputs = module(*(torch.from_numpy(feeds[n]) for n in plan.input_names))
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            expected = {name: out.detach().numpy() for name, out in zip(plan.output_names, outputs)}
            actual = onnx_io.run(sess, feeds)
            error = output_error(expected, actual)
            require_faithful(error, f"export of {plan.name} (input set {index})")
            errors.append(error)
            if index == 0:
                reference = {**{f"in.{k}": v for k, v in feeds.items()}, **{f"out.{k}": v for k, v in actual.items()}}
        np.savez(staging / REFERENCE_FILE, **reference)
    info = {
        "name": plan.name,
        "task": plan.task.value,
        "tokenizer": plan.tokenizer,
        "source_sha256": key,
        "opset": OPSET,
        "max_abs_error_vs_torch": max(e["max_abs_error"] for e in errors),
        "min_cosine_vs_torch": min(e["cosine"] for e in errors),
        "checked_shapes": [{k: list(v.shape) for k, v in s.items()} for s in input_sets],
        "seconds": round(time.perf_counter() - start, 2),
        "versions": export_versions(),
    }
    (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    progress.info(f"exported {plan.name}: max |onnxruntime - torch| = {info['max_abs_error_vs_torch']:.3g}")
    return info


def _torch_export(module, args, plan: ExportPlan, dynamic_shapes):
    import logging
    import warnings

    import torch

    # The exporter logs optional-op registration noise (torchvision) and deprecations.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")

    try:
        return torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET, input_names=plan.input_names,
            output_names=plan.output_names, dynamic_shapes=dynamic_shapes, optimize=False,
            external_data=True, verbose=False,
        )
    except EdgefoldError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgefoldError(f"torch could not export {plan.name}: {first[:300]}") from None
