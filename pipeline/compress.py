"""Run passes in order, validating the model after every one.

After each pass: save, full onnx.checker with shape inference, a run in onnxruntime on
the reference inputs, and fidelity against the original model's outputs (max abs
error, cosine) plus the task metric when asked. A pass that breaks the model stops the
build with a clear error naming the pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.export.verify import output_error
from edgefold.handle import ModelHandle
from edgefold.model_stats import file_bytes, parameter_count
from edgefold.passes.base import GraphPass, PassContext


@dataclass
class PassRecord:
    """What one pass did to the model: its config and stats, the size and fidelity after it, and how long it took."""

    name: str
    config: dict[str, Any]
    stats: dict[str, Any]
    params: int
    file_bytes: int
    macs: int | None
    fidelity: dict[str, float]
    metrics: dict[str, float]
    seconds: float
    model_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        """Deterministic part (no timings) for manifest.json."""
        return {"name": self.name, "config": self.config, "stats": self.stats, "params": self.params,
                "file_bytes": self.file_bytes, "macs": self.macs, "fidelity": _rounded(self.fidelity),
                "metrics": _rounded(self.metrics), "model_sha256": self.model_sha256}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    # Six significant digits: stable across runs, precise enough to compare.
    return {k: float(f"{v:.6g}") for k, v in values.items()}


@dataclass
class ModelVersion:
    """One saved model, read from disk once: its analysis and parameter count, and the loaded
    graph until a pass takes it."""

    path: Path
    analysis: Any  # edgefold.analysis.Analysis of the file
    params: int
    model: Any = None  # the loaded onnx_ir.Model; None once taken
    read_seconds: float = 0.0  # loading and analysing: part of the next pass's time, as it always was

    @classmethod
    def read(cls, path: Path) -> ModelVersion:
        """Load `path` once, analyse it and count its parameters."""
        from edgefold.analysis import analyse

        start = time.perf_counter()
        model = onnx_io.load(path)
        version = cls(path, analyse(model), parameter_count(model), model)  # analyse leaves the model as it is
        version.read_seconds = time.perf_counter() - start
        return version

    def take_model(self):
        """The loaded graph, handed over: a pass rewrites it in place, so this version lets it go."""
        model, self.model = self.model, None
        return model if model is not None else onnx_io.load(self.path)


@dataclass
class PassRun:
    """What the pass runner hands on: the original and final models as read, one record per pass."""

    original: ModelVersion
    final: ModelVersion  # the original itself when there are no passes
    records: list[PassRecord]


def total_macs(analysis) -> int | None:
    """The model's total MACs from an analysis, or None when there is no analysis or it has no MAC count."""
    if analysis is None:
        return None
    totals = getattr(analysis, "totals", None) or {}
    value = totals.get("macs") if isinstance(totals, dict) else getattr(totals, "macs", None)
    return int(value) if value is not None else None


def run_passes(
    handle: ModelHandle,
    passes: list[GraphPass],
    workdir: Path,
    *,
    profile=None,
    seed: int = 0,
    evaluate_metric: Callable[[Path], dict[str, float]] | None = None,
    min_cosine: float = 0.5,
) -> PassRun:
    """Apply `passes` to `handle`'s model; returns the original and final models and one record per pass.

    Each model version is read and analysed once: a pass's output analysis is the next pass's
    input analysis, and the build reuses the first and last.

    A pass whose outputs fall below `min_cosine` against the original model's (on the
    reference inputs) stops the run: a model that far off is not a compressed version of
    the original, whatever the exit code would say.
    """
    from edgefold.hashing import sha256_files

    inputs, reference_outputs = handle.reference_io()
    original = current = ModelVersion.read(handle.path)
    records: list[PassRecord] = []
    for index, graph_pass in enumerate(passes, start=1):
        title = f"pass {index}/{len(passes)}: {graph_pass.name}"
        with progress.step(title):
            start = time.perf_counter()
            model = current.take_model()
            context = PassContext(analysis=current.analysis, profile=profile, seed=seed,
                                  workdir=workdir, model_path=current.path)
            outcome = graph_pass.run(model, context)
            step_path = onnx_io.save(outcome.model, workdir / f"{index:02d}-{graph_pass.name}" / "model.onnx")
            del model, outcome.model
            seconds = time.perf_counter() - start + current.read_seconds
            try:
                onnx_io.check(step_path)
                outputs = onnx_io.run(onnx_io.session(step_path), inputs) if inputs else {}
            except EdgefoldError as exc:
                raise EdgefoldError(f"pass {graph_pass.name!r} produced an invalid model: {exc}") from None
            fidelity = output_error(reference_outputs, outputs) if inputs else {}
            _check_fidelity_floor(graph_pass.name, fidelity, min_cosine)
            metrics = evaluate_metric(step_path) if evaluate_metric else {}
            output = ModelVersion.read(step_path)
            records.append(PassRecord(
                name=graph_pass.name,
                config=graph_pass.config.model_dump(mode="json"),
                stats=outcome.stats,
                params=output.params,
                file_bytes=file_bytes(step_path),
                macs=total_macs(output.analysis),
                fidelity=fidelity,
                metrics=metrics,
                seconds=round(seconds, 3),
                model_sha256=sha256_files(onnx_io.model_files(step_path)),
            ))
            summary = ", ".join(f"{k} {v:.4g}" for k, v in {**fidelity, **metrics}.items())
            progress.info(f"    {graph_pass.name}: {summary or 'no reference outputs'}")
        current = output
    return PassRun(original, current, records)


def _check_fidelity_floor(name: str, fidelity: dict[str, float], min_cosine: float) -> None:
    cosine = fidelity.get("cosine")
    if cosine is not None and not cosine >= min_cosine:  # `not >=`: a NaN cosine fails too
        raise EdgefoldError(f"pass {name!r} took the outputs too far from the original model: output cosine "
                            f"{cosine:.3f} is below the fidelity floor {min_cosine} "
                            f"(lower it with --min-cosine / [validation] min_cosine)")
