#!/usr/bin/env python
"""Fetch the aarch64 TVM runtime (libtvm_runtime.so, libtvm_ffi.so, headers) into the cache.

Downloads the manylinux aarch64 wheels of the installed apache-tvm / apache-tvm-ffi
versions with pip and extracts what the C++ runner links against, into
$EDGEFOLD_CACHE/aarch64-runtime/<versions>/. `edgefold compile --profile mobile-arm64`
does this on its own when needed; run this ahead of time (or with --wheels DIR on a
machine without network, pointing at wheels downloaded elsewhere).

    .venv/bin/python tools/fetch_aarch64_runtime.py [--wheels DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="folder that already holds the aarch64 wheels")
    args = parser.parse_args()
    from edgefold.errors import EdgefoldError
    from edgefold.targets.tvm.aarch64_runtime import fetch_runtime, versions

    try:
        folder = fetch_runtime(args.wheels)
    except EdgefoldError as exc:
        print(f"fetch_aarch64_runtime: error: {exc}", file=sys.stderr)
        return 2
    print(f"{folder} ({', '.join(f'{k} {v}' for k, v in versions().items())})")
    for library in sorted((folder / "lib").glob("*.so")):
        print(f"  lib/{library.name}  {library.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
