"""The aarch64 TVM runtime, taken from the official manylinux aarch64 wheels.

The runner that ships in a mobile artifact links against `libtvm_runtime.so` and
`libtvm_ffi.so` built for aarch64. Rather than cross-building TVM, we take them from the
apache-tvm / apache-tvm-ffi wheels of the same versions as the installed compiler
(pip's ordinary `download`), and keep the two libraries plus the headers in
`$EDGEFOLD_CACHE/aarch64-runtime/<versions>/`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

from edgefold import progress
from edgefold.atomic import cache_directory, cache_root
from edgefold.errors import EdgefoldError

PLATFORM = "manylinux_2_28_aarch64"
LIBRARIES = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}
HEADERS = {"apache-tvm": "tvm/include/", "apache-tvm-ffi": "tvm_ffi/include/"}


def versions() -> dict[str, str]:
    """Installed version of each TVM wheel the aarch64 runtime is taken from (package -> version)."""
    return {package: version(package) for package in LIBRARIES}


def runtime_dir() -> Path:
    """The cache folder of the aarch64 runtime for the installed TVM versions."""
    tag = "-".join(f"{p}-{v}" for p, v in versions().items())
    return cache_root() / "aarch64-runtime" / tag


def is_fetched() -> bool:
    """Whether the aarch64 runtime libraries for the installed TVM versions are already in the cache."""
    folder = runtime_dir()
    return all((folder / "lib" / Path(member).name).exists() for member in LIBRARIES.values())


def fetch_runtime(wheel_dir: Path | None = None) -> Path:
    """Download (or use wheels already in `wheel_dir`) and extract; returns the runtime folder."""
    folder = runtime_dir()
    if is_fetched():
        return folder
    with tempfile.TemporaryDirectory(prefix="edgefold-wheels-") as scratch:
        source = Path(wheel_dir) if wheel_dir else Path(scratch)
        wheels = {p: _find_wheel(source, p) for p in LIBRARIES}
        missing = [f"{p}=={v}" for p, v in versions().items() if wheels[p] is None]
        if missing:
            with progress.step(f"download the aarch64 wheels of {', '.join(missing)}"):
                _pip_download(missing, source)
            wheels = {p: _find_wheel(source, p) for p in LIBRARIES}
        with cache_directory(folder) as staging:
            for package, wheel in wheels.items():
                if wheel is None:
                    raise EdgefoldError(f"no {PLATFORM} wheel of {package} was downloaded")
                _extract(wheel, LIBRARIES[package], HEADERS[package], staging)
    return folder


def _find_wheel(folder: Path, package: str) -> Path | None:
    stem = package.replace("-", "_") + "-" + version(package) + "-"
    matches = sorted(p for p in folder.glob("*.whl") if p.name.startswith(stem) and "aarch64" in p.name)
    return matches[0] if matches else None


def _pip_download(requirements: list[str], destination: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", PLATFORM, "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
               "-d", str(destination), *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise EdgefoldError("could not download the aarch64 TVM runtime wheels "
                            f"({last[-1] if last else 'pip failed'}); run tools/fetch_aarch64_runtime.py "
                            "--wheels DIR with wheels downloaded elsewhere")


def _extract(wheel: Path, library: str, headers: str, folder: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (folder / "lib").mkdir(exist_ok=True)
        with archive.open(library) as source, open(folder / "lib" / Path(library).name, "wb") as target:
            shutil.copyfileobj(source, target)
        include = (folder / "include").resolve()
        for member in archive.namelist():
            if member.startswith(headers) and not member.endswith("/"):
                destination = folder / "include" / member[len(headers):]
                if include not in destination.resolve().parents:  # a crafted wheel's "../" member
                    raise EdgefoldError(f"{wheel.name}: member {member!r} would be written outside {include}")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "wb") as target:
                    shutil.copyfileobj(source, target)
