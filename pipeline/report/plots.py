"""The report's plots, each a function from plain data to PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
    return buffer.getvalue()


def size_by_layer(layers: list[dict]) -> bytes:
    """Bytes per weighted layer before and after compression."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    xs = range(len(layers))
    ax.bar(xs, [l["bytes_before"] / 1e6 for l in layers], color="#c8d3e0", label="before")
    ax.bar(xs, [l["bytes_after"] / 1e6 for l in layers], color="#2f6db5", width=0.5, label="after")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("MB")
    ax.set_title("Weight bytes by layer")
    ax.legend()
    return _png(fig)


def bits_per_layer(layers: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 3.0))
    ax.plot(range(len(layers)), [l["bits_after"] for l in layers], "o-", markersize=3, color="#b5472f")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("bits per weight")
    ax.set_ylim(0, 34)
    ax.set_title("Bits per weight after compression")
    return _png(fig)


def fidelity_per_pass(baseline: dict[str, float], passes: list[dict]) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.0))
    names = ["original"] + [p["name"] for p in passes]
    metric = next(iter(baseline), None)
    if metric:
        values = [baseline[metric]] + [p["metrics"].get(metric, float("nan")) for p in passes]
        axes[0].plot(names, values, "o-")
        axes[0].set_title(f"{metric} after each pass")
    else:
        axes[0].set_title("no task metric")
    axes[1].plot(names[1:], [p["fidelity"].get("cosine", float("nan")) for p in passes], "s-", color="#2f6db5")
    axes[1].set_title("output cosine vs original")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def latency_by_kernel(kernels: list[dict]) -> bytes:
    top = kernels[:15]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(top) + 1.2))
    ax.barh([k["name"][:60] for k in top][::-1], [k["ms"] for k in top][::-1], color="#4a8f3c")
    ax.set_xlabel("ms")
    ax.set_title("Latency by kernel")
    return _png(fig)


def pareto(points: list[dict], x: str, y: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    front = [p for p in points if p.get("pareto")]
    rest = [p for p in points if not p.get("pareto")]
    ax.scatter([p[x] for p in rest], [p[y] for p in rest], color="#999999", label="tried")
    ax.plot(sorted(p[x] for p in front), [p[y] for p in sorted(front, key=lambda p: p[x])], "o-",
            color="#b5472f", label="Pareto front")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend()
    ax.set_title("Configurations tried")
    return _png(fig)
