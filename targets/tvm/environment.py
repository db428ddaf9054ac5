"""Importing TVM quickly, and turning a device profile into a TVM target.

`import tvm.s_tir.tensor_intrin` (pulled in by MetaSchedule's tune context and its
default builder) registers every tensor intrinsic of every backend and takes about a
minute here, 45 s of it CUDA's. A compile for one target needs at most its own
family, so the others are replaced by empty modules before anything imports them.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

# Which intrinsic modules each target family actually uses.
_INTRINSICS = ("cuda", "rocm", "hexagon", "metal", "arm_cpu", "riscv_cpu", "x86")
_NEEDED = {"x86": {"x86"}, "aarch64": {"arm_cpu"}, "cuda": {"cuda"}}


def target_family(target: dict[str, Any]) -> str:
    """The family of a profile's TVM target: "cuda", "aarch64" or "x86"."""
    if target.get("kind") == "cuda":
        return "cuda"
    triple = str(target.get("mtriple", ""))
    return "aarch64" if triple.startswith("aarch64") or triple.startswith("arm64") else "x86"


def skip_tensor_intrinsics(family: str) -> None:
    """Stand empty modules in for the intrinsic sets this target family does not need."""
    keep = _NEEDED.get(family, set())
    for name in _INTRINSICS:
        full = f"tvm.s_tir.tensor_intrin.{name}"
        module = sys.modules.get(full)
        if name not in keep and module is None:
            sys.modules[full] = types.ModuleType(full)
        elif name in keep and module is not None and getattr(module, "__file__", None) is None:
            del sys.modules[full]  # stubbed by an earlier compile for another family: import it for real


def load_tvm(family: str = "x86"):
    """`tvm`, imported with only the intrinsics `family` needs (safe to call repeatedly)."""
    skip_tensor_intrinsics(family)
    import tvm  # noqa: F401  (deliberately late: 3 s of import)

    return tvm


def tvm_target(profile_target: dict[str, Any]):
    """A `tvm.target.Target` from a profile's JSON dict; llvm on x86 gets this CPU when unset."""
    tvm = load_tvm(target_family(profile_target))
    spec = dict(profile_target)
    if spec.get("kind") == "llvm" and target_family(spec) == "x86" and "mcpu" not in spec:
        spec["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    return tvm.target.Target(spec)


def host_target():
    """The target for work that runs on this machine (weight transforms, reference runs)."""
    tvm = load_tvm("x86")
    return tvm.target.Target({"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu()),
                              "num-cores": os.cpu_count() or 1})
