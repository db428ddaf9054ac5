"""The report's plots, each a function from plain data to PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    # bbox "tight": long kernel names as tick labels are not cut off; no version stamp: stable bytes
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def size_by_layer(layers: list[dict]) -> bytes:
    """Bytes per weight before and after compression (log scale: an embedding is 100x a projection)."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    xs = range(len(layers))
    ax.bar(xs, [l["bytes_before"] / 1e6 for l in layers], color="#c8d3e0", width=1.0, label="before")
    ax.bar(xs, [l["bytes_after"] / 1e6 for l in layers], color="#2f6db5", width=0.6, label="after")
    ax.set_yscale("log")
    ax.set_xlabel("weight (graph order)")
    ax.set_ylabel("MB (log scale)")
    ax.set_title("Weight bytes by layer")
    ax.legend()
    return _png(fig)


def bits_per_layer(layers: list[dict]) -> bytes:
    """Stored bits per weight of every weight in the final model, coloured by how it is stored."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    kept = [l for l in layers if l["params_after"]]
    stored = sorted({l.get("dtype", "") for l in kept})
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(stored)}
    bits = [l["bits_after"] for l in kept]
    ax.bar(range(len(kept)), bits, width=1.0, color=[colours[l.get("dtype", "")] for l in kept])
    total = 8 * sum(l["bytes_after"] for l in kept) / max(sum(l["params_after"] for l in kept), 1)
    line = ax.axhline(total, color="#333333", linestyle="--", linewidth=1, label=f"all weights: {total:.2f} bits")
    patches = [Patch(color=colours[n], label=f"stored as {n}") for n in stored if n]  # old reports have no dtype
    ax.legend(handles=[line, *patches], fontsize=7, loc="upper right", ncol=4)
    ax.set_xlabel("weight (graph order)")
    ax.set_ylabel("stored bits per weight")
    ax.set_ylim(0, max(bits + [8]) * 1.25)
    ax.set_xlim(-0.5, max(len(kept), 1) - 0.5)
    ax.set_title("Bits per weight in the final model (codes, scales, zero points, minimums)")
    return _png(fig)


def fidelity_per_pass(baseline: dict[str, float], passes: list[dict]) -> bytes:
    """PNG of the task metric and the output cosine vs the original model after each pass."""
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
    """PNG bar chart of the 15 slowest kernels' latency in ms."""
    top = kernels[:15]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(top) + 1.2))
    ax.barh([k["name"][:60] for k in top][::-1], [k["ms"] for k in top][::-1], color="#4a8f3c")
    ax.set_xlabel("ms")
    ax.set_title("Latency by kernel")
    return _png(fig)


def pareto(points: list[dict], x: str, y: str) -> bytes:
    """PNG scatter of the tried configurations on `x` vs `y`, with the Pareto front drawn as a line."""
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


def kernel_times(kernels: list[dict], bandwidth_gbps: float, isa: str | None = None, top: int = 15) -> bytes:
    """Decode-step time per kernel; kernels that stream weights carry their GB/s and the share
    of the machine's read bandwidth they reach (the rest of their time is compute or stalls)."""
    shown = kernels[:top][::-1]
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(shown) + 1.4))
    ms = [k["ms"] for k in shown]
    ax.barh(range(len(shown)), ms, color=["#2f6db5" if k.get("gbps") else "#9aa7b5" for k in shown])
    ax.set_yticks(range(len(shown)), [f"{_short(k['name'], isa)} x{k['calls']}" for k in shown], fontsize=7)
    for y, kernel in enumerate(shown):
        if kernel.get("gbps"):
            text = f"{kernel['gbps']:.1f} GB/s, {100 * kernel['bandwidth_share']:.0f}%"
        else:  # measure_llm gives no bytes to a kernel whose time is all instrument overhead
            text = "reads no weights" if kernel["ms"] > 0 else "within the instrument's overhead"
        ax.text(kernel["ms"], y, f"  {text}", va="center", fontsize=7)
    ax.set_xlim(0, max(ms + [1e-3]) * 1.35)
    ax.set_xlabel("ms per decode step")
    where = f", {isa} kernels" if isa else ""
    ax.set_title(f"Decode step by kernel (GB/s read, % of {bandwidth_gbps:.1f} GB/s measured{where})")
    return _png(fig)


def onnxruntime_vs_edgefold(rows: list[tuple[str, float, float]]) -> bytes:
    """(label, onnxruntime ms, edgefold ms) side by side, one panel each (decode and prefill
    differ by 100x, so they do not share an axis)."""
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.0), squeeze=False)
    for ax, (label, ort_ms, ours_ms) in zip(axes[0], rows):
        bars = ax.bar(["onnxruntime", "edgefold"], [ort_ms, ours_ms], color=["#9aa7b5", "#2f6db5"])
        ax.bar_label(bars, [f"{ort_ms:.3g} ms", f"{ours_ms:.3g} ms"], fontsize=8)
        ax.set_ylim(0, max(ort_ms, ours_ms) * 1.2)
        ax.set_ylabel("ms")
        ax.set_title(f"{label}: {ort_ms / ours_ms:.1f}x faster" if ours_ms else label, fontsize=9)
    return _png(fig)


def _short(name: str, isa: str | None, width: int = 52) -> str:
    """A kernel name without the ISA suffix every kernel of the build has, cut to `width`."""
    if isa:
        name = name.removesuffix("_" + isa.replace("-", "_"))
    return name if len(name) <= width else name[: width - 3] + "..."
