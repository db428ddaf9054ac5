"""The main job: model -> export -> passes (validated) -> output folder -> gates.

`edgefold build [recipe.toml]` and `edgefold compress` both end here. The output folder
is written in a temporary sibling and renamed into place, so a failure leaves nothing.
A build whose inputs (model content, recipe, profile, tool and edgefold versions) match
the manifest already in the output folder is reused instead of redone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefold import onnx_io, progress
from edgefold.atomic import MANIFEST_FILE, claim_output, output_directory, scratch_directory
from edgefold.report.assemble import HTML_FILE, JUNIT_FILE, REPORT_FILE, layer_sizes, write_reports
from edgefold.export import export_model
from edgefold.gates import evaluate_gates
from edgefold.handle import ModelHandle
from edgefold.hashing import sha256_file, sha256_files, sha256_json
from edgefold.manifest import BuildManifest, build_manifest, file_hashes, write_json
from edgefold.measure import LatencyTarget, create, parse_latency_target
from edgefold.model_stats import file_bytes
from edgefold.passes.registry import create_pass
from edgefold.recipe import EvalSettings, Recipe
from edgefold.safe_names import safe_name
from edgefold.versions import build_versions, export_versions

NOT_HASHED = {MANIFEST_FILE, REPORT_FILE, JUNIT_FILE, HTML_FILE}


@dataclass
class BuildResult:
    """Outcome of one build: its manifest, its report, the output folder, and whether an earlier build was reused."""

    manifest: BuildManifest
    report: dict[str, Any]
    output: Path
    reused: bool

    @property
    def gates_passed(self) -> bool:
        """Whether every deployment gate passed."""
        return self.report["gates_passed"]


def default_output(handle: ModelHandle, profile_name: str) -> Path:
    """Output folder used when the recipe names none: `dist/<model>-<profile>`."""
    return Path("dist") / f"{safe_name(handle.name)}-{safe_name(profile_name, 'profile')}"


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


def code_fingerprint() -> str:
    """Hash of edgefold's own source: a code change invalidates reused builds."""
    import edgefold
    import edgefold.passes
    import edgefold.targets

    roots = [Path(edgefold.__file__).parent, Path(edgefold.passes.__file__).parent, Path(edgefold.targets.__file__).parent]
    files = [p for root in roots for p in root.rglob("*") if p.suffix in {".py", ".toml", ".cc"}]
    return sha256_files(files, root=None)


def build_inputs_hash(handle: ModelHandle, recipe: Recipe, profile, passes) -> str:
    """sha256 over everything that decides a build's result (model content, recipe, profile, versions, code,
    files the passes read); equal hashes mean the existing output can be reused."""
    recipe_part = recipe.model_dump(mode="json", exclude={"output"})
    return sha256_json({"model": handle.source_sha256, "recipe": recipe_part,
                        "profile": profile.model_dump(mode="json"), "versions": build_versions(),
                        "code": code_fingerprint(), "pass_files": pass_input_files(passes)})


def pass_input_files(passes) -> dict[str, str | None]:
    """sha256 of every file the recipe's passes name in their options (policy, calibration
    text); None if absent."""
    digests = {}
    for index, graph_pass in enumerate(passes):
        for path in graph_pass.config.input_files():
            file = Path(path)
            digests[f"{index}.{graph_pass.name}:{path}"] = sha256_file(file) if file.is_file() else None
    return digests


def _reusable(out_dir: Path, inputs_hash: str) -> dict[str, Any] | None:
    """The existing manifest if the folder was built from the same inputs and is intact."""
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return None
    if manifest.get("inputs_sha256") != inputs_hash:
        progress.info(f"rebuilding {out_dir}: inputs changed since its last build")
        return None
    for name, digest in manifest.get("files", {}).items():
        path = out_dir / name
        if not path.exists() or sha256_file(path) != digest:
            progress.info(f"rebuilding {out_dir}: {name} was modified or removed")
            return None
    return manifest


