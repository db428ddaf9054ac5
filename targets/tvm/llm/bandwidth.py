"""This machine's memory read bandwidth, measured the way the decode kernels read weights.

A TVM kernel streams a buffer larger than any cache with one thread per core (the
decode step's own thread count), summing 64-byte vectors: bytes / seconds is the
physical limit a weight-streaming decode step cannot beat, the denominator of the
roofline (weight bytes per token / bandwidth). numpy's single-threaded copy measures
less than two cores can read, so it is not used.
"""

from __future__ import annotations

import functools
import time

import numpy as np

MEGABYTES = 512


@functools.lru_cache(maxsize=4)
def _kernel(words: int, threads: int):
    import tvm
    from tvm.script import tirx as T

    from edgefold.targets.tvm.environment import host_target

    per = words // threads // 16

    @T.prim_func
    def stream(a: T.Buffer((words,), "int32"), out: T.Buffer((threads * 16,), "int32")):
        T.func_attr({"global_symbol": "stream", "tirx.noalias": True})
        for c in T.parallel(threads):
            acc = T.alloc_buffer((16,), "int32", scope="local")
            acc[T.ramp(0, 1, 16)] = T.broadcast(T.int32(0), 16)
            for i in range(per):
                acc[T.ramp(0, 1, 16)] = acc[T.ramp(0, 1, 16)] + a[T.ramp((c * per + i) * 16, 1, 16)]
            out[T.ramp(c * 16, 1, 16)] = acc[T.ramp(0, 1, 16)]

    target = host_target()
    return tvm.compile(tvm.IRModule({"stream": stream}), target=target)["stream"]


def read_bandwidth_gbps(threads: int, megabytes: int = MEGABYTES, repeats: int = 5) -> float:
    """Best of `repeats` streaming reads of a `megabytes` buffer with `threads` threads, in GB/s."""
    import tvm

    words = megabytes * 2**20 // 4
    words -= words % (threads * 16)
    data = tvm.runtime.tensor(np.ones(words, np.int32))
    out = tvm.runtime.tensor(np.zeros(threads * 16, np.int32))
    stream = _kernel(words, threads)
    stream(data, out)  # warm-up: pages touched, threads started
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        stream(data, out)
        best = min(best, time.perf_counter() - start)
    return words * 4 / best / 1e9
