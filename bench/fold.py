"""Benchmark: `fold` (Model Folding, data-free) vs magnitude vs random structured pruning.

Every method runs through the fold pass's own code path (`method=fold|magnitude|random`),
so the rows differ only in how channels are chosen and merged. "fold" is the paper's
cluster-mean merge (`merge=mean`), "fold anchor" the anchored merge (`merge=anchor`, the
pass default for FFNs):

- SmolLM2-135M, FFN channels at 10/20/30/50%: perplexity on 8192 Wikipedia tokens.
- MiniLM-L6, FFN channels at the same ratios: Lee-pairs Spearman (and embedding cosine
  to the fp32 model, since Spearman alone is noisy on 50 documents).
- EfficientNet-Lite0, conv/BN channels at 10/20/30%: top-1 agreement and KL vs fp32.
- The digits CNN, conv channels at 10/20/30%: accuracy on the held-out digits.
- Not data-free, opt-in: `fold anchor + repair=lsq` and `magnitude + repair=lsq` re-fit
  every shrunk FFN's down projection (and a bias) by least squares on 32 Lee background
  documents (FFN models only).

Two comparisons, each with identical output shapes across its three methods:
- automatic allocation (the pass default): the per-layer widths come from the data-free
  allocator (a parameter budget: `ratio` of the folded structures' parameters), then
  fold / magnitude / random choose and merge (or drop) channels within those widths;
- uniform: every group loses the same share of its channels (for conv chains that is
  more than `ratio` of the parameters, since both sides of a conv shrink).
Attention folding is measured on its own on SmolLM2: one of its three key/value groups
folded per layer (ratio 0.34).

    .venv/bin/python bench/fold.py            # ~40 min on 2 cores
    .venv/bin/python bench/fold.py --models smollm2-135m --methods "fold,fold anchor"   # update those rows only
    .venv/bin/python bench/fold.py --quick    # 1024 tokens, one ratio per model: a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import Row, apply_pass, read_results, lee_embeddings as embeddings, machine_lock, print_table, write_results  # noqa: E402
from edgefold import onnx_io  # noqa: E402
from edgefold.evaluate import evaluate, primary_metric  # noqa: E402
from edgefold.export import export_model  # noqa: E402
from edgefold.model_stats import file_bytes, parameter_count  # noqa: E402

PLAN = {  # model -> (structure folded, ratios)
    "smollm2-135m": ("ffn", [0.1, 0.2, 0.3, 0.5]),
    "minilm-l6": ("ffn", [0.1, 0.2, 0.3, 0.5]),
    "efficientnet-lite0": ("conv", [0.1, 0.2, 0.3]),
    "digits-cnn": ("conv", [0.1, 0.2, 0.3]),
}
METHODS = (("fold", {"method": "fold", "merge": "mean"}),
           ("magnitude", {"method": "magnitude"}),
           ("random", {"method": "random"}),
           ("fold uniform", {"method": "fold", "merge": "mean", "allocation": "uniform"}),
           ("magnitude uniform", {"method": "magnitude", "allocation": "uniform"}),
           ("random uniform", {"method": "random", "allocation": "uniform"}),
           ("fold anchor", {"method": "fold", "merge": "anchor"}),
           ("fold anchor uniform", {"method": "fold", "merge": "anchor", "allocation": "uniform"}),
           # Opt-in, uses data (32 Lee background documents): the down projections re-fitted by least
           # squares after the anchored fold / magnitude pruning. FFN models only (conv sets keep auto's repair).
           ("fold anchor + repair=lsq", {"method": "fold", "merge": "anchor", "repair": "lsq"}),
           ("magnitude + repair=lsq", {"method": "magnitude", "repair": "lsq"}))
LSQ_STRUCTURES = {"ffn"}  # where repair=lsq re-fits something; elsewhere its rows would repeat the plain ones


def run_variant(handle, options: dict, out: Path, tokens: int):
    path, graph_pass, outcome, seconds = apply_pass(handle.path, "fold", options, out)
    metrics = evaluate(path, reference_path=handle.path, tokens=tokens, task=handle.task, tokenizer=handle.tokenizer)
    return path, outcome.stats, seconds, metrics


def bench_model(name: str, ratios: list[float], tokens: int, work: Path, rows: list[Row], extras: bool,
                methods=METHODS) -> None:
    handle = export_model(name)
    structure, _ = PLAN[name]
    metric, _higher = primary_metric(handle.task)
    base_metrics = evaluate(handle.path, reference_path=handle.path, tokens=tokens, task=handle.task,
                            tokenizer=handle.tokenizer)
    base = base_metrics[metric]
    rows.append(Row(name, "fp32", "0%", metric, base, parameter_count(onnx_io.load(handle.path)),
                    file_bytes(handle.path), extra={"metrics": base_metrics}))
    reference_embeddings = embeddings(handle.path) if metric == "lee_spearman" else None

    variants = [(method, ratio, {"ratio": ratio, "structures": [structure], **options})
                for ratio in ratios for method, options in methods
                if options.get("repair") != "lsq" or structure in LSQ_STRUCTURES]
    if extras and name == "smollm2-135m":
        variants += [("fold attention (kv groups)", 0.34, {"ratio": 0.34, "structures": ["attention"]}),
                     ("magnitude attention (kv groups)", 0.34,
                      {"ratio": 0.34, "structures": ["attention"], "method": "magnitude"})]
    for index, (method, ratio, options) in enumerate(variants):
        setting = f"{ratio:.0%}"
        path, stats, seconds, metrics = run_variant(handle, options, work / f"{name}-{index}", tokens)
        size, count = file_bytes(path), parameter_count(onnx_io.load(path))
        extra = {"metrics": metrics, f"{metric}_vs_fp32": metrics[metric] / base if base else None,
                 "kept": {group: keep for group, (_width, keep) in stats["groups"].items()},
                 "structures": options["structures"]}
        if stats.get("lsq_error_ratio"):
            extra["lsq_error_ratio_mean"] = round(sum(stats["lsq_error_ratio"].values()) / len(stats["lsq_error_ratio"]), 4)
            extra["calibration_samples"] = stats["calibration_samples"]
        if reference_embeddings is not None:
            extra["embedding_cosine_vs_fp32"] = float((embeddings(path) * reference_embeddings).sum(axis=1).mean())
        rows.append(Row(name, method, setting, metric, metrics[metric], count, size, round(seconds, 2), extra))
        print(f"{name} {method} {setting}: {metric} {metrics[metric]:.4g} "
              f"({count:,} params, {size / 1e6:.1f} MB, fold {seconds:.1f}s)", flush=True)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLAN), figsize=(5 * len(PLAN), 4))
    for axis, name in zip(axes, PLAN):
        model_rows = [r for r in rows if r.model == name]
        if not model_rows:
            continue
        metric = model_rows[0].metric
        for method, _ in METHODS:
            points = sorted((float(r.setting.rstrip("%")), r.value) for r in model_rows if r.method == method)
            if points:
                axis.plot(*zip(*points), marker="o", label=method)
        fp32 = next((r.value for r in model_rows if r.method == "fp32"), None)
        if fp32 is not None:
            axis.axhline(fp32, color="grey", linestyle="--", label="fp32")
        if metric == "perplexity":
            axis.set_yscale("log")
        axis.set_xlabel("channels removed (%)")
        axis.set_ylabel(metric)
        axis.set_title(name)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _kept_rows(name: str, models: list[str], methods: set[str]) -> list[Row]:
    """Rows of the existing results that a partial run does not replace."""
    rerun_all = methods == {m for m, _ in METHODS}  # the extras run too: all of the model's rows go
    return [row for row in read_results(name)
            if not (row.model in models and (rerun_all or row.method in methods or row.method == "fp32"))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(PLAN))
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of the methods; their rows replace the same rows of the "
                             "existing results, the other rows are kept")
    args = parser.parse_args()
    tokens = 1024 if args.quick else 8192
    chosen = METHODS
    if args.methods:
        names = args.methods.split(",")
        unknown = set(names) - {m for m, _ in METHODS}
        if unknown:
            parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
        chosen = tuple(m for m in METHODS if m[0] in names)
    models = args.models.split(",")
    rows: list[Row] = []
    from threadpoolctl import threadpool_limits

    with machine_lock(), tempfile.TemporaryDirectory(prefix="bench-fold-") as tmp, threadpool_limits(2):
        for name in models:
            ratios = PLAN[name][1][1:2] if args.quick else PLAN[name][1]
            bench_model(name, ratios, tokens, Path(tmp), rows, extras=not args.quick and chosen == METHODS,
                        methods=chosen)
    name = "fold-quick" if args.quick else "fold"
    if chosen != METHODS or len(models) < len(PLAN):
        rows = _kept_rows(name, models, {m for m, _ in chosen}) + rows
    path = write_results(name, rows)
    plot(rows, path.with_suffix(".png"))
    print_table("fold: data-free folding vs magnitude vs random", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
