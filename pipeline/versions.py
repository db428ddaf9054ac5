"""The versions of the tools that decide what edgefold writes, in one place.

Each stage keys its caches (and the build its reuse hash) on the tools that decide its output:
- export: torch, transformers, onnx, onnxscript, onnx_ir (the exported ONNX);
- compile: apache-tvm, apache-tvm-ffi, onnx, onnxruntime (the libraries, and the checks
  against onnxruntime);
- build: the export tools plus onnxruntime, which computes every stored metric.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def export_versions() -> dict[str, str]:
    """Versions of the tools that turn a model into ONNX (keys as the export cache stores them)."""
    import onnx
    import onnx_ir
    import onnxscript
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnx_ir": onnx_ir.__version__}


def compile_versions() -> dict[str, str]:
    """Versions of the packages that decide what a compiled library contains ("missing" if absent)."""
    found = {}
    for package in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


def build_versions() -> dict[str, str]:
    """What a build's reuse hash covers: the export tools and onnxruntime, which measures every metric."""
    import onnxruntime

    return {**export_versions(), "onnxruntime": onnxruntime.__version__}