def _stored_report(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / REPORT_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


def report_as_reused(out_dir: Path, manifest: BuildManifest, report: dict[str, Any], start: float) -> BuildResult:
    """Same inputs, same gates: the earlier verdict stands (`edgefold check` measures again)."""
    report.update(reused=True, seconds_total=round(time.perf_counter() - start, 2))
    write_json(out_dir / REPORT_FILE, report)
    for gate in report["gates"]:
        progress.info(("PASS " if gate["passed"] else "FAIL ") + gate["detail"])
    return BuildResult(manifest, report, out_dir, True)


def run_build(recipe: Recipe, *, base_dir: Path | None = None, output: Path | None = None,
              reuse: bool = True, force: bool = False) -> BuildResult:
    """Execute a recipe. Raises EdgefoldError on bad input; gate failures are in the result.

    The output folder must be absent, empty or an earlier edgefold output (`atomic.claim_output`);
    `force` also replaces edgefold's files in a folder that holds other files (those are kept)."""
    from edgefold.compress import run_passes

    start = time.perf_counter()
    base_dir = Path(base_dir) if base_dir else (recipe.base_dir or Path.cwd())
    recipe = recipe.located(base_dir)
    profile = recipe.device
    passes = [create_pass(entry.name, entry.options, base_dir) for entry in recipe.passes]  # validate before work
    check_latency_targets(recipe)
    out_dir = Path(output) if output else recipe.output_dir
    if out_dir is not None:
        claim_output(out_dir, force=force)  # refuse a foreign folder before any work
    handle = export_model(recipe.model_source)
    if out_dir is None:
        out_dir = default_output(handle, profile.name)
        claim_output(out_dir, force=force)
    check_gates_measurable(recipe, handle)
    inputs_hash = build_inputs_hash(handle, recipe, profile, passes)
    if reuse and (manifest := _reusable(out_dir, inputs_hash)) is not None:
        progress.info(f"reused {out_dir}: model, recipe, profile and tools unchanged (inputs {inputs_hash[:12]})")
        if (report := _stored_report(out_dir)) is not None:
            return report_as_reused(out_dir, manifest, report, start)
        return _finish(out_dir, manifest, recipe, handle, records=[], layers=None, start=start, reused=True)

    baseline = baseline_metrics(handle, recipe.eval)
    _print_metrics(f"original {handle.name}", baseline)
    metric = evaluation(handle, recipe.eval)
    with scratch_directory("build") as scratch:
        run = run_passes(
            handle, passes, scratch, profile=profile, seed=recipe.seed,
            evaluate_metric=metric if recipe.eval.every_pass else None,
            min_cosine=recipe.validation.min_cosine,
        )
        records = run.records
        final_metrics = records[-1].metrics if records and recipe.eval.every_pass else (
            metric(run.final.path) if metric else {})
        # the runner analysed the original and final files already: the same files, the same analyses
        layers = layer_sizes(run.original.analysis, run.final.analysis)
        with output_directory(out_dir, force=force) as staging, progress.step(f"write {out_dir}"):
            onnx_io.save(run.final.take_model(), staging / "model.onnx")
            manifest = build_manifest(
                model={"name": handle.name, "task": handle.task.value, "source_sha256": handle.source_sha256,
                       "export_max_abs_error": _three_digits(handle.info.get("max_abs_error_vs_torch")),
                       "params": run.original.params, "file_bytes": file_bytes(handle.path)},
                profile={"name": profile.name, "sha256": sha256_json(profile.model_dump(mode="json"))},
                recipe={"seed": recipe.seed, "passes": [{"name": e.name, **e.options} for e in recipe.passes],
                        "eval": recipe.eval.model_dump(), "gates": recipe.gates.model_dump()},
                passes=[r.manifest_entry() for r in records],
                baseline={k: float(f"{v:.6g}") for k, v in baseline.items()},
                final={"params": run.final.params, "file_bytes": file_bytes(staging / "model.onnx"),
                       "metrics": {k: float(f"{v:.6g}") for k, v in final_metrics.items()}},
                versions={"edgefold": _edgefold_version(), **export_versions()},
                inputs_sha256=inputs_hash,
            )
            sample = None
            if recipe.compile.enabled:
                # The manifest goes to the compile stage as an object; it adds `compile` and the
                # hashes of every file, and writes the folder's one manifest.json.
                manifest = compile_into(staging, manifest, recipe, final=out_dir, baseline_model=handle.path)
                sample = generate_sample(staging, manifest)
            else:
                manifest["files"] = file_hashes(staging, exclude=NOT_HASHED)
                write_json(staging / MANIFEST_FILE, manifest)
            result = _finish(staging, manifest, recipe, handle, records=records, layers=layers, start=start,
                             reused=False, report_dir=out_dir, sample=sample)
    result.output = out_dir
    _print_metrics(f"compressed {handle.name}", final_metrics)
    progress.info(f"wrote {out_dir}/model.onnx and {MANIFEST_FILE} "
                  f"({manifest['model']['file_bytes'] / 1e6:.1f} MB -> {manifest['final']['file_bytes'] / 1e6:.1f} MB)")
    return result


def compile_into(folder: Path, manifest: BuildManifest, recipe: Recipe,
                 final: Path | None = None, baseline_model: Path | None = None) -> BuildManifest:
    """TVM-compile the model in the (staging) build folder into that same folder; returns the
    build's manifest with its `compile` section."""
    from edgefold.targets.tvm.artifact import compile_into_folder

    # seqs None: LMs get decode and a 128-token prefill when the hand-scheduled LLM path takes
    # them (seconds), decode only on the generic path (an untuned prefill costs minutes)
    return compile_into_folder(folder, manifest, recipe.device,
                               trials=recipe.compile.trials, seqs=recipe.compile.seqs,
                               kv_cache=recipe.compile.kv_cache, announce_as=final, baseline_model=baseline_model)


def generate_sample(folder: Path, manifest: BuildManifest) -> dict[str, Any] | None:
    """One greedy line from a fixed prompt, when the build compiled an LLM for this machine."""
    from edgefold.summary import SAMPLE_PROMPT, SAMPLE_TOKENS

    compiled = manifest.get("compile") or {}
    if compiled.get("library_kind") != "x86_64" or not any(e.get("kind") == "llm" for e in compiled["buckets"]):
        return None
    from edgefold.targets.tvm.llm.generate import generate_text

    with progress.step(f"generate {SAMPLE_TOKENS} tokens from the artifact"):
        result = generate_text(folder, SAMPLE_PROMPT, SAMPLE_TOKENS)
    return {"prompt": SAMPLE_PROMPT, "text": result.text, "tokens": len(result.tokens),
            "tokens_per_s": round(result.tokens_per_s, 1) if result.tokens_per_s else None}


def _finish(folder: Path, manifest: BuildManifest, recipe: Recipe, handle: ModelHandle, *, records, layers,
            start: float, reused: bool, report_dir: Path | None = None,
            sample: dict[str, Any] | None = None) -> BuildResult:
    """Measure latency gates, check all gates, write the reports into `folder`."""
    from edgefold.measure.kernel_times import llm_kernel_times
    from edgefold.summary import build_summary

    latency = measure_latency(folder / "model.onnx", handle, recipe)
    kernels = llm_kernel_times(folder, manifest)  # report.html's latency section
    previous = _stored_report(folder) or {}
    if layers is None:  # reused build: keep the layer table of the earlier report
        layers = previous.get("layers", [])
    if sample is None and reused:
        sample = previous.get("summary", {}).get("sample")
    summary = build_summary(folder, manifest, shown_folder=report_dir or folder, sample=sample)
    gates = evaluate_gates(
        recipe.gates, artifact_bytes=manifest["final"]["file_bytes"], baseline=manifest["baseline"],
        final=manifest["final"]["metrics"],
        latency_ms={target: values["median_ms"] for target, values in latency.items()},
    )
    report = write_reports(folder, manifest=manifest, records=records, gates=[g.as_dict() for g in gates],
                           latency=latency, layers=layers, export_info=handle.info,
                           seconds_total=time.perf_counter() - start, reused=reused, summary=summary,
                           kernels=kernels)
    for gate in gates:
        progress.info(("PASS " if gate.passed else "FAIL ") + gate.detail)
    return BuildResult(manifest, report, report_dir or folder, reused)


def check_build(recipe: Recipe, *, base_dir: Path, output: Path | None = None) -> BuildResult:
    """Re-check the gates of an existing artifact (latency is measured again)."""
    from edgefold.errors import EdgefoldError

    recipe = recipe.located(base_dir)
    handle = export_model(recipe.model_source)
    if output is None and recipe.output is None:
        raise EdgefoldError("check needs the artifact folder: set output in the recipe or pass -o")
    out_dir = Path(output) if output else recipe.output_dir
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise EdgefoldError(f"no build at {out_dir}: run edgefold build first")
    manifest = json.loads(manifest_path.read_text())
    return _finish(out_dir, manifest, recipe, handle, records=[], layers=None, start=time.perf_counter(), reused=True)


def check_gates_measurable(recipe: Recipe, handle: ModelHandle) -> None:
    """A quality gate the model's task cannot measure is a recipe error (exit 2), not a failed gate."""
    from edgefold.gates import unmeasurable_gates

    problems = unmeasurable_gates(recipe.gates, handle.task.value, evaluated=recipe.eval.enabled)
    if problems:
        from edgefold.errors import EdgefoldError

        raise EdgefoldError(f"bad recipe: {problems[0]}")


def check_latency_targets(recipe: Recipe) -> list[LatencyTarget]:
    """The recipe's latency targets, parsed; an unknown one, or one that needs the TVM compile
    the recipe turns off, is a recipe error (exit 2)."""
    from edgefold.errors import EdgefoldError

    where = " in [gates.max_latency_ms]"
    targets = [parse_latency_target(text, where=where) for text in recipe.gates.max_latency_ms]
    for target in targets:
        if target.needs_compile and not recipe.compile.enabled:
            raise EdgefoldError(f"latency target {target.spelling!r} needs the TVM compile: "
                                "remove [compile] enabled = false")
    return targets


def measure_latency(model_path: Path, handle: ModelHandle, recipe: Recipe) -> dict[str, Any]:
    """The figures each latency gate compares, keyed by the target as the recipe spells it."""
    targets = check_latency_targets(recipe)
    results: dict[str, Any] = {}
    inputs, _ = handle.reference_io()
    for target in sorted(targets, key=lambda t: t.spelling):
        with progress.step(f"measure latency ({target.spelling})"):
            results[target.spelling] = create(target).gate(model_path, device=recipe.device, reference_inputs=inputs)
    return results


def _three_digits(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.3g}")


def _edgefold_version() -> str:
    from edgefold import __version__

    return __version__


def _print_metrics(label: str, metrics: dict[str, float]) -> None:
    if metrics:
        text = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items())
        print(f"{label}: {text}", flush=True)
