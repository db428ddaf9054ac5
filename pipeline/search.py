"""`edgefold search`: try a grid of pass settings, keep the Pareto front, pick one.

The recipe's `[search]` table names options as `PASS.OPTION = [values...]`; every
combination is built (reusing the normal build, so each point is validated and
evaluated the same way) into `<output>/search/NN`. Each point gets its size, onnxruntime
latency and task metric; the front is the set no other point beats on both cost (latency
or size) and quality. The chosen configuration is the cheapest point that passes every
gate, copied to `<output>/best`.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from edgefold import progress
from edgefold.errors import EdgefoldError
from edgefold.recipe import PassEntry, Recipe, SearchSpace


def configurations(recipe: Recipe, space: SearchSpace) -> list[tuple[dict[str, Any], Recipe]]:
    """Every combination of the grid applied to the recipe's passes."""
    names = {entry.name for entry in recipe.passes}
    for key in space.grid:
        if key.split(".", 1)[0] not in names:
            raise EdgefoldError(f"search grid names {key!r} but the recipe has no pass {key.split('.', 1)[0]!r}")
    keys = sorted(space.grid)
    result = []
    for values in itertools.product(*(space.grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        passes = []
        for entry in recipe.passes:
            options = entry.options
            for key, value in setting.items():
                pass_name, option = key.split(".", 1)
                if pass_name == entry.name:
                    options[option] = value
            passes.append(PassEntry(name=entry.name, **options))
        result.append((setting, recipe.model_copy(update={"passes": passes})))
    return result


def pareto_front(points: list[dict[str, Any]], cost: str, quality: str, higher_is_better: bool) -> None:
    """Mark points no other point dominates (lower cost and better quality)."""
    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    for point in points:
        point["pareto"] = not any(
            (other[cost] <= point[cost] and not better(point[quality], other[quality]))
            and (other[cost] < point[cost] or better(other[quality], point[quality]))
            for other in points if other is not point)


def run_search(recipe: Recipe, space: SearchSpace, *, base_dir: Path, output: Path,
               force: bool = False) -> dict[str, Any]:
    """Build every grid point into `output/search/NN`, write search.json/html and `output/best`.

    `output` is claimed like any output folder (absent, empty or edgefold's own) and written
    through a staging folder, so a failed search leaves nothing."""
    from edgefold.atomic import claim_output, output_directory

    claim_output(output, force=force)
    with output_directory(output, force=force) as staging:
        summary = _search_into(recipe, space, base_dir=base_dir, staging=staging, final=Path(output))
    return summary


def _search_into(recipe: Recipe, space: SearchSpace, *, base_dir: Path, staging: Path, final: Path) -> dict[str, Any]:
    from edgefold.build import check_latency_targets, run_build
    from edgefold.evaluate import primary_metric
    from edgefold.measure import create
    from edgefold.recipe import CompileSettings

    points: list[dict[str, Any]] = []
    configs = configurations(recipe, space)
    # Candidates are ranked on onnxruntime latency; the TVM compile runs only when a gate needs it.
    needs_compile = any(target.needs_compile for target in check_latency_targets(recipe))
    for index, (setting, candidate) in enumerate(configs):
        progress.info(f"search {index + 1}/{len(configs)}: {setting}")
        if not needs_compile:
            candidate = candidate.model_copy(update={"compile": CompileSettings(enabled=False)})
        result = run_build(candidate, base_dir=base_dir, output=staging / "search" / f"{index:02d}")
        inputs, _ = _reference_inputs(candidate, base_dir)
        latency = create("onnxruntime").gate(result.output / "model.onnx", reference_inputs=inputs, repeats=5)["median_ms"]
        metrics = result.manifest["final"]["metrics"]
        points.append({"setting": setting, "folder": f"search/{index:02d}", "latency_ms": latency,
                       "file_mb": result.manifest["final"]["file_bytes"] / 1e6, **metrics,
                       "gates_passed": result.gates_passed})
    task = result.manifest["model"]["task"]
    metric = primary_metric(task)
    if metric is None:
        raise EdgefoldError("search needs a model with a task metric (perplexity, Spearman, agreement, accuracy)")
    quality, higher = metric
    pareto_front(points, space.cost, quality, higher)
    passing = [p for p in points if p["gates_passed"]]
    best = min(passing, key=lambda p: (p[space.cost], -p[quality] if higher else p[quality])) if passing else None
    if best is not None:
        shutil.copytree(staging / best["folder"], staging / "best")
    summary = {"cost": space.cost, "quality": quality, "higher_is_better": higher, "points": points,
               "best": best, "x": space.cost, "y": quality, "output": str(final)}
    (staging / "search.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    from edgefold.manifest import folder_manifest, write_json
    from edgefold.report.html import write_html

    write_html(staging / "search.html", {"model": {"name": result.manifest["model"]["name"]},
                                         "profile": recipe.profile, "passes": [], "search": summary})
    if best is not None:
        _add_search_to_report(staging / "best", summary)
    write_json(staging / "manifest.json", folder_manifest(staging, command="search",
                                                          best=best["folder"] if best else None))
    return summary


def _add_search_to_report(folder: Path, summary: dict[str, Any]) -> None:
    """The chosen build's report also shows how it was chosen (the Pareto chart); report.json and
    report.html are not among the hashed files of its manifest, so the folder stays intact."""
    from edgefold.report.assemble import HTML_FILE, REPORT_FILE
    from edgefold.manifest import write_json
    from edgefold.report.html import write_html

    report = json.loads((folder / REPORT_FILE).read_text())
    report["search"] = summary
    write_json(folder / REPORT_FILE, report)
    write_html(folder / HTML_FILE, report)


def _reference_inputs(recipe: Recipe, base_dir: Path):
    from edgefold.export import export_model

    return export_model(recipe.located(base_dir).model_source).reference_io()
