"""Show and save a simulation: a table, results.json, per-token arrays, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgefold.simulate.run import SimulationResult


def print_table(result: SimulationResult, console=None) -> None:
    """Print one row per method, policy and profile: perplexity, hit rate, traffic, tokens/s and speed-up vs dense."""
    from rich.console import Console
    from rich.table import Table

    layout = result.layout
    table = Table(title=(f"{result.model}: {result.tokens} tokens, MLP weights {layout.mlp_bytes / 1e6:.0f} MB, "
                         f"resident non-MLP {layout.resident_bytes / 1e6:.0f} MB"))
    for column in ("method", "policy", "profile", "cache", "ppl", "hit rate", "flash MB/tok", "DRAM MB/tok",
                   "tok/s", "ms/tok p50/p90", "vs dense"):
        table.add_column(column, justify="left" if column in {"method", "policy", "profile"} else "right")
    for row in result.rows:
        speedup = row["speedup_vs_dense"]
        table.add_row(row["method"], row["policy"], row["profile"], f"{row['cache_fraction']:.0%}",
                      f"{row['perplexity']:.2f}", f"{row['hit_rate']:.3f}", f"{row['flash_mb_per_token']:.1f}",
                      f"{row['dram_mb_per_token']:.1f}", f"{row['tokens_per_s']:.2f}",
                      f"{row['ms_per_token_p50']:.0f}/{row['ms_per_token_p90']:.0f}",
                      f"{speedup:.2f}x" if speedup else "")
    (console or Console()).print(table)


def write_outputs(result: SimulationResult, folder: Path) -> list[Path]:
    """results.json, per_token.npz and the plots into `folder` (which must exist)."""
    from edgefold.simulate.plots import plot_all

    folder = Path(folder)
    summary = folder / "results.json"
    summary.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    per_token = folder / "per_token.npz"
    np.savez_compressed(per_token, **result.series)
    return [summary, per_token, *plot_all(result.rows, folder)]
