"""Timing helpers every measurement uses: timed calls, their summary (median, p90, min), and a
model's latency in onnxruntime on this machine (the baseline every target is compared with)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from edgefold import onnx_io

DEFAULT_TOP = 15  # kernels (or onnxruntime nodes) listed per timed shape


def time_calls(call, repeats: int, warmup: int = 1) -> list[float]:
    """Milliseconds of `repeats` calls of `call`, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize_ms(times: list[float]) -> dict[str, float]:
    """Median / p90 / min of timed calls, the figures every latency report carries."""
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered), "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "min_ms": ordered[0], "repeats": len(ordered)}


def measure_onnxruntime(path: Path, feeds: dict[str, np.ndarray], *, repeats: int = 10, warmup: int = 2,
                        threads: int | None = None) -> dict[str, float]:
    """Median / p90 / min milliseconds of one forward pass on `feeds`."""
    session = onnx_io.session(path, threads=threads)
    return summarize_ms(time_calls(lambda: onnx_io.run(session, feeds), repeats, warmup))
