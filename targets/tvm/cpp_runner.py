"""Build the C++ runner (runner/runner.cc) for aarch64 or for this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgefold.errors import EdgefoldError
from edgefold.targets.tvm import toolchain

RUNNER_SOURCE = Path(__file__).parent / "runner" / "runner.cc"
BUILD_SCRIPT = """#!/bin/sh
# Build the runner on (or for) the device. RUNTIME holds lib/libtvm_runtime.so,
# lib/libtvm_ffi.so and include/ (see tools/fetch_aarch64_runtime.py).
set -e
CXX=${CXX:-g++}
RUNTIME=${RUNTIME:-runtime}
$CXX -std=c++17 -O2 runner.cc -I "$RUNTIME/include" -L "$RUNTIME/lib" -ltvm_runtime -ltvm_ffi \\
    -Wl,-rpath,'$ORIGIN/../runtime/lib' -o edgefold-runner
"""


def build_runner(output: Path, compiler: str, include_dirs: list[Path], lib_dirs: list[Path],
                 rpath: str = "$ORIGIN/../runtime/lib") -> Path:
    """Compile runner.cc with `compiler`; the binary finds the runtime through `rpath`."""
    compiler_path = toolchain.require(compiler, "building the C++ runner")
    command = [compiler_path, "-std=c++17", "-O2", str(RUNNER_SOURCE)]
    command += [f"-I{d}" for d in include_dirs] + [f"-L{d}" for d in lib_dirs]
    command += ["-ltvm_runtime", "-ltvm_ffi", f"-Wl,-rpath,{rpath}", "-o", str(output)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EdgefoldError(f"building the runner failed: {result.stderr.strip()[-400:]}")
    return output


def build_aarch64_runner(output: Path, runtime: Path, compiler: str = "aarch64-linux-gnu-g++") -> Path:
    """Cross-compile the C++ runner for aarch64 against a fetched aarch64 runtime; returns the binary."""
    return build_runner(output, compiler, [runtime / "include"], [runtime / "lib"])
