"""Analytic latency for a device with nothing attached: a per-layer roofline.

Each weighted layer costs max(bytes it reads / DRAM bandwidth, 2 x MACs / peak
compute) on the profile's numbers. Real kernels fall short of both peaks, so the sum is
scaled by a calibration factor measured on the host (measured host latency divided by
the same roofline evaluated with the host profile): the estimate inherits the host's
efficiency, and the report says it is an estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from edgefold.timing import DEFAULT_TOP


@dataclass
class KernelEstimate:
    """Roofline cost of one weighted layer: bytes read, FLOPs, ms, and whether memory or compute bounds it."""

    name: str
    kind: str
    bytes: float
    flops: float
    ms: float
    bound: str  # "memory" or "compute"


def _bytes_read(row, tokens: int) -> float:
    if row.kind == "embedding":  # a lookup reads one row per token, not the table
        width = row.shape[-1] if row.shape else 0
        per_element = row.bytes / max(row.params, 1)
        return tokens * width * per_element
    return float(row.bytes)


def roofline(layers, profile, *, tokens: int = 1, precision: str = "fp32") -> list[KernelEstimate]:
    """Per-layer estimates (uncalibrated) for `tokens` tokens (or images) per forward pass."""
    bandwidth = profile.dram.bandwidth_gbps * 1e9
    peak = profile.peak_gflops.get(precision) or profile.peak_gflops.get("fp32") or 1.0
    kernels = []
    for row in layers:
        if not row.params:
            continue
        moved = _bytes_read(row, tokens)
        flops = 2.0 * row.macs * tokens
        memory_s, compute_s = moved / bandwidth, flops / (peak * 1e9)
        kernels.append(KernelEstimate(row.label or row.name, row.kind, moved, flops,
                                      1e3 * max(memory_s, compute_s), "memory" if memory_s >= compute_s else "compute"))
    return kernels


def estimate(layers, profile, *, tokens: int = 1, calibration: float = 1.0, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Estimated latency report for `profile`: calibrated total ms and the `top` slowest layers with their share."""
    kernels = roofline(layers, profile, tokens=tokens)
    total = sum(k.ms for k in kernels) * calibration
    ranked = sorted(kernels, key=lambda k: -k.ms)
    return {
        "kind": "estimated",
        "profile": profile.name,
        "median_ms": total,
        "calibration": calibration,
        "tokens": tokens,
        "bytes": sum(k.bytes for k in kernels),
        "kernels": [{**asdict(k), "ms": k.ms * calibration, "share": k.ms / max(sum(x.ms for x in kernels), 1e-12)}
                    for k in ranked[:top]],
    }
