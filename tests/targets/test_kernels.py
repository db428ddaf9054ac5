"""Every hand-scheduled LLM kernel against numpy, on random shapes that are not multiples of the
vector length or the block, for the int8-dot (AVX-512 VNNI), AVX2 (`mcpu` haswell, tested here
even on an AVX-512 machine) and fp32-activation code paths."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from edgefold.targets.tvm.kernels.gemm import GemmSpec, build_gemm  # noqa: E402
from edgefold.targets.tvm.kernels.gemv import OFFSET_SLOTS, GemvSpec, build_gemv  # noqa: E402
from edgefold.targets.tvm.kernels.isa import ACT_BLOCK, Isa, float_only, isa_for  # noqa: E402
from edgefold.targets.tvm.kernels.packing import Blob, add_packed, pack, padded_k  # noqa: E402
from edgefold.targets.tvm.llm.stored_weight import SideTensor, StoredWeight  # noqa: E402



def _target(name: str):
    mcpu = {"avx512-vnni": "icelake-server", "avx512": "skylake-avx512", "avx2": "haswell"}[name]
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})


def _runs_here(isa: Isa) -> bool:
    """Code for an isa this CPU lacks can be built but not run."""
    from tvm.target import codegen

    host = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    needed = {"avx512-vnni": ["avx512vnni", "avx512bw"], "avx512": ["avx512bw"], "avx2": ["avx2", "fma"]}
    return all(codegen.target_has_features(f, host) for f in needed.get(isa.name.removesuffix("-fp32act"), []))


def int_weight(rng, n, k, *, bits=4, block=32, scale="f32", offset="min") -> StoredWeight:
    kb = -(-k // block) if block else 1
    codes = rng.integers(0, 16 if bits == 4 else 256, size=(n, k)).astype(np.uint8)
    s = (rng.random((n, kb)) * 0.02 + 0.001).astype(np.float32)
    if scale == "f16":
        side = SideTensor(s.astype(np.float16).astype(np.float32), "f16")
    elif scale == "u8":
        step = (rng.random(n) * 1e-4 + 1e-5).astype(np.float32)
        c = rng.integers(0, 256, size=(n, kb)).astype(np.uint8)
        side = SideTensor((c.astype(np.float32) * step[:, None]).astype(np.float32), "u8", c, step, None)
    else:
        side = SideTensor(s, "f32")
    bias = 8 if bits == 4 else 128
    zero = minimum = None
    if offset == "zero":
        zero, bias = rng.integers(0, 16 if bits == 4 else 256, size=(n, kb)).astype(np.uint8), 0
    elif offset == "min":
        minimum = SideTensor((rng.standard_normal((n, kb)) * 0.01).astype(np.float32), "f32")
    return StoredWeight("w", n, k, "int", codes, bits, block or k, bias, side, zero, minimum)


def float_weight(rng, n, k, kind) -> StoredWeight:
    if kind == "fp32":
        return StoredWeight("f", n, k, "fp32", rng.standard_normal((n, k)).astype(np.float32))
    if kind == "fp16":
        return StoredWeight("f", n, k, "fp16", rng.standard_normal((n, k)).astype(np.float16))
    import ml_dtypes

    bits = (rng.standard_normal((n, k)) * 3).astype(ml_dtypes.float8_e4m3fn).view(np.uint8).copy()
    bits[0, :8] = np.arange(8)  # subnormals
    bits[(bits & 0x7F) == 0x7F] &= 0xFE  # no NaN codes
    return StoredWeight("f", n, k, "fp8", bits)


def _activation(src: np.ndarray, prologue: str, k: int, norm: np.ndarray) -> np.ndarray:
    if prologue == "norm":
        return (norm * (src[:k] * np.float32(1 / np.sqrt(np.mean(src[:k].astype(np.float64) ** 2) + 1e-5)))
                ).astype(np.float32)
    if prologue == "swiglu":
        g = src[:k].astype(np.float64)
        return (g / (1 + np.exp(-g)) * src[k:2 * k]).astype(np.float32)
    return src[:k]


def _reference(w: StoredWeight, v: np.ndarray, int_act: bool) -> np.ndarray:
    """float64 result of the kernel's arithmetic: with int8 activations, the weights times x
    rounded to int8 per block of 32 (step = block max / 127)."""
    dense = w.dequantize().astype(np.float64)
    if not int_act:
        return dense @ v.astype(np.float64)
    kp = padded_k(w.k)
    padded = np.zeros(kp, np.float32)
    padded[:w.k] = v
    blocks = padded.reshape(-1, ACT_BLOCK)
    amax = np.abs(blocks).max(1)
    inverse = np.where(amax > 0, 127 / np.where(amax > 0, amax, 1), 0)
    rounded = (np.rint(blocks * inverse[:, None]) * (amax / 127)[:, None]).reshape(-1)[:w.k]
    return dense @ rounded.astype(np.float64)


def _run_gemv(isa, w, prologue, *, accumulate=False, bias=False, rng):
    n, k = w.n, w.k
    src = rng.standard_normal(2 * k if prologue == "swiglu" else k).astype(np.float32)
    norm = (rng.random(k) + 0.5).astype(np.float32)
    bias_values = rng.standard_normal(n).astype(np.float32) if bias else None
    packed = pack(w, bias_values)
    blob = Blob()
    offsets = {**add_packed(blob, packed), "norm": blob.add(norm), "src_off": 0, "y_off": 3}
    before = rng.standard_normal(n + 5).astype(np.float32)
    spec = GemvSpec(isa, packed.fmt, n, k, prologue, src.size, n + 5, accumulate, bias)
    library = tvm.compile(tvm.IRModule({spec.name: build_gemv(spec)}), target=_target(isa.name.removesuffix("-fp32act")))
    y = tvm.runtime.tensor(before.copy())
    library[spec.name](tvm.runtime.tensor(src), tvm.runtime.tensor(blob.bytes()),
                       *[offsets.get(name, 0) for name in OFFSET_SLOTS], y)
    out = y.numpy()
    want = _reference(w, _activation(src, prologue, k, norm), spec.uses_int_dot)
    if bias:
        want = want + bias_values
    if accumulate:
        want = want + before[3:3 + n]
    np.testing.assert_array_equal(out[:3], before[:3])  # nothing written outside its rows
    np.testing.assert_array_equal(out[3 + n:], before[3 + n:])
    return float(np.abs(out[3:3 + n] - want).max() / np.abs(want).max())


ISAS = ["avx512-vnni", "avx2"]


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("n, k, bits, block, scale, offset", [
    (100, 70, 4, 32, "u8", "min"),      # rows and inputs not multiples of 16 / 32
    (37, 160, 4, 64, "f16", "zero"),
    (48, 100, 4, 0, "f32", "bias"),     # one scale per row, K not a multiple of the block
    (21, 64, 8, 0, "f32", "bias"),      # int8 per channel (fp32 activations on AVX2: no overflow)
    (33, 96, 8, 32, "f16", "zero"),
])
def test_gemv_matches_numpy(isa_name, n, k, bits, block, scale, offset):
    isa = isa_for(_target(isa_name))
    if not _runs_here(isa):
        pytest.skip(f"this CPU cannot run {isa.name} code")
    rng = np.random.default_rng(n * 1000 + k)
    w = int_weight(rng, n, k, bits=bits, block=block, scale=scale, offset=offset)
    for prologue, accumulate, bias in (("norm", False, False), ("swiglu", True, True)):
        assert _run_gemv(isa, w, prologue, accumulate=accumulate, bias=bias, rng=rng) < 3e-5
    assert _run_gemv(float_only(isa), w, "plain", rng=rng) < 3e-5  # the exact fp32-activation kernel


@pytest.mark.parametrize("kind", ["fp32", "fp16", "fp8"])
def test_float_gemv_matches_numpy(kind):
    isa = isa_for(_target("avx2"))
    rng = np.random.default_rng(7)
    for n, k in ((100, 70), (16, 33)):
        assert _run_gemv(isa, float_weight(rng, n, k, kind), "norm", rng=rng) < 3e-5


@pytest.mark.parametrize("isa_name", ISAS)
def test_gemm_matches_numpy(isa_name):
    isa = isa_for(_target(isa_name))
    if not _runs_here(isa):
        pytest.skip(f"this CPU cannot run {isa.name} code")
    rng = np.random.default_rng(11)
    cases = [(int_weight(rng, 100, 70, scale="u8", offset="min"), 13, "norm"),
             (int_weight(rng, 37, 96, bits=8, block=0, offset="bias"), 5, "swiglu"),
             (float_weight(rng, 40, 33, "fp16"), 7, "plain")]
    for variant in (isa, float_only(isa)):
        for w, m, prologue in cases:
            width = 2 * w.k + 3 if prologue == "swiglu" else w.k + 3
            src = rng.standard_normal((m, width)).astype(np.float32)
            norm = (rng.random(w.k) + 0.5).astype(np.float32)
            packed = pack(w)
            blob = Blob()
            offsets = {**add_packed(blob, packed), "norm": blob.add(norm), "src_off": 2, "y_off": 3}
            spec = GemmSpec(variant, packed.fmt, w.n, w.k, m, prologue, width, w.n + 5, accumulate=True)
            library = tvm.compile(tvm.IRModule({spec.name: build_gemm(spec)}), target=_target(isa_name))
            before = rng.standard_normal((m, w.n + 5)).astype(np.float32)
            y = tvm.runtime.tensor(before.reshape(-1).copy())
            library[spec.name](tvm.runtime.tensor(src.reshape(-1)), tvm.runtime.tensor(blob.bytes()),
                               *[offsets.get(name, 0) for name in OFFSET_SLOTS], y)
            out = y.numpy().reshape(m, w.n + 5)
            for row in range(m):
                v = _activation(src[row, 2:], prologue, w.k, norm)
                want = _reference(w, v, spec.uses_int_dot) + before[row, 3:3 + w.n]
                error = np.abs(out[row, 3:3 + w.n] - want).max() / np.abs(want).max()
                assert error < 3e-5, (spec.name, row, error)
            np.testing.assert_array_equal(out[:, :3], before[:, :3])


def test_avx2_code_uses_vpmaddubsw_and_no_avx512():
    """`mcpu` haswell: the int8 products are vpmaddubsw/vpmaddwd on ymm registers, no zmm anywhere."""
    from edgefold.targets.tvm.kernels.packing import IntFormat

    isa = isa_for(_target("avx2"))
    assert isa.name == "avx2" and isa.lanes == 8
    spec = GemvSpec(isa, IntFormat(4, 32, "u8", "min", 8, "u8"), 64, 96, "norm", 96, 64)
    asm = tvm.compile(tvm.IRModule({spec.name: build_gemv(spec)}), target=_target("avx2")).mod.inspect_source("asm")
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm
    assert "zmm" not in asm and "vpdpbusd" not in asm


def test_vnni_code_uses_vpdpbusd():
    from edgefold.targets.tvm.kernels.packing import IntFormat

    isa = isa_for(_target("avx512-vnni"))
    assert isa.int_dot == "vnni512"
    spec = GemvSpec(isa, IntFormat(4, 32, "f16", "zero", 0), 64, 96, "plain", 96, 64)
    asm = tvm.compile(tvm.IRModule({spec.name: build_gemv(spec)}), target=_target("avx512-vnni")).mod.inspect_source("asm")
    assert "vpdpbusd" in asm


def test_neon_dotprod_code_builds_for_aarch64():
    """aarch64 with +dotprod: sdot; without: fp32 FMA only. Built here (run under qemu in test_compile)."""
    from edgefold.targets.tvm.kernels.packing import IntFormat

    for mattr, dot in ((["+neon", "+dotprod"], "sdot"), (["+neon"], "")):
        target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr, "num-cores": 4})
        isa = isa_for(target)
        assert isa.int_dot == dot and isa.lanes == 4
        spec = GemvSpec(isa, IntFormat(4, 32, "u8", "min", 8, "u8"), 64, 96, "norm", 96, 64)
        asm = tvm.compile(tvm.IRModule({spec.name: build_gemv(spec)}), target=target).mod.inspect_source("asm")
        assert ("sdot" in asm) == bool(dot)


def _host_has_amx() -> bool:
    from edgefold.targets.profiles import _host_tile_features

    return "+amx-bf16" in _host_tile_features()


def test_amx_gemm_matches_bf16_numpy():
    """The prefill GEMM on AMX tiles (`mcpu` sapphirerapids): tdpbf16ps in the code on any machine;
    where this CPU has AMX, the results equal numpy's product of the bf16-rounded weights
    (q * S + O) and activations, for shapes that are not whole tiles (17 tokens, 37 rows, K 70),
    with accumulate, bias and 8-bit codes. The exact fp32-activation variant never takes AMX."""
    import ml_dtypes

    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
    isa = isa_for(target)
    assert isa.amx and not float_only(isa).has_int_dot
    rng = np.random.default_rng(5)
    cases = [(int_weight(rng, 100, 70, scale="u8", offset="min"), 40, "norm", True, False),
             (int_weight(rng, 37, 160, block=64, scale="f16", offset="zero"), 17, "swiglu", True, True),
             (int_weight(rng, 96, 128, bits=8, block=0, offset="bias"), 64, "plain", False, False)]
    runs = _host_has_amx()
    for w, m, prologue, accumulate, bias in cases:
        width = 2 * w.k + 3 if prologue == "swiglu" else w.k + 3
        src = rng.standard_normal((m, width)).astype(np.float32)
        norm = (rng.random(w.k) + 0.5).astype(np.float32)
        bias_values = rng.standard_normal(w.n).astype(np.float32) if bias else None
        packed = pack(w, bias_values)
        blob = Blob()
        offsets = {**add_packed(blob, packed), "norm": blob.add(norm), "src_off": 2, "y_off": 3}
        spec = GemmSpec(isa, packed.fmt, w.n, w.k, m, prologue, width, w.n + 5, accumulate, bias)
        assert spec.uses_amx and spec.name.endswith("_amx")
        assert not GemmSpec(float_only(isa), packed.fmt, w.n, w.k, m, prologue, width, w.n + 5).uses_amx
        library = tvm.compile(tvm.IRModule({spec.name: build_gemm(spec)}), target=target)
        asm = library.mod.inspect_source("asm")
        assert "tdpbf16ps" in asm and "ldtilecfg" in asm
        if not runs:
            continue
        before = rng.standard_normal((m, w.n + 5)).astype(np.float32)
        y = tvm.runtime.tensor(before.reshape(-1).copy())
        library[spec.name](tvm.runtime.tensor(src.reshape(-1)), tvm.runtime.tensor(blob.bytes()),
                           *[offsets.get(name, 0) for name in OFFSET_SLOTS], y)
        out = y.numpy().reshape(m, w.n + 5)

        def bf16(a):
            return a.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)

        dense = bf16(w.dequantize())
        for row in range(m):
            want = dense @ bf16(_activation(src[row, 2:], prologue, w.k, norm))
            if bias:
                want = want + bias_values
            if accumulate:
                want = want + before[row, 3:3 + w.n]
            error = np.abs(out[row, 3:3 + w.n] - want).max() / np.abs(want).max()
            assert error < 1e-6, (spec.name, row, error)
        np.testing.assert_array_equal(out[:, :3], before[:, :3])  # nothing written outside its rows
        np.testing.assert_array_equal(out[:, 3 + w.n:], before[:, 3 + w.n:])


def test_host_tile_features_from_cpu_flags():
    """AMX is added to the detected host target from the CPU flags (LLVM may name the CPU after
    a model without it), and only when both the tile and bf16 flags are listed."""
    from edgefold.targets.profiles import _host_tile_features

    amx = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    assert _host_tile_features(amx) == ["+amx-tile", "+amx-bf16", "+avx512bf16"]
    assert _host_tile_features("flags\t\t: fpu avx2 avx512f avx512_vnni\n") == []
    assert _host_tile_features("flags\t\t: amx_tile\n") == []
