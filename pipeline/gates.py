"""Deployment gates: budgets a build must meet, checked after it is built.

A gate compares one measured number with a limit from the recipe's `[gates]` table.
Gates never raise: a failing gate is a result (exit code 1 from the CLI), not an
error (exit code 2), so CI can tell "the model got worse" from "the recipe is broken".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pydantic


class Gates(pydantic.BaseModel):
    """Recipe `[gates]`: every field optional; only the ones set are checked."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    max_artifact_mb: float | None = pydantic.Field(default=None, gt=0, description="largest model file, in MB")
    max_perplexity_increase: float | None = pydantic.Field(
        default=None, ge=0, description="relative: 0.05 allows +5% over the original model")
    max_spearman_drop: float | None = pydantic.Field(default=None, ge=0, description="absolute drop in Lee Spearman")
    min_top1_agreement: float | None = pydantic.Field(
        default=None, ge=0, le=1, description="image classifiers: least top-1 agreement with the original model")
    min_accuracy: float | None = pydantic.Field(default=None, ge=0, le=1, description="digits: least test accuracy")
    max_latency_ms: dict[str, float] = pydantic.Field(
        default_factory=dict, description="per latency target (onnxruntime, host, estimate, rpc://...): max median ms")

# Which tasks can measure each quality gate (their metric comes from `edgefold.evaluate`).
_GATE_TASKS = {
    "max_perplexity_increase": ("perplexity", {"causal-lm"}),
    "max_spearman_drop": ("Lee Spearman", {"sentence-embedding"}),
    "min_top1_agreement": ("top-1 agreement", {"image-classifier", "digits-classifier"}),
    "min_accuracy": ("accuracy", {"digits-classifier"}),
}


def unmeasurable_gates(gates: Gates, task: str, *, evaluated: bool = True) -> list[str]:
    """Why each set quality gate cannot be measured for a model of `task` (empty if all can)."""
    problems = []
    for name, (metric, tasks) in _GATE_TASKS.items():
        if getattr(gates, name) is None:
            continue
        if task not in tasks:
            problems.append(f"gate {name} needs {metric}, which a {task} model does not have "
                            f"(it applies to: {', '.join(sorted(tasks))})")
        elif not evaluated:
            problems.append(f"gate {name} needs the task metric, but [eval] enabled = false")
    return problems


@dataclass
class GateResult:
    """One gate's verdict: the measured number, its limit, pass/fail, and a line explaining it."""

    name: str
    measured: float | None
    limit: float
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """This verdict as a plain dict for report.json."""
        return asdict(self)


def _upper(name: str, measured: float | None, limit: float, unit: str = "") -> GateResult:
    if measured is None:
        return GateResult(name, None, limit, False, f"{name}: not measured (limit {limit:g}{unit})")
    passed = measured <= limit
    verdict = "within" if passed else f"over by {measured - limit:.4g}{unit}"
    return GateResult(name, measured, limit, passed, f"{name}: {measured:.4g}{unit} vs max {limit:g}{unit} ({verdict})")


def _lower(name: str, measured: float | None, limit: float) -> GateResult:
    if measured is None:
        return GateResult(name, None, limit, False, f"{name}: not measured (limit {limit:g})")
    passed = measured >= limit
    verdict = "within" if passed else f"under by {limit - measured:.4g}"
    return GateResult(name, measured, limit, passed, f"{name}: {measured:.4g} vs min {limit:g} ({verdict})")


def evaluate_gates(gates: Gates, *, artifact_bytes: int, baseline: dict[str, float], final: dict[str, float],
                   latency_ms: dict[str, float] | None = None) -> list[GateResult]:
    """Check every gate the recipe sets, in a stable order."""
    results: list[GateResult] = []
    if gates.max_artifact_mb is not None:
        results.append(_upper("max_artifact_mb", artifact_bytes / 1e6, gates.max_artifact_mb, " MB"))
    if gates.max_perplexity_increase is not None:
        increase = None
        if "perplexity" in baseline and "perplexity" in final:
            increase = final["perplexity"] / baseline["perplexity"] - 1.0
        results.append(_upper("max_perplexity_increase", increase, gates.max_perplexity_increase))
    if gates.max_spearman_drop is not None:
        drop = None
        if "lee_spearman" in baseline and "lee_spearman" in final:
            drop = baseline["lee_spearman"] - final["lee_spearman"]
        results.append(_upper("max_spearman_drop", drop, gates.max_spearman_drop))
    if gates.min_top1_agreement is not None:
        results.append(_lower("min_top1_agreement", final.get("top1_agreement"), gates.min_top1_agreement))
    if gates.min_accuracy is not None:
        results.append(_lower("min_accuracy", final.get("accuracy"), gates.min_accuracy))
    for target, limit in sorted(gates.max_latency_ms.items()):
        measured = (latency_ms or {}).get(target)
        results.append(_upper(f"max_latency_ms[{target}]", measured, limit, " ms"))
    return results
