"""DIP / DIP-CA on SmolLM2-135M for two phones whose DRAM holds half of the MLP weights.

Two measurements, both on the first 8192 tokens of the Wikipedia text:
1. The `dip` pass's ONNX graph (per-token top-K masks in the graph) at 25/50/75% MLP
   sparsity, validated by the pass runner and scored by onnxruntime: the quality a
   user of the exported model gets. Dense is the same protocol on the original.
2. `edgefold.simulate`: the same text replayed layer by layer with a DRAM cache of MLP
   weight columns (the rest of the weights resident), for dense streaming, DIP and
   DIP-CA, priced on mobile-arm64 (UFS 3.1, 2 GB/s) and mobile-arm64-ufs21 (UFS 2.1,
   0.5 GB/s), both LPDDR5 at 25 GB/s. DIP-CA's perplexity comes from here (a graph
   cannot know the cache), and the simulator's DIP must equal the pass's graph.

The DRAM budget for weights is the non-MLP weights plus half of the MLP weights.

    .venv/bin/python bench/dip.py            # ~15 minutes on 2 cores, under the bench lock
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import RESULTS_DIR, Row, machine_lock, print_table, write_results  # noqa: E402
from edgefold import onnx_io  # noqa: E402
from edgefold.analysis import analyse  # noqa: E402
from edgefold.cli import main as edgefold_cli  # noqa: E402
from edgefold.evaluate import evaluate  # noqa: E402
from edgefold.export import export_model  # noqa: E402
from edgefold.model_stats import file_bytes, parameter_count  # noqa: E402
from edgefold.simulate import Method, simulate, weight_layout  # noqa: E402
from edgefold.simulate.plots import plot_all  # noqa: E402

MODEL = "smollm2-135m"
TOKENS = 8192
PROFILES = ["mobile-arm64", "mobile-arm64-ufs21"]
SPARSITIES = [0.25, 0.5, 0.75]
GAMMAS = [0.1, 0.2, 0.5]
EXTRA_CA = [Method("dip-ca", 0.5, 0.8), Method("dip-ca", 0.25, 0.5), Method("dip-ca", 0.5, 0.2, "lfu")]
MLP_SHARE_CACHED = 0.5


def graph_rows(handle, rows: list[Row]) -> dict[float, float]:
    """The pass's graph at each sparsity, through the validating runner."""
    params = parameter_count(onnx_io.load(handle.path))
    start = time.perf_counter()
    dense = evaluate(handle.path, tokens=TOKENS)["perplexity"]
    rows.append(Row(MODEL, "dense (onnxruntime)", "fp32", "perplexity", dense, params, file_bytes(handle.path),
                    round(time.perf_counter() - start, 2)))
    perplexities = {0.0: dense}
    for sparsity in SPARSITIES:
        with tempfile.TemporaryDirectory(prefix="bench-dip-") as tmp:
            out = Path(tmp) / "dip"
            start = time.perf_counter()
            code = edgefold_cli(["compress", MODEL, "--pass", f"dip:sparsity={sparsity}", "-o", str(out),
                                 "--eval-tokens", str(TOKENS)])
            seconds = round(time.perf_counter() - start, 2)
            if code != 0:
                raise SystemExit(f"dip pass failed at sparsity {sparsity}")
            record = json.loads((out / "manifest.json").read_text())["passes"][-1]
            ppl = record["metrics"]["perplexity"]
            perplexities[sparsity] = ppl
            setting = f"sparsity {sparsity:g}"
            extra = {"stats": record["stats"], "fidelity": record["fidelity"]}
            rows.append(Row(MODEL, "dip pass (onnxruntime)", setting, "perplexity", ppl, record["params"],
                            record["file_bytes"], seconds, extra))
            rows.append(Row(MODEL, "dip pass (onnxruntime)", setting, "mlp_weight_fraction_read",
                            record["stats"]["mlp_weight_fraction_read"]))
    return perplexities


def main() -> None:
    rows: list[Row] = []
    with machine_lock():
        handle = export_model(MODEL)
        graph_ppl = graph_rows(handle, rows)

        model = onnx_io.load(handle.path)
        layout = weight_layout(model, analyse(model).ffns)
        del model
        budget_mb = (layout.resident_bytes + MLP_SHARE_CACHED * layout.mlp_bytes) / 1e6
        methods = ([Method("dense")] + [Method("dip", s) for s in SPARSITIES]
                   + [Method("dip-ca", 0.5, g) for g in GAMMAS] + EXTRA_CA)
        start = time.perf_counter()
        result = simulate(MODEL, PROFILES, methods=methods, policies=("lru", "lfu"), tokens=TOKENS,
                          dram_budget_mb=budget_mb)
        sim_seconds = round(time.perf_counter() - start, 1)

    for row in result.rows:
        setting = f"{row['profile']}, {row['policy']}, DRAM {budget_mb:.0f} MB"
        extra = {"profile": row["profile"], "policy": row["policy"], "sparsity": row["sparsity"],
                 "gamma": row["gamma"], "cache_fraction": row["cache_fraction"]}
        for metric in ("perplexity", "hit_rate", "flash_mb_per_token", "dram_mb_per_token", "tokens_per_s",
                       "speedup_vs_dense", "ms_per_token_p50", "ms_per_token_p90"):
            rows.append(Row(MODEL, f"simulate {row['method']}", setting, metric, row[metric], extra=extra))
    # The simulator's plain DIP against the pass's graph on the same tokens (must agree).
    for sparsity in SPARSITIES:
        sim = next(r["perplexity"] for r in result.rows if r["kind"] == "dip" and r["sparsity"] == sparsity)
        rows.append(Row(MODEL, "simulate vs dip pass", f"sparsity {sparsity:g}", "perplexity_rel_diff",
                        abs(sim - graph_ppl[sparsity]) / graph_ppl[sparsity]))
    dense_sim = next(r["perplexity"] for r in result.rows if r["kind"] == "dense")
    rows.append(Row(MODEL, "simulate vs onnxruntime", "dense", "perplexity_rel_diff",
                    abs(dense_sim - graph_ppl[0.0]) / graph_ppl[0.0]))
    rows.append(Row(MODEL, "simulate", f"{len(methods)} methods x {TOKENS} tokens", "wall_seconds", sim_seconds,
                    extra={"budget_mb": budget_mb, "mlp_mb": layout.mlp_bytes / 1e6,
                           "resident_mb": layout.resident_bytes / 1e6,
                           "non_mlp_read_mb_per_token": layout.read_bytes / 1e6}))

    path = write_results("dip", rows)
    plots = plot_all(result.rows, RESULTS_DIR, prefix="dip_")
    headline = {"perplexity", "hit_rate", "tokens_per_s", "speedup_vs_dense", "perplexity_rel_diff"}
    print_table("DIP / DIP-CA on SmolLM2-135M (bench/dip.py; all rows in the JSON)",
                [r for r in rows if r.metric in headline])
    print(f"wrote {path} and {', '.join(p.name for p in plots)}")


if __name__ == "__main__":
    main()
