"""Latency and efficiency of an LLM artifact on this machine (`edgefold profile`, the build's gates).

decode: milliseconds per token at a realistic context (the cache already holding
`context` tokens), and per kernel: time, share, packed weight bytes read, achieved GB/s
and the share of the machine's read bandwidth; the whole step against the roofline
(weight bytes per token / bandwidth). prefill<N>: milliseconds for N prompt tokens.

Per-kernel times come from the VM's call instrument, which costs a callback per kernel
call; that cost is measured (instrumented minus plain step time, per call) and taken
off each kernel, so the kernels add up to the step again. The result says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgefold.timing import DEFAULT_TOP, summarize_ms

CONTEXT = 128  # tokens in the cache when decode is timed


def measure_llm(folder: Path, compiled: dict, *, repeats: int = 16, top: int = DEFAULT_TOP,
                bandwidth_gbps: float | None = None, context: int = CONTEXT) -> dict[str, Any]:
    """{"target": "host", "shapes": {label: {...}}, "bandwidth_gbps", "bandwidth_source"}."""
    from edgefold.targets.tvm.llm.bandwidth import read_bandwidth_gbps
    from edgefold.targets.tvm.llm.session import LlmSession

    entries = [e for e in compiled["buckets"] if e.get("kind") == "llm"]
    session = LlmSession(folder, entries)
    source = "given"
    if bandwidth_gbps is None:
        import os

        bandwidth_gbps = read_bandwidth_gbps(threads=os.cpu_count() or 1)
        source = "measured on this machine (TVM streaming read, all cores)"
    shapes: dict[str, Any] = {}
    for entry in entries:
        if entry["function"] == "decode":
            ctx = min(context, session.slots - repeats - 1)
            times = session.decode_latency_ms(ctx, steps=max(repeats, 8))
            summary = {"kind": "measured", **summarize_ms(times), "tokens": 1, "context": ctx}
            summary["tokens_per_s"] = 1000.0 / summary["median_ms"]
            weight_bytes = int(entry["weight_bytes_per_token"])
            roofline_ms = weight_bytes / (bandwidth_gbps * 1e9) * 1e3
            summary.update(weight_bytes=weight_bytes, roofline_ms=roofline_ms,
                           vs_roofline=summary["median_ms"] / roofline_ms,
                           kernels=_kernels(session, entry, ctx, bandwidth_gbps, summary["median_ms"])[:top])
            shapes[entry["label"]] = summary
        else:
            times = session.prefill_latency_ms(int(entry["tokens"]), repeats=max(3, min(repeats, 5)))
            summary = {"kind": "measured", **summarize_ms(times), "tokens": int(entry["tokens"])}
            summary["tokens_per_s"] = summary["tokens"] / (summary["median_ms"] / 1e3)
            shapes[entry["label"]] = summary
    return {"target": "host", "library_kind": compiled["library_kind"], "shapes": shapes,
            "bandwidth_gbps": bandwidth_gbps, "bandwidth_source": source,
            "note": "per-kernel times: VM call instrument, its own cost per call measured and subtracted"}


def _kernels(session, entry: dict, context: int, bandwidth_gbps: float, step_ms: float) -> list[dict[str, Any]]:
    from edgefold.targets.tvm.kernel_times import kernel_timer

    repeats = 8
    session.reset()
    session.position = context
    with kernel_timer(session.decode_vm) as (totals, calls):
        start = time.perf_counter()
        for _ in range(repeats):
            session.position = context
            session.decode(1)
        instrumented_ms = (time.perf_counter() - start) * 1e3 / repeats
    all_calls = sum(calls.values()) / repeats
    overhead_ms = max(0.0, (instrumented_ms - step_ms) / max(all_calls, 1))
    weight_bytes = entry.get("kernel_weight_bytes", {})
    rows = []
    for name, seconds in totals.items():
        per_step_calls = calls[name] // repeats
        ms = max(0.0, seconds * 1e3 / repeats - overhead_ms * per_step_calls)
        row = {"name": name, "calls": per_step_calls, "ms": ms, "share": ms / step_ms}
        nbytes = int(weight_bytes.get(name, 0)) * per_step_calls
        if nbytes and ms > 0:
            row.update(bytes=nbytes, gbps=nbytes / (ms * 1e6), bandwidth_share=nbytes / (ms * 1e6) / bandwidth_gbps)
        rows.append(row)
    rows.sort(key=lambda r: -r["ms"])
    return rows


def decode_latency_ms(folder: Path, compiled: dict, repeats: int = 16, context: int = CONTEXT) -> dict[str, Any]:
    """The decode step alone (for gates): median/p90/min ms at `context` tokens."""
    from edgefold.targets.tvm.llm.session import LlmSession

    entries = [e for e in compiled["buckets"] if e.get("kind") == "llm"]
    session = LlmSession(folder, entries)
    ctx = min(context, session.slots - repeats - 1)
    times = session.decode_latency_ms(ctx, steps=max(repeats, 8))
    summary = {"kind": "measured", **summarize_ms(times), "tokens": 1, "context": ctx}
    summary["tokens_per_s"] = 1000.0 / summary["median_ms"]
    return summary

