"""Matrix-matrix product for a prompt of M tokens (prefill), same packed weights as the GEMV.

    y[m, y_off + n] (+)= sum_k W[n, k] * a[m, k]        m < M, n < N

The prologue (RMSNorm / copy / SwiGLU, then int8 quantization per block of 32) runs per
token, in parallel over tokens. The product runs in parallel over groups of 16 weight
rows; each group's packed weights (a few KB) stay in L1 while every token of the
prompt goes past them in register tiles of `tile` tokens, so the weights are read from
memory once per prompt instead of once per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from edgefold.targets.tvm.kernels import act, gemm_amx
from edgefold.targets.tvm.kernels.epilogue import store_row
from edgefold.targets.tvm.kernels.gemv import SCHEDULED, STORAGE_DTYPES, int8_dot, fp8_to_f32
from edgefold.targets.tvm.kernels.isa import ACT_BLOCK, ROWS, Isa
from edgefold.targets.tvm.kernels.packing import FloatFormat, IntFormat, padded_k
from edgefold.targets.tvm.kernels.weight_element import block_offset, code_vector, side_value


@dataclass(frozen=True)
class GemmSpec:
    """Everything that decides the code of one prefill GEMM kernel."""

    isa: Isa
    fmt: IntFormat | FloatFormat
    n: int
    k: int
    m: int  # tokens
    prologue: str  # "norm", "plain", "swiglu"
    src_width: int  # row length of the source buffer [m, src_width]
    out_width: int  # row length of the output buffer [m, out_width]
    accumulate: bool = False
    bias: bool = False
    eps: float = 1e-5

    @property
    def name(self) -> str:
        """The kernel's function name, unique per spec."""
        mode = "acc" if self.accumulate else "set"
        return (f"gemm_{self.fmt.key}_{self.m}x{self.n}x{self.k}_{self.prologue}_{mode}{'_bias' if self.bias else ''}"
                f"_{self.isa.name}{'_amx' if self.uses_amx else ''}").replace("-", "_")

    @property
    def uses_amx(self) -> bool:
        """Whether this GEMM runs on Intel AMX bf16 tiles (`gemm_amx`)."""
        return gemm_amx.fits(self)

    @property
    def uses_int_dot(self) -> bool:
        """Whether activations are quantized to int8 for the isa's int dot product (else fp32 FMA)."""
        if not isinstance(self.fmt, IntFormat) or not self.isa.has_int_dot:
            return False
        return not (self.fmt.bits == 8 and self.isa.int_dot.startswith("maddubs"))

    @property
    def tile(self) -> int:
        """Tokens per register tile: what the isa's vector registers hold with the accumulators."""
        if isinstance(self.fmt, FloatFormat) or not self.uses_int_dot:
            return 8 if self.isa.lanes == 16 else 4
        # int dot: 3 x MR x ROWS/lanes registers (int and float block sums, totals); 8 tokens
        # keep 8 independent dot-product chains in flight on AVX-512
        return 8 if self.isa.lanes == 16 else 2


def build_gemm(spec: GemmSpec) -> tvm.tirx.PrimFunc:
    """The prefill GEMM kernel for `spec`: on AMX tiles, with an int8 dot product, or in fp32."""
    if spec.uses_amx:
        return gemm_amx.build_amx_gemm(spec)
    if spec.uses_int_dot:
        return _int_gemm(spec)
    return _float_act_gemm(spec)


