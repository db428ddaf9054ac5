"""Benchmark: `slice` (PruneNet-style policy) vs magnitude vs random FFN slicing.

SmolLM2-135M at 10/20/30/40% of FFN channels removed (perplexity, 8192 Wikipedia
tokens) and MiniLM-L6 likewise (Lee-pairs Spearman). For each setting: the task
metric, the mean KS distance of the sliced FFN1 spectra, parameters, file size and
slicing seconds. The policy is trained once per model (its training time is a row)
and then reused at every other ratio without retraining (its load time is a row).

Variants: `policy` uses the spectrum allocation across layers (the pass default);
magnitude and random are the uniform baselines a user would otherwise reach for.
`activation (calibrated)` is not calibration-free: it ranks by measured channel output
energy on 32 Lee background documents. It is the data-aware reference that shows how
much of the gap to fp32 is the weight-only ranking; it runs with the spectrum allocation
and, to compare ranking with ranking, with the uniform one the baselines use.

MiniLM also gets `lee_pair_fidelity` (Spearman of the 1,225 pair similarities against
fp32's: is the similarity ranking preserved?) and, per ratio, paired bootstrap intervals
over the 50 documents for Lee Spearman differences (policy - magnitude, magnitude - fp32,
calibrated uniform - magnitude).

`+ repair=lsq` rows (opt-in, uses data: 32 Lee background documents) re-fit every sliced
FFN's down projection and a new bias by least squares on the calibration activations
(passes/common/lsq_repair.py), after the calibration-free policy ranking and after the
calibrated one.

At 20% SmolLM2 also runs the cross terms (policy uniform, baselines with the
spectrum allocation, and the policy without its concentration prior, i.e. pure KS).

    .venv/bin/python bench/slice.py            # ~22 min on 2 cores
    .venv/bin/python bench/slice.py --quick    # 1024 tokens, 2 ratios: a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import Row, apply_pass, lee_embeddings as embeddings, machine_lock, print_table, write_results  # noqa: E402
from edgefold.evaluate.similarity import pair_fidelity, spearman_difference  # noqa: E402
from edgefold import onnx_io  # noqa: E402
from edgefold.evaluate import evaluate  # noqa: E402
from edgefold.export import export_model  # noqa: E402
from edgefold.model_stats import file_bytes, parameter_count  # noqa: E402

RATIOS = [0.1, 0.2, 0.3, 0.4]
CALIBRATED = "activation (calibrated)"
CALIBRATED_UNIFORM = "activation (calibrated) uniform"  # same allocation as the baselines: ranking against ranking
POLICY_LSQ = "policy + repair=lsq"  # the calibration-free ranking, then the least-squares re-fit (uses data)
CALIBRATED_LSQ = "activation (calibrated) + repair=lsq"
DIFFERENCES = [("policy", "magnitude"), ("magnitude", "fp32"), (CALIBRATED_UNIFORM, "magnitude")]
METRIC = {"smollm2-135m": "perplexity", "minilm-l6": "lee_spearman"}


def run_variant(handle, options: dict, out: Path, tokens: int):
    path, graph_pass, outcome, seconds = apply_pass(handle.path, "slice", options, out)
    metrics = evaluate(path, tokens=tokens)
    return path, outcome.stats, graph_pass, seconds, metrics


def bench_model(name: str, ratios: list[float], tokens: int, work: Path, rows: list[Row], extras: bool) -> None:
    handle = export_model(name)
    metric = METRIC[name]
    base = evaluate(handle.path, tokens=tokens)[metric]
    params = parameter_count(onnx_io.load(handle.path))
    rows.append(Row(name, "fp32", "0%", metric, base, params, file_bytes(handle.path)))
    policy_file = work / f"{name}-policy.pt"  # fresh: the first policy run trains it, the rest reuse it
    # Lee Spearman can rise above fp32 after pruning (a 50-document metric that a perturbation
    # may happen to help), so for the encoder we also report how close it stays to the original.
    reference_embeddings = embeddings(handle.path) if metric == "lee_spearman" else None

    variants = []
    for ratio in ratios:
        variants += [("policy", f"{ratio:.0%}", {"ratio": ratio, "policy": str(policy_file)}),
                     ("magnitude", f"{ratio:.0%}", {"ratio": ratio, "method": "magnitude", "allocation": "uniform"}),
                     ("random", f"{ratio:.0%}", {"ratio": ratio, "method": "random", "allocation": "uniform"}),
                     (CALIBRATED, f"{ratio:.0%}", {"ratio": ratio, "method": "activation"}),
                     (CALIBRATED_UNIFORM, f"{ratio:.0%}", {"ratio": ratio, "method": "activation", "allocation": "uniform"}),
                     (POLICY_LSQ, f"{ratio:.0%}", {"ratio": ratio, "policy": str(policy_file), "repair": "lsq"}),
                     (CALIBRATED_LSQ, f"{ratio:.0%}", {"ratio": ratio, "method": "activation", "repair": "lsq"})]
    if extras:
        variants += [
            ("policy uniform", "20%", {"ratio": 0.2, "policy": str(policy_file), "allocation": "uniform"}),
            ("policy, no prior (pure KS)", "20%", {"ratio": 0.2, "policy": str(policy_file), "prior": 0.0}),
            ("magnitude + spectrum alloc", "20%", {"ratio": 0.2, "method": "magnitude"}),
            ("random + spectrum alloc", "20%", {"ratio": 0.2, "method": "random"}),
        ]
    embedded = {}  # (method, setting) -> Lee embeddings, for the paired bootstrap
    for index, (method, setting, options) in enumerate(variants):
        path, stats, graph_pass, seconds, metrics = run_variant(handle, options, work / f"{name}-{index}", tokens)
        size, count = file_bytes(path), parameter_count(onnx_io.load(path))
        extra = {"channel_ratio": stats["channel_ratio"], "ffn_param_ratio": stats["ffn_param_ratio"],
                 "kept": [layer["kept"] for layer in stats["layers"]], "tokens": tokens if metric == "perplexity" else None,
                 f"{metric}_vs_fp32": metrics[metric] / base}
        repaired = [layer["lsq_error_ratio"] for layer in stats["layers"] if "lsq_error_ratio" in layer]
        if repaired:
            extra["lsq_error_ratio_mean"] = round(float(np.mean(repaired)), 4)
            extra["calibration_samples"] = stats["calibration_samples"]
        if method.startswith("policy"):
            trained = graph_pass.policy_trained
            extra["policy"] = "trained" if trained else "reused"
            extra["policy_seconds"] = graph_pass.timings.get("policy_train_s" if trained else "policy_s")
            if trained:
                rows.append(Row(name, "policy", "train once", "policy_train_seconds",
                                graph_pass.timings["policy_train_s"], seconds=graph_pass.timings["policy_train_s"],
                                extra={"episodes": stats["policy_files"][0]["episodes"]}))
            else:
                rows.append(Row(name, "policy", f"reuse at {setting}", "policy_load_seconds",
                                graph_pass.timings["policy_s"], seconds=graph_pass.timings["policy_s"]))
        rows.append(Row(name, method, setting, metric, metrics[metric], count, size, round(seconds, 2), extra))
        if reference_embeddings is not None:
            emb = embedded[method, setting] = embeddings(path)
            cosine = float((emb * reference_embeddings).sum(axis=1).mean())
            rows.append(Row(name, method, setting, "embedding_cosine_vs_fp32", cosine, count, size, round(seconds, 2)))
            rows.append(Row(name, method, setting, "lee_pair_fidelity", pair_fidelity(emb, reference_embeddings),
                            count, size, round(seconds, 2)))
        rows.append(Row(name, method, setting, "ks_distance", stats["mean_ks"], count, size, round(seconds, 2)))
        print(f"{name} {method} {setting}: {metric} {metrics[metric]:.4g}, KS {stats['mean_ks']:.4f}, "
              + (f"cosine {cosine:.4f}, " if reference_embeddings is not None else "")
              + f"{seconds:.1f}s", flush=True)
    if reference_embeddings is None:
        return

    def embeddings_of(method: str, setting: str):
        return reference_embeddings if method == "fp32" else embedded[method, setting]

    # Paired bootstrap over the 50 documents: is a Lee Spearman difference more than noise?
    for ratio in ratios:
        setting = f"{ratio:.0%}"
        for first, second in DIFFERENCES:
            diff = spearman_difference(embeddings_of(first, setting), embeddings_of(second, setting))
            rows.append(Row(name, f"{first} - {second}", setting, "lee_spearman_difference", diff.observed,
                            extra={"ci95": [round(diff.low, 4), round(diff.high, 4)],
                                   "bootstrap": "1000 paired draws over the 50 documents"}))
            print(f"{name} Lee Spearman {first} - {second} at {setting}: {diff.observed:+.3f} "
                  f"(95% CI {diff.low:+.3f} .. {diff.high:+.3f})")


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*METRIC.items(), ("minilm-l6", "lee_pair_fidelity")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    for axis, (name, metric) in zip(axes, panels):
        base = next((r.value for r in rows if r.model == name and r.method == "fp32" and r.metric == metric), None)
        for method in ("policy", "magnitude", "random", CALIBRATED, POLICY_LSQ, CALIBRATED_LSQ):
            points = sorted((float(r.setting.rstrip("%")), r.value) for r in rows
                            if r.model == name and r.method == method and r.metric == metric and r.setting.endswith("%"))
            if points:
                axis.plot(*zip(*points), marker="o", label=method,
                          linestyle="--" if method in (CALIBRATED, CALIBRATED_LSQ) else "-")
        if base is not None:
            axis.axhline(base, color="grey", linestyle="--", label="fp32")
        if metric == "perplexity":
            axis.set_yscale("log")
        axis.set_xlabel("FFN channels removed (%)")
        axis.set_ylabel(metric)
        axis.set_title(f"{name}: {metric}")
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ratios = [0.1, 0.2] if args.quick else RATIOS
    tokens = 1024 if args.quick else 8192
    rows: list[Row] = []
    from threadpoolctl import threadpool_limits

    with machine_lock(), tempfile.TemporaryDirectory(prefix="bench-slice-") as tmp, threadpool_limits(2):
        work = Path(tmp)
        bench_model("smollm2-135m", ratios, tokens, work, rows, extras=not args.quick)
        bench_model("minilm-l6", ratios, tokens, work, rows, extras=not args.quick)
    name = "slice-quick" if args.quick else "slice"
    path = write_results(name, rows)
    plot(rows, path.with_suffix(".png"))
    print_table("slice: FFN channel slicing, policy vs magnitude vs random", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
