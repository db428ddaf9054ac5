"""Per-kernel time of one call of a host library, from the Relax VM's call instrument.

The VM calls the instrument before and after every kernel it launches; the time
between the two is that kernel's wall time (plus a few microseconds of callback),
summed per kernel over `repeats` calls. What is left of the call's total is VM
overhead (allocation, argument passing).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def kernel_timer(vm) -> Iterator[tuple[dict[str, float], dict[str, int]]]:
    """While active, sums each kernel's wall seconds and counts its calls on this VM:
    yields (seconds by kernel, calls by kernel), filled as the VM runs."""
    import tvm

    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []

    def instrument(func, symbol, before, ret, *args):
        if before:
            started.append(time.perf_counter())
        else:
            totals[symbol] += time.perf_counter() - started.pop()
            calls[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: let the call run

    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    try:
        yield totals, calls
    finally:
        vm.set_instrument(None)


def kernel_times(library, feeds: dict[str, np.ndarray], repeats: int = 3) -> dict:
    """{"total_ms", "kernels": [{"name", "ms", "calls", "share"}] sorted by time} per call."""
    import tvm

    args = [tvm.runtime.tensor(np.require(feeds[n], requirements="C")) for n in library.input_names]
    main = library.vm["main"]
    main(*args, *library.weights)  # warm-up, uninstrumented
    with kernel_timer(library.vm) as (totals, calls):
        start = time.perf_counter()
        for _ in range(repeats):
            main(*args, *library.weights)
        total = (time.perf_counter() - start) / repeats
    kernels = [{"name": name, "ms": 1e3 * seconds / repeats, "calls": calls[name] // repeats}
               for name, seconds in totals.items()]
    kernels.sort(key=lambda k: -k["ms"])
    for kernel in kernels:
        kernel["share"] = kernel["ms"] / (1e3 * total)
    return {"total_ms": 1e3 * total, "kernels": kernels}