def _int_gemm(spec: GemmSpec):
    isa, fmt = spec.isa, spec.fmt
    L, SUB, MR = isa.lanes, ROWS // isa.lanes, spec.tile
    N, K, KP, M = spec.n, spec.k, padded_k(spec.k), spec.m
    G, ABLK = -(-N // ROWS), KP // ACT_BLOCK
    WB = 1 if not fmt.block else -(-KP // fmt.block)
    APW = (KP if not fmt.block else fmt.block) // ACT_BLOCK
    WPA = ACT_BLOCK // (8 if fmt.bits == 4 else 4)
    KW = KP // (8 if fmt.bits == 4 else 4)
    MT = -(-M // MR)  # token tiles
    FULL = N // ROWS
    NT = max(1, min(isa.cores, G))
    NTM = max(1, min(isa.cores, M))
    GPER, MPER = -(-G // NT), -(-M // NTM)
    prologue = act.prologue_macro(spec.prologue, spec.k, KP, spec.eps, spec.isa.lanes)
    quantize = act.quantize_macro(KP, L)
    sdt, mdt = STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32")
    fvec = f"float32x{L}"
    SW, OW, norm_prologue = spec.src_width, spec.out_width, spec.prologue == "norm"
    has_bias, accumulate, four_bit = spec.bias, spec.accumulate, fmt.bits == 4
    ACC = MR * ROWS

    def bf(v):
        return T.broadcast(T.float32(v), L)

    @T.prim_func
    def gemm(src: T.Buffer((M * SW,), "float32"), blob_h: T.handle, src_off: T.int64, y_off: T.int64,
             o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
             o_ms: T.int64, o_mz: T.int64, o_b: T.int64, o_n: T.int64, y: T.Buffer((M * OW,), "float32")):
        T.func_attr(SCHEDULED)
        nblob = T.int64()
        blob = T.match_buffer(blob_h, (nblob,), "uint8")
        W = T.decl_buffer((G, KW, ROWS), "int32", data=blob.data, elem_offset=o_w)
        S = T.decl_buffer((G, WB, ROWS), sdt, data=blob.data, elem_offset=o_s)
        Ss = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_ss)
        Sz = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_sz)
        Z = T.decl_buffer((G, WB, ROWS), "uint8", data=blob.data, elem_offset=o_z)
        Mn = T.decl_buffer((G, WB, ROWS), mdt, data=blob.data, elem_offset=o_m)
        Ms = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_ms)
        Mz = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_mz)
        Bias = T.decl_buffer((G * ROWS,), "float32", data=blob.data, elem_offset=o_b)
        Norm = T.decl_buffer((K,), "float32", data=blob.data, elem_offset=o_n)
        v = T.alloc_buffer((M, KP), "float32")
        xq8 = T.alloc_buffer((MT * MR, KP), "int8")
        xw = T.decl_buffer((MT * MR, KP // 4), "int32", data=xq8.data)
        xs = T.alloc_buffer((MT * MR, ABLK), "float32")
        xsum = T.alloc_buffer((MT * MR, ABLK), "float32")
        for c in T.parallel(NTM):  # one chunk of tokens per thread (no allocation per token)
            for mi in range(MPER):
                if c * MPER + mi < M:
                    if norm_prologue:
                        prologue(src, src_off + (c * MPER + mi) * SW, Norm, 0, v, c * MPER + mi)
                    else:
                        prologue(src, src_off + (c * MPER + mi) * SW, v, c * MPER + mi)
                    quantize(v, xq8, xs, xsum, c * MPER + mi)
        for m in range(MT * MR - M):  # the last tile's missing tokens: zeros (results discarded)
            for i in range(KP):
                xq8[M + m, i] = T.int8(0)
            for b in range(ABLK):
                xs[M + m, b] = T.float32(0)
                xsum[M + m, b] = T.float32(0)
        for c in T.parallel(NT):  # one contiguous chunk of groups per thread
            accf = T.alloc_buffer((ACC,), "float32", scope="local")
            blockf = T.alloc_buffer((ACC,), "float32", scope="local")
            ia = T.alloc_buffer((ACC,), "int32", scope="local")  # int dot products of one activation block
            tot = T.alloc_buffer((1,), "float32", scope="local")
            for gi in range(GPER):
                if c * GPER + gi < G:
                    g = c * GPER + gi
                    for mt in range(MT):
                        for r in T.unroll(MR):
                            for j in T.unroll(SUB):
                                accf[T.ramp(r * ROWS + j * L, 1, L)] = bf(0)
                        for wb in range(WB):
                            for r in T.unroll(MR):
                                for j in T.unroll(SUB):
                                    blockf[T.ramp(r * ROWS + j * L, 1, L)] = bf(0)
                            for ab in range(APW):
                                a = wb * APW + ab
                                if a < ABLK:
                                    for r in T.unroll(MR):
                                        for j in T.unroll(SUB):
                                            ia[T.ramp(r * ROWS + j * L, 1, L)] = T.broadcast(T.int32(0), L)
                                    for t in T.unroll(WPA):
                                        for j in T.unroll(SUB):
                                            word = W[g, a * WPA + t, T.ramp(j * L, 1, L)]
                                            if four_bit:
                                                low = T.bitwise_and(word, T.broadcast(T.int32(0x0F0F0F0F), L))
                                                high = T.bitwise_and(T.shift_right(word, T.broadcast(T.int32(4), L)),
                                                                     T.broadcast(T.int32(0x0F0F0F0F), L))
                                                for r in T.unroll(MR):
                                                    ia[T.ramp(r * ROWS + j * L, 1, L)] = int8_dot(
                                                        isa, int8_dot(isa, ia[T.ramp(r * ROWS + j * L, 1, L)], low,
                                                                  T.broadcast(xw[mt * MR + r, a * 8 + t * 2], L)),
                                                        high, T.broadcast(xw[mt * MR + r, a * 8 + t * 2 + 1], L))
                                            else:
                                                for r in T.unroll(MR):
                                                    ia[T.ramp(r * ROWS + j * L, 1, L)] = int8_dot(
                                                        isa, ia[T.ramp(r * ROWS + j * L, 1, L)], word,
                                                        T.broadcast(xw[mt * MR + r, a * 8 + t], L))
                                    for r in T.unroll(MR):
                                        for j in T.unroll(SUB):
                                            blockf[T.ramp(r * ROWS + j * L, 1, L)] = blockf[T.ramp(r * ROWS + j * L, 1, L)] \
                                                + T.Cast(fvec, ia[T.ramp(r * ROWS + j * L, 1, L)]) \
                                                * T.broadcast(xs[mt * MR + r, a], L)
                            for j in T.unroll(SUB):
                                scale = side_value(S, Ss, Sz, g, wb, T.ramp(j * L, 1, L), fmt.scale, L)
                                offset = block_offset(fmt, scale, Z, Mn, Ms, Mz, g, wb, T.ramp(j * L, 1, L), L)
                                for r in T.unroll(MR):
                                    tot[0] = T.float32(0)
                                    for ab in range(APW):
                                        if wb * APW + ab < ABLK:
                                            tot[0] = tot[0] + xsum[mt * MR + r, wb * APW + ab]
                                    accf[T.ramp(r * ROWS + j * L, 1, L)] = accf[T.ramp(r * ROWS + j * L, 1, L)] \
                                        + blockf[T.ramp(r * ROWS + j * L, 1, L)] * scale + offset * T.broadcast(tot[0], L)
                        for r in range(MR):
                            if mt * MR + r < M:
                                store_row(accf, r, y, y_off + (mt * MR + r) * OW, Bias, g, FULL, N, L, SUB, has_bias,
                                           accumulate)

    return gemm.with_attr("global_symbol", spec.name)


def _float_act_gemm(spec: GemmSpec):
    """fp32 activations: float weights, or low-bit weights widened to fp32 (isas without an
    int8 dot product), with the per-block algebra for the latter."""
    isa, fmt = spec.isa, spec.fmt
    L, SUB, MR = isa.lanes, ROWS // isa.lanes, spec.tile
    N, K, M = spec.n, spec.k, spec.m
    is_int = isinstance(fmt, IntFormat)
    KP = padded_k(K) if is_int else K
    G = -(-N // ROWS)
    MT = -(-M // MR)
    FULL = N // ROWS
    NT = max(1, min(isa.cores, G))
    NTM = max(1, min(isa.cores, M))
    GPER, MPER = -(-G // NT), -(-M // NTM)
    prologue = act.prologue_macro(spec.prologue, spec.k, KP, spec.eps, spec.isa.lanes)
    fvec = f"float32x{L}"
    SW, OW, norm_prologue = spec.src_width, spec.out_width, spec.prologue == "norm"
    has_bias, accumulate = spec.bias, spec.accumulate
    ACC = MR * ROWS
    if is_int:
        PER_WORD = 8 if fmt.bits == 4 else 4
        KW = KP // PER_WORD
        WB = 1 if not fmt.block else -(-KP // fmt.block)
        BW = KP if not fmt.block else fmt.block
        APW = BW // ACT_BLOCK
        ABLK = KP // ACT_BLOCK
        sdt, mdt, wdt = STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32"), "int32"
        wshape = (G, KW, ROWS)
    else:
        PER_WORD, KW, WB, BW, APW, ABLK = 1, K, 1, K, 1, 1
        sdt, mdt, wdt = "float32", "float32", STORAGE_DTYPES[fmt.dtype]
        wshape = (G, K, ROWS)
    sums = act.block_sums_macro(KP) if is_int else None

    def bf(v):
        return T.broadcast(T.float32(v), L)

    def wvec(word, position):
        """The weights of one k (position within the packed word) as fp32 x L."""
        if not is_int:
            return fp8_to_f32(word, L) if fmt.dtype == "fp8" else T.Cast(fvec, word)
        return code_vector(word, fmt.bits, position, L)

    @T.prim_func
    def gemm(src: T.Buffer((M * SW,), "float32"), blob_h: T.handle, src_off: T.int64, y_off: T.int64,
             o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
             o_ms: T.int64, o_mz: T.int64, o_b: T.int64, o_n: T.int64, y: T.Buffer((M * OW,), "float32")):
        T.func_attr(SCHEDULED)
        nblob = T.int64()
        blob = T.match_buffer(blob_h, (nblob,), "uint8")
        W = T.decl_buffer(wshape, wdt, data=blob.data, elem_offset=o_w)
        S = T.decl_buffer((G, WB, ROWS), sdt, data=blob.data, elem_offset=o_s)
        Ss = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_ss)
        Sz = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_sz)
        Z = T.decl_buffer((G, WB, ROWS), "uint8", data=blob.data, elem_offset=o_z)
        Mn = T.decl_buffer((G, WB, ROWS), mdt, data=blob.data, elem_offset=o_m)
        Ms = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_ms)
        Mz = T.decl_buffer((G, ROWS), "float32", data=blob.data, elem_offset=o_mz)
        Bias = T.decl_buffer((G * ROWS,), "float32", data=blob.data, elem_offset=o_b)
        Norm = T.decl_buffer((K,), "float32", data=blob.data, elem_offset=o_n)
        v = T.alloc_buffer((MT * MR, KP), "float32")
        xsum = T.alloc_buffer((MT * MR, ABLK), "float32")
        for c in T.parallel(NTM):
            for mi in range(MPER):
                if c * MPER + mi < M:
                    if norm_prologue:
                        prologue(src, src_off + (c * MPER + mi) * SW, Norm, 0, v, c * MPER + mi)
                    else:
                        prologue(src, src_off + (c * MPER + mi) * SW, v, c * MPER + mi)
                    if is_int:
                        sums(v, xsum, c * MPER + mi)
        for m in range(MT * MR - M):
            for i in range(KP):
                v[M + m, i] = T.float32(0)
            for b in range(ABLK):
                xsum[M + m, b] = T.float32(0)
        for c in T.parallel(NT):  # one contiguous chunk of groups per thread
            accf = T.alloc_buffer((ACC,), "float32", scope="local")
            blockf = T.alloc_buffer((ACC,), "float32", scope="local")
            tot = T.alloc_buffer((1,), "float32", scope="local")
            for gi in range(GPER):
                if c * GPER + gi < G:
                    g = c * GPER + gi
                    for mt in range(MT):
                        for r in T.unroll(MR):
                            for j in T.unroll(SUB):
                                accf[T.ramp(r * ROWS + j * L, 1, L)] = bf(0)
                        for wb in range(WB):
                            for r in T.unroll(MR):
                                for j in T.unroll(SUB):
                                    blockf[T.ramp(r * ROWS + j * L, 1, L)] = bf(0)
                            for w in range(BW // PER_WORD):
                                if wb * (BW // PER_WORD) + w < KW:
                                    kw = wb * (BW // PER_WORD) + w
                                    for j in T.unroll(SUB):
                                        word = W[g, kw, T.ramp(j * L, 1, L)]
                                        for p in T.unroll(PER_WORD):
                                            weight = wvec(word, p)
                                            for r in T.unroll(MR):
                                                blockf[T.ramp(r * ROWS + j * L, 1, L)] = blockf[T.ramp(r * ROWS + j * L, 1, L)] \
                                                    + weight * T.broadcast(v[mt * MR + r, kw * PER_WORD + p], L)
                            if is_int:
                                for j in T.unroll(SUB):
                                    scale = side_value(S, Ss, Sz, g, wb, T.ramp(j * L, 1, L), fmt.scale, L)
                                    offset = block_offset(fmt, scale, Z, Mn, Ms, Mz, g, wb, T.ramp(j * L, 1, L), L)
                                    for r in T.unroll(MR):
                                        tot[0] = T.float32(0)
                                        for ab in range(APW):
                                            if wb * APW + ab < ABLK:
                                                tot[0] = tot[0] + xsum[mt * MR + r, wb * APW + ab]
                                        accf[T.ramp(r * ROWS + j * L, 1, L)] = accf[T.ramp(r * ROWS + j * L, 1, L)] \
                                            + blockf[T.ramp(r * ROWS + j * L, 1, L)] * scale + offset * T.broadcast(tot[0], L)
                            else:
                                for r in T.unroll(MR):
                                    for j in T.unroll(SUB):
                                        accf[T.ramp(r * ROWS + j * L, 1, L)] = blockf[T.ramp(r * ROWS + j * L, 1, L)]
                        for r in range(MR):
                            if mt * MR + r < M:
                                store_row(accf, r, y, y_off + (mt * MR + r) * OW, Bias, g, FULL, N, L, SUB, has_bias,
                                           accumulate)

    return gemm.with_attr("global_symbol", spec.name)
