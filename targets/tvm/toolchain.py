"""External tools a compile or run needs, and the Debian package that provides each."""

from __future__ import annotations

import re
import shutil

from edgefold.errors import EdgefoldError

_PACKAGES = {
    "g++": "g++",
    "gcc": "gcc",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-aarch64": "qemu-user",
    "nvcc": "nvidia-cuda-toolkit",
}


def debian_package(tool: str) -> str:
    """The Debian package for a tool name (cross compilers follow `<triple>-g++` -> `g++-<triple>`)."""
    if tool in _PACKAGES:
        return _PACKAGES[tool]
    match = re.fullmatch(r"([a-z0-9_]+-linux-gnu[a-z]*)-(g\+\+|gcc)", tool)
    if match:
        return f"{match.group(2)}-{match.group(1)}"
    return tool


def require(tool: str, why: str) -> str:
    """The path of `tool`, or an EdgefoldError naming the package to install."""
    path = shutil.which(tool)
    if path is None:
        package = debian_package(tool)
        raise EdgefoldError(f"{why} needs {tool}, which is not installed "
                            f"(Debian/Ubuntu: apt-get install {package})")
    return path


def available(tool: str) -> bool:
    """Whether `tool` is on the PATH."""
    return shutil.which(tool) is not None
