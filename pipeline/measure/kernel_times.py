"""Where a decode step of the build's compiled LLM spends its time, for report.html.

Runs inside every build that compiles an LLM for this machine, so it is kept short: the
decode step only (prefill latency is already in compile-report.json), a few instrumented
steps, and the best of 3 streaming reads for the bandwidth the kernels are measured against.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgefold import progress
from edgefold.errors import EdgefoldError

REPEATS = 8  # decode steps timed (and again instrumented); seconds in all on SmolLM2


def llm_kernel_times(folder: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Per-kernel ms, GB/s and share of the read bandwidth of the decode step, against the
    roofline; None when the artifact holds no LLM library this machine can run."""
    compiled = manifest.get("compile") or {}
    decode = [e for e in compiled.get("buckets", []) if e.get("kind") == "llm" and e.get("function") == "decode"]
    if compiled.get("library_kind") != "x86_64" or not decode:
        return None
    from edgefold.targets.tvm.llm.bandwidth import read_bandwidth_gbps
    from edgefold.targets.tvm.llm.latency import measure_llm

    threads = os.cpu_count() or 1
    try:
        with progress.step("profile the decode step per kernel"):
            bandwidth = read_bandwidth_gbps(threads=threads, repeats=3)
            result = measure_llm(Path(folder), {**compiled, "buckets": decode}, repeats=REPEATS, top=64,
                                 bandwidth_gbps=bandwidth)
    except (EdgefoldError, RuntimeError, OSError) as exc:  # a report section is not worth the artifact
        progress.info(f"no per-kernel profile in the report: {exc}")
        return None
    step = result["shapes"][decode[0]["label"]]
    # vm.builtin.* are the VM's own bookkeeping (allocation, shape checks), not kernels
    kernels = [k for k in step["kernels"] if not k["name"].startswith("vm.builtin.")]
    return {"isa": decode[0].get("isa"), "context": step["context"], "repeats": step["repeats"], "step_ms": step["median_ms"],
            "weight_bytes": step["weight_bytes"], "roofline_ms": step["roofline_ms"],
            "vs_roofline": step["vs_roofline"], "bandwidth_gbps": bandwidth,
            "bandwidth_source": f"measured on this machine (TVM streaming read, {threads} threads, best of 3)",
            "kernels_ms": sum(k["ms"] for k in kernels), "kernels": kernels, "note": result["note"]}
