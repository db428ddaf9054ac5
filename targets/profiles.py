"""Device profiles: TOML data files validated by one schema.

A profile says what the passes may do on a device (weight formats, memory budget) and
how the compiler should target it (TVM target, cross compiler, tuning budget). Built-in
profiles live in `targets/profiles/*.toml`; users point at their own file or drop one
into a folder named by EDGEFOLD_PROFILES.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic

from edgefold.errors import EdgefoldError

BUILTIN_DIR = Path(__file__).parent / "profiles"
WeightFormat = Literal["fp32", "fp16", "int8", "int4", "fp8"]


class MemorySpec(pydantic.BaseModel):
    """One memory of a device (DRAM or flash): size, sustained read bandwidth, optional weight budget."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    size_gb: float = pydantic.Field(gt=0)
    bandwidth_gbps: float = pydantic.Field(gt=0, description="sustained read bandwidth, GB/s")
    kind: str = ""
    # DRAM an app may fill with model weights (phones share DRAM with the OS and other
    # apps); weights beyond it stream from flash. Optional: only `edgefold simulate` reads it.
    weight_budget_gb: float | None = pydantic.Field(default=None, gt=0)


class DeviceProfile(pydantic.BaseModel):
    """A target device as its profile TOML describes it: TVM target, cores, memories, peak compute, formats."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    tvm_target: dict[str, Any]  # a TVM target as a JSON dict
    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-g++"; None = host toolchain
    cores: int = pydantic.Field(ge=1)
    dram: MemorySpec
    flash: MemorySpec | None = None  # phones: weights may stream from flash
    peak_gflops: dict[str, float] = pydantic.Field(default_factory=dict)  # per precision
    weight_formats: list[WeightFormat] = pydantic.Field(default_factory=lambda: ["fp32", "int8", "int4"])
    tuning_trials: int = pydantic.Field(default=64, ge=0)
    channel_multiple: int = pydantic.Field(default=8, ge=1, description="preferred width multiple for pruning")

    @pydantic.field_validator("tvm_target")
    @classmethod
    def _target_has_kind(cls, target: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in target:
            raise ValueError("tvm_target needs a 'kind' (llvm, cuda, ...)")
        return target


def profile_figures(profile: DeviceProfile) -> dict[str, str]:
    """The numbers that decide a deployment, for `edgefold targets`."""
    target = profile.tvm_target
    words = [str(target["kind"])] + [str(target[key]) for key in ("mtriple", "mcpu", "arch") if target.get(key)]
    figures = {"target": " ".join(words),
               "cores": str(profile.cores),
               "DRAM": f"{profile.dram.size_gb:g} GB at {profile.dram.bandwidth_gbps:g} GB/s"}
    if profile.dram.weight_budget_gb:
        figures["weights budget"] = f"{profile.dram.weight_budget_gb:g} GB"
    if profile.flash:
        figures["flash"] = f"{profile.flash.bandwidth_gbps:g} GB/s"
    if profile.peak_gflops:
        figures["peak GFLOP/s"] = ", ".join(f"{k} {v:g}" for k, v in profile.peak_gflops.items())
    figures["formats"] = ", ".join(profile.weight_formats)
    figures["channel multiple"] = str(profile.channel_multiple)
    figures["tuning trials"] = str(profile.tuning_trials)
    figures["cross compiler"] = profile.cross_compiler or "host"
    return figures


def _search_dirs() -> list[Path]:
    extra = os.environ.get("EDGEFOLD_PROFILES")
    dirs = [Path(p) for p in extra.split(os.pathsep) if p] if extra else []
    return dirs + [BUILTIN_DIR]


def available_profiles() -> dict[str, Path]:
    """Profile name -> TOML file, from $EDGEFOLD_PROFILES folders and the built-ins (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in reversed(_search_dirs()):  # earlier folders override built-ins
        for path in sorted(folder.glob("*.toml")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def load_profile_file(path: Path) -> DeviceProfile:
    """The DeviceProfile in a TOML file, `detect` values filled in from this machine; EdgefoldError if bad."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgefoldError(f"profile file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgefoldError(f"profile {path} is not valid TOML: {exc}") from None
    data.setdefault("name", Path(path).stem)
    target = data.get("tvm_target", {})
    if target.get("mcpu") == "detect":
        target = {**target, "mcpu": _host_cpu()}
        extra = [f for f in _host_tile_features() if f not in target.get("mattr", [])]
        if extra:
            target["mattr"] = list(target.get("mattr", [])) + extra
    if target.get("num-cores") == "detect":
        target = {**target, "num-cores": os.cpu_count() or 1}
    if target:
        data["tvm_target"] = target
    if data.get("cores") == "detect":
        data["cores"] = os.cpu_count() or 1
    try:
        return DeviceProfile(**data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise EdgefoldError(f"bad profile {path}: {problems}") from None


def load_profile(name_or_path: str) -> DeviceProfile:
    """A profile by built-in name, or from a .toml path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml":
        return load_profile_file(candidate)
    profiles = available_profiles()
    if name_or_path not in profiles:
        raise EdgefoldError(f"unknown profile {name_or_path!r} (available: {', '.join(profiles)})")
    return load_profile_file(profiles[name_or_path])


# CPU flags (/proc/cpuinfo) -> LLVM features that LLVM's CPU name can miss: under a hypervisor
# a Sapphire Rapids Xeon reports a model number LLVM calls "rocketlake", which has no AMX.
_TILE_FLAGS = {"amx_tile": "+amx-tile", "amx_bf16": "+amx-bf16", "avx512_bf16": "+avx512bf16"}


def _host_tile_features(cpuinfo: str | None = None) -> list[str]:
    """LLVM `mattr` entries for the matrix (AMX) features this CPU has, from the kernel's flags
    (which Linux lists only when it can give processes the tile state)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
        if not _tile_state_granted():
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not {"amx_tile", "amx_bf16"} <= flags:
        return []
    return [feature for flag, feature in _TILE_FLAGS.items() if flag in flags]


@functools.lru_cache(maxsize=1)  # a process keeps the answer; profiles load several times per build
def _tile_state_granted() -> bool:
    """Whether Linux gives this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM,
    kernel 5.16+; refused e.g. when a signal stack is too small for it). The compiled kernels
    ask again themselves; asking here keeps a machine that would refuse on the vector kernels."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(ctypes.c_long(158), ctypes.c_long(0x1023), ctypes.c_long(18)) == 0
    except (OSError, AttributeError):
        return False


def _host_cpu() -> str:
    """The LLVM name of this CPU (TVM knows it; without TVM, plain x86-64)."""
    try:
        import tvm  # noqa: F401  (heavy import only when a profile asks to detect)

        return str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception:
        return "x86-64"
