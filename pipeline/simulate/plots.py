"""Hit rate and tokens/s against MLP sparsity, and the quality/speed trade-off."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(rows: list[dict[str, Any]], profile: str, value: str) -> dict[str, list[tuple[float, float]]]:
    """Curves keyed by legend label: DIP (with dense at sparsity 0), one per DIP-CA gamma."""
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row["profile"] != profile:
            continue
        policy = row["policy"]
        if row["kind"] in ("dense", "dip"):
            curves[f"DIP ({policy})"].append((row["sparsity"], row[value]))
        else:
            curves[f"DIP-CA g={row['gamma']:g} ({policy})"].append((row["sparsity"], row[value]))
    return {label: sorted(points) for label, points in curves.items()}


def _profiles(rows):
    return list(dict.fromkeys(r["profile"] for r in rows))


def plot_all(rows: list[dict[str, Any]], folder: Path, prefix: str = "") -> list[Path]:
    """Write PNGs of hit rate and tokens/s against sparsity and of perplexity against tokens/s into `folder`;
    returns their paths (file names start with `prefix`)."""
    folder = Path(folder)
    profiles = _profiles(rows)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in _series(rows, profiles[0], "hit_rate").items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("MLP sparsity (fraction of channels dropped per token)")
    ax.set_ylabel("DRAM cache hit rate (bytes)")
    ax.set_title("Cache hit rate vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / f"{prefix}hit_rate_vs_sparsity.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        for label, points in _series(rows, profile, "tokens_per_s").items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label)
        bound = next(r["all_in_dram_tokens_per_s"] for r in rows if r["profile"] == profile)
        ax.axhline(bound, color="grey", linestyle="--", linewidth=1, label="dense, all weights in DRAM")
        ax.set_xlabel("MLP sparsity")
        ax.set_ylabel("simulated tokens/s")
        ax.set_title(profile)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / f"{prefix}tokens_per_s_vs_sparsity.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        for row in rows:
            if row["profile"] != profile:
                continue
            marker = {"dense": "s", "dip": "o"}.get(row["kind"], "^")
            ax.scatter(row["tokens_per_s"], row["perplexity"], marker=marker)
            ax.annotate(f"{row['method']} ({row['policy']})", (row["tokens_per_s"], row["perplexity"]), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("simulated tokens/s")
        ax.set_ylabel("perplexity (log)")
        ax.set_title(f"quality vs speed, {profile}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(folder / f"{prefix}perplexity_vs_tokens_per_s.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
