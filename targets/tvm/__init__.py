"""Compiling models with Apache TVM for a device profile.

One module per concern, in the order a compile runs through them:
`buckets` (static shapes) -> `lowbit` (low-bit weight formats made importable) ->
`importer` (ONNX -> Relax, with `converters` for what the stock importer lacks) ->
`lowering` (decode+matmul fusion, the Relax pipeline) -> `tuning` (MetaSchedule with a
reusable database) -> `build` (host, aarch64 cross and CUDA libraries) -> `weights`
(the packed weight file) -> `artifact` (the deployable folder and its manifest) ->
`execute` (`edgefold run`: host VM or qemu-aarch64, compared with onnxruntime).

Importing this package does not import TVM; the heavy import happens on first use.
"""

from __future__ import annotations

import os

# TVM sizes its thread pool from the machine's core count, not from the CPUs this process may
# use: in a 2-CPU container on a large host it starts dozens of threads that fight over two
# cores (decode 11 ms instead of 4 ms). Before TVM is first imported, default to the CPUs we have.
if hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

__all__ = ["compile_model", "run_artifact"]


def compile_model(*args, **kwargs):
    """Compile a model for a device profile (`artifact.compile_model`); TVM is imported on first use."""
    from edgefold.targets.tvm.artifact import compile_model as _compile

    return _compile(*args, **kwargs)


def run_artifact(*args, **kwargs):
    """Run a compiled artifact (`execute.run_artifact`); TVM is imported on first use."""
    from edgefold.targets.tvm.execute import run_artifact as _run

    return _run(*args, **kwargs)
