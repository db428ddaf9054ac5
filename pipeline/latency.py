"""Latency of a model in onnxruntime on this machine (the baseline every target is compared with)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from edgefold import onnx_io


def measure_onnxruntime(path: Path, feeds: dict[str, np.ndarray], *, repeats: int = 10, warmup: int = 2,
                        threads: int | None = None) -> dict[str, float]:
    """Median / p90 / min milliseconds of one forward pass on `feeds`."""
    session = onnx_io.session(path, threads=threads)
    for _ in range(warmup):
        onnx_io.run(session, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        onnx_io.run(session, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "min_ms": times[0], "repeats": repeats}
