"""Which vector instructions a target has, and how a kernel template uses them.

Kernels are written once per shape of computation and specialised here by the target's
features (read from LLVM for the target's `mcpu`/`mattr`, so `mcpu=haswell` gives the
AVX2 code on any build machine):

| isa           | lanes | int8 dot product                                   |
|---------------|-------|----------------------------------------------------|
| avx512-vnni   | 16    | vpdpbusd (u8 x s8 -> s32, 4 products per lane)      |
|  + amx        |       | prefill GEMMs on AMX bf16 tiles (tdpbf16ps)         |
| avx512        | 16    | vpmaddubsw + vpmaddwd                               |
| avx2          | 8     | vpmaddubsw + vpmaddwd (256-bit)                     |
| neon-dotprod  | 4     | sdot (s8 x s8 -> s32)                               |
| neon, generic | 4/8   | none: low-bit weights are decoded to fp32 and FMA'd |

Weight rows are packed in groups of `ROWS` (16) for every CPU isa; a vector covers
`lanes` of them, so one packed weight file serves AVX-512, AVX2 and NEON alike.
"""

from __future__ import annotations

from dataclasses import dataclass

ROWS = 16  # output rows per packed group (a multiple of every isa's lanes)
ACT_BLOCK = 32  # activations are quantized to int8 per block of 32 inputs


@dataclass(frozen=True)
class Isa:
    """The vector features of a target a kernel is specialised for: lanes, int8 dot, AMX, threads."""

    name: str
    lanes: int  # fp32 / int32 lanes per vector
    int_dot: str  # "vnni512", "maddubs512", "maddubs256", "sdot" or "" (no int8 dot product)
    family: str  # "x86", "aarch64"
    cores: int = 1
    amx: bool = False  # Intel AMX bf16 tiles: the prefill GEMM runs on them (kernels/gemm_amx.py)

    @property
    def has_int_dot(self) -> bool:
        """Whether the isa has an int8 dot product instruction."""
        return bool(self.int_dot)

    def describe(self) -> str:
        """The isa in words: lanes, int8 dot instruction, AMX, threads."""
        dot = {"vnni512": "vpdpbusd", "maddubs512": "vpmaddubsw+vpmaddwd (512-bit)",
               "maddubs256": "vpmaddubsw+vpmaddwd (256-bit)", "sdot": "sdot", "": "none (fp32 FMA)"}[self.int_dot]
        tiles = ", AMX bf16 tiles for prefill" if self.amx else ""
        return f"{self.name}: {self.lanes} lanes, int8 dot {dot}{tiles}, {self.cores} threads"


def isa_for(target) -> Isa:
    """The kernel isa for an LLVM target (x86-64 or aarch64)."""
    from tvm.target import codegen

    def has(feature: str) -> bool:
        try:
            return bool(codegen.target_has_features(feature, target))
        except Exception:  # an unknown feature name for this architecture
            return False

    cores = int(target.attrs["num-cores"]) if "num-cores" in target.attrs else 1
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    if triple.startswith(("aarch64", "arm64")):
        if has("dotprod"):
            return Isa("neon-dotprod", 4, "sdot", "aarch64", cores)
        return Isa("neon", 4, "", "aarch64", cores)
    if has("avx512bw") and has("avx512f"):
        if has("avx512vnni"):
            return Isa("avx512-vnni", 16, "vnni512", "x86", cores, amx=has("amx-bf16") and has("amx-tile"))
        return Isa("avx512", 16, "maddubs512", "x86", cores)
    if has("avx2") and has("fma"):
        return Isa("avx2", 8, "maddubs256", "x86", cores)
    return Isa("x86-64", 4, "", "x86", cores)


def float_only(isa: Isa) -> Isa:
    """The same isa without int8 dot products (the fp32-activation kernels)."""
    return Isa(isa.name + "-fp32act", isa.lanes, "", isa.family, isa.cores, isa.amx)
