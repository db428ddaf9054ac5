"""The main job: model -> export -> passes (validated) -> output folder with manifest.

`edgefold build [recipe.toml]` and `edgefold compress` both end here. The output folder
is written in a temporary sibling and renamed into place, so a failure leaves nothing.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefold import onnx_io, progress
from edgefold.atomic import atomic_directory, cache_root
from edgefold.export import export_model
from edgefold.export.sources import tool_versions
from edgefold.handle import ModelHandle
from edgefold.hashing import sha256_file, sha256_json
from edgefold.manifest import build_manifest, file_hashes, write_json
from edgefold.model_stats import file_bytes, parameter_count
from edgefold.passes.registry import create_pass
from edgefold.recipe import EvalSettings, Recipe

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"


def default_output(handle: ModelHandle, profile_name: str) -> Path:
    return Path("dist") / f"{handle.name}-{profile_name}"


def evaluation(handle: ModelHandle, settings: EvalSettings):
    """A function path -> task metrics for this model, or None when evaluation is off."""
    if not settings.enabled:
        return None
    from edgefold.evaluate import evaluate

    def run(path: Path) -> dict[str, float]:
        return evaluate(path, reference_path=handle.path, tokens=settings.tokens,
                        task=handle.task, tokenizer=handle.tokenizer)

    return run


def baseline_metrics(handle: ModelHandle, settings: EvalSettings) -> dict[str, float]:
    """Task metrics of the unmodified model, cached beside its export."""
    metric = evaluation(handle, settings)
    if metric is None:
        return {}
    cache = handle.path.parent / f"metrics-{sha256_json(settings.model_dump())[:12]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    with progress.step(f"evaluate original {handle.name}"):
        values = metric(handle.path)
    cache.write_text(json.dumps(values, sort_keys=True))
    return values


def run_build(recipe: Recipe, *, base_dir: Path | None = None, output: Path | None = None) -> dict[str, Any]:
    """Execute a recipe; returns the manifest. Raises EdgefoldError on bad input."""
    from edgefold.compress import run_passes
    from edgefold.recipe import resolve_relative
    from edgefold.targets.profiles import load_profile

    start = time.perf_counter()
    base_dir = base_dir or Path.cwd()
    profile = load_profile(resolve_relative(recipe.profile, base_dir) or recipe.profile)
    passes = [create_pass(entry.name, entry.options) for entry in recipe.passes]  # validate before work
    handle = export_model(resolve_relative(recipe.model, base_dir))
    out_dir = Path(output) if output else (base_dir / recipe.output if recipe.output
                                            else default_output(handle, profile.name))
    baseline = baseline_metrics(handle, recipe.eval)
    _print_metrics(f"original {handle.name}", baseline)
    metric = evaluation(handle, recipe.eval)

    work_root = cache_root() / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=work_root) as scratch:
        final_path, records = run_passes(
            handle, passes, Path(scratch), profile=profile, seed=recipe.seed,
            evaluate_metric=metric if recipe.eval.every_pass else None,
        )
        final_metrics = records[-1].metrics if records and recipe.eval.every_pass else (
            metric(final_path) if metric else {})
        with atomic_directory(out_dir) as staging, progress.step(f"write {out_dir}"):
            model = onnx_io.load(final_path)
            onnx_io.save(model, staging / "model.onnx")
            params = parameter_count(model)
            del model
            files = file_hashes(staging, exclude={MANIFEST_FILE, REPORT_FILE})
            manifest = build_manifest(
                model={"name": handle.name, "task": handle.task.value, "source_sha256": handle.source_sha256,
                       "export_max_abs_error": _three_digits(handle.info.get("max_abs_error_vs_torch")),
                       "params": parameter_count(onnx_io.load(handle.path)), "file_bytes": file_bytes(handle.path)},
                profile={"name": profile.name, "sha256": sha256_json(profile.model_dump(mode="json"))},
                recipe={"seed": recipe.seed, "passes": [{"name": e.name, **e.options} for e in recipe.passes],
                        "eval": recipe.eval.model_dump()},
                passes=[r.manifest_entry() for r in records],
                baseline={k: float(f"{v:.6g}") for k, v in baseline.items()},
                final={"params": params, "file_bytes": file_bytes(staging / "model.onnx"),
                       "metrics": {k: float(f"{v:.6g}") for k, v in final_metrics.items()}},
                files=files,
                versions={"edgefold": manifest_version(), **tool_versions()},
            )
            write_json(staging / MANIFEST_FILE, manifest)
            write_json(staging / REPORT_FILE, {
                "schema": 1,
                "seconds_total": round(time.perf_counter() - start, 2),
                "export": {k: v for k, v in handle.info.items() if k != "versions"},
                "passes": [{"name": r.name, "seconds": r.seconds} for r in records],
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
            })
    _print_metrics(f"compressed {handle.name}", final_metrics)
    progress.info(f"wrote {out_dir}/model.onnx and {MANIFEST_FILE} "
                  f"({manifest['model']['file_bytes'] / 1e6:.1f} MB -> {manifest['final']['file_bytes'] / 1e6:.1f} MB)")
    return manifest


def _three_digits(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.3g}")


def manifest_version() -> str:
    from edgefold import __version__

    return __version__


def _print_metrics(label: str, metrics: dict[str, float]) -> None:
    if metrics:
        text = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items())
        print(f"{label}: {text}", flush=True)
