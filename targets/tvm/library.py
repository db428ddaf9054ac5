"""Build the device library (host, aarch64 cross, CUDA) and run the weight transform.

- host / any x86 llvm target: `export_library` with the host g++.
- aarch64 (`mobile-arm64`): the profile's cross compiler (Debian's
  `g++-aarch64-linux-gnu`); the result is an aarch64 ELF needing only libc/libm and the
  TVM runtime.
- CUDA (`server-gpu`): an x86-64 library whose device code is CUDA C embedded in it,
  compiled for the GPU when loaded (NVRTC, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc).
  When nvcc is installed the same kernels are also compiled offline to a fatbin for
  the profile's architecture, so a deployment can check they build before any GPU.
Tuning records are applied when a database is given; kernels without a record keep
the default schedule (naive loops on CPU, dlight's rules on GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefold.errors import EdgefoldError
from edgefold.targets.tvm import toolchain
from edgefold.targets.tvm.environment import host_target


@dataclass
class BuiltLibrary:
    """A built library: its file, kind (x86_64, aarch64, cuda), extra files, build time and notes."""

    path: Path
    kind: str  # "x86_64", "aarch64", "cuda"
    extra: list[Path] = field(default_factory=list)  # e.g. the CUDA fatbin
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def library_kind(target) -> str:
    """The kind of library a TVM target builds: "x86_64", "aarch64" or "cuda"."""
    if target.kind.name == "cuda":
        return "cuda"
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    return "aarch64" if triple.startswith(("aarch64", "arm64")) else "x86_64"


def check_toolchain(profile, kind: str) -> None:
    """Fail early, before any tuning, when the compiler a profile needs is missing."""
    if kind == "aarch64":
        toolchain.require(profile.cross_compiler or "aarch64-linux-gnu-g++", f"profile {profile.name!r}")
    else:
        toolchain.require("g++", f"profile {profile.name!r}")


def compile_executable(device_mod, target, database=None):
    """relax.build with the database's schedules applied (`database` may be None)."""
    import tvm
    from tvm import relax

    mod = device_mod
    if database is not None:
        with target, database, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    with tvm.transform.PassContext(opt_level=3):
        return tvm.compile(mod, target=target)


def export(executable, target, profile, path: Path) -> BuiltLibrary:
    """Write the shared library for the profile's device."""
    from tvm.support import cc

    start = time.perf_counter()
    kind = library_kind(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = BuiltLibrary(path, kind)
    if kind == "aarch64":
        compiler = toolchain.require(profile.cross_compiler or "aarch64-linux-gnu-g++", f"profile {profile.name!r}")
        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))
    else:
        toolchain.require("g++", f"profile {profile.name!r}")
        executable.export_library(str(path))
    if kind == "cuda":
        fatbin = _cuda_fatbin(executable, target, path.with_suffix(".fatbin"))
        if fatbin is not None:
            built.extra.append(fatbin)
        else:
            built.notes.append("nvcc not installed: no offline fatbin (the library compiles its CUDA at load)")
    built.seconds = round(time.perf_counter() - start, 2)
    return built


def cuda_source(executable) -> str:
    """The CUDA C embedded in a built CUDA executable."""
    module = executable.mod if hasattr(executable, "mod") else executable
    for imported in _all_imports(module):
        if imported.kind == "cuda":
            return imported.inspect_source()
    raise EdgefoldError("the CUDA build holds no CUDA module")


def _all_imports(module):
    found, stack = [], list(module.imports)
    while stack:
        item = stack.pop()
        found.append(item)
        stack.extend(item.imports)
    return found


def _cuda_fatbin(executable, target, path: Path) -> Path | None:
    if not toolchain.available("nvcc"):
        return None
    from tvm.support import nvcc

    arch = str(target.attrs.get("arch", "sm_90"))
    with target:  # nvcc's helpers read the architecture from the current target
        data = nvcc.compile_cuda(cuda_source(executable), target_format="fatbin", arch=arch, compiler="nvcc")
    path.write_bytes(bytes(data))
    return path


def transform_weights(transform_mod, weights: list[np.ndarray]) -> list[np.ndarray]:
    """Run `main_transform_params` once on this machine (weights for any target are host-made)."""
    import tvm
    from tvm import relax

    target = host_target()
    with tvm.transform.PassContext(opt_level=3):
        executable = tvm.compile(transform_mod, target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    outputs = vm["main_transform_params"]([tvm.runtime.tensor(w) for w in weights])
    return [np.require(t.numpy(), requirements="C") for t in outputs]
