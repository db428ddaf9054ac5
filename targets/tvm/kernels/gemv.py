"""Matrix-vector product with packed weights (the decode step's linears), hand-scheduled.

    y[y_off + n] (+)= sum_k W[n, k] * a[k] (+ bias[n])        n < N

`a` comes from a prologue computed once per call on the calling thread: the RMSNorm of
`src` (`norm`), `src` as is (`plain`) or SiLU(gate) * up of `src` (`swiglu`). The rows
are split in contiguous chunks, one per core (`T.parallel`); no buffer is allocated per
row (a per-iteration allocation inside `T.parallel` becomes a heap call each time).

Low-bit weights (`IntFormat`), per weight block:   sum_k x*(S*q + O) = S*sum(x*q) + O*sum(x)
- with an int8 dot product (`isa.int_dot`): `a` is quantized to int8 per block of 32
  (step xs, exact float sum xsum); sum(x*q) = xs * dot(xq, q) accumulates in int32,
  two independent chains (low and high nibbles) so the dot's latency is hidden;
- without one: codes are widened to fp32 and FMA'd with the exact `a`.
Float weights (`FloatFormat`: fp32, fp16, fp8 e4m3) are widened to fp32 and FMA'd.

Every weight, scale and bias is read from the model's one byte blob at element offsets
passed as arguments, so one compiled kernel serves every layer of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from edgefold.targets.tvm.kernels import act
from edgefold.targets.tvm.kernels.epilogue import store_row
from edgefold.targets.tvm.kernels.isa import ACT_BLOCK, ROWS, Isa
from edgefold.targets.tvm.kernels.packing import FloatFormat, IntFormat, padded_k
from edgefold.targets.tvm.kernels.weight_element import block_offset, code_vector, side_value

M4 = 0x0F0F0F0F
PROLOGUES = ("norm", "plain", "swiglu")
# The kernel's int64 arguments: where in `src` the input starts, where in `y` to write, and
# the element offset of each packed stream in the blob (S_step/S_zero: uint8 scales' step and
# zero per row; Z: zero points; M*: minimums; norm: the RMSNorm weight of a `norm` prologue).
OFFSET_SLOTS = ("src_off", "y_off", "W", "S", "S_step", "S_zero", "Z", "M", "M_step", "M_zero", "bias", "norm")
SCHEDULED = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}


@dataclass(frozen=True)
class GemvSpec:
    """Everything that decides the code of one GEMV kernel."""

    isa: Isa
    fmt: IntFormat | FloatFormat
    n: int
    k: int
    prologue: str  # "norm", "plain", "swiglu"
    src_len: int  # length of the source buffer
    out_len: int  # length of the output buffer
    accumulate: bool = False  # y += (the residual stream)
    bias: bool = False
    eps: float = 1e-5

    @property
    def name(self) -> str:
        """The kernel's function name, unique per spec."""
        mode = "acc" if self.accumulate else "set"
        return (f"gemv_{self.fmt.key}_{self.n}x{self.k}_{self.prologue}_{mode}{'_bias' if self.bias else ''}"
                f"_{self.isa.name}").replace("-", "_")

    @property
    def uses_int_dot(self) -> bool:
        """int8 activations with an int dot product. vpmaddubsw adds pairs of u8 x s8 products
        into int16, which 8-bit codes can overflow (255 * 127 * 2 > 32767): those take fp32."""
        if not isinstance(self.fmt, IntFormat) or not self.isa.has_int_dot:
            return False
        return not (self.fmt.bits == 8 and self.isa.int_dot.startswith("maddubs"))

    def offsets(self) -> list[str]:
        """Names of the int64 arguments after (src, blob), in order; unused ones are passed as 0."""
        return list(OFFSET_SLOTS)


STORAGE_DTYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "fp8": "uint8"}


def int8_dot(isa: Isa, acc, w, x):
    """acc (int32 x L) += 4-byte dot products of u8 weights `w` and s8 activations `x` (int32 x L)."""
    lanes = isa.lanes
    if isa.int_dot == "vnni512":
        return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc,
                                       T.reinterpret("int8x64", w), T.reinterpret("int8x64", x))
    if isa.int_dot in ("maddubs512", "maddubs256"):
        bytes_, halves = lanes * 4, lanes * 2
        name = "llvm.x86.avx512.pmaddubs.w.512" if lanes == 16 else "llvm.x86.avx2.pmadd.ub.sw"
        wd = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"
        pairs = T.call_llvm_pure_intrin(f"int16x{halves}", name, T.reinterpret(f"int8x{bytes_}", w),
                                        T.reinterpret(f"int8x{bytes_}", x))
        return acc + T.call_llvm_pure_intrin(f"int32x{lanes}", wd, pairs, T.broadcast(T.int16(1), halves))
    if isa.int_dot == "sdot":
        return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc,
                                       T.reinterpret("int8x16", w), T.reinterpret("int8x16", x))
    raise ValueError(f"{isa.name} has no int8 dot product")


def fp8_to_f32(bits, lanes: int):
    """float32 x L from FP8 E4M3FN bit patterns (uint8 x L): rebias the exponent; subnormals by hand."""
    b = T.Cast(f"int32x{lanes}", bits)
    i = lambda v: T.broadcast(T.int32(v), lanes)  # noqa: E731
    f = lambda v: T.broadcast(T.float32(v), lanes)  # noqa: E731
    magnitude = T.reinterpret(f"float32x{lanes}", T.shift_left(T.bitwise_and(b, i(0x7F)), i(20)) + i(120 << 23))
    exponent_zero = T.bitwise_and(b, i(0x78)) == i(0)
    magnitude = T.Select(exponent_zero, (magnitude - f(2.0 ** -7)) * f(2.0), magnitude)
    return T.Select(T.bitwise_and(b, i(0x80)) != i(0), -magnitude, magnitude)


def build_gemv(spec: GemvSpec) -> tvm.tirx.PrimFunc:
    """The decode GEMV kernel for `spec`: float weights, or low-bit with or without an int8 dot product."""
    if isinstance(spec.fmt, FloatFormat):
        return _float_gemv(spec)
    if spec.uses_int_dot:
        return _int_gemv(spec)
    return _int_gemv_fp32_act(spec)


# ---------------------------------------------------------------- shared pieces


def _prologue(spec: GemvSpec, kp: int):
    lanes = spec.isa.lanes
    if spec.prologue == "norm":
        return act.rms_norm_macro(spec.k, kp, spec.eps, lanes)
    if spec.prologue == "swiglu":
        return act.swiglu_macro(spec.k, kp, lanes)
    return act.copy_macro(spec.k, kp, lanes)


def _chunks(spec: GemvSpec) -> tuple[int, int]:
    groups = -(-spec.n // ROWS)
    threads = max(1, min(spec.isa.cores, groups))
    return threads, -(-groups // threads)


# ---------------------------------------------------------------- int8 activations x low-bit weights


def _int_gemv(spec: GemvSpec):
    isa, fmt = spec.isa, spec.fmt
    L, SUB = isa.lanes, ROWS // isa.lanes
    N, K, KP = spec.n, spec.k, padded_k(spec.k)
    G, ABLK = -(-N // ROWS), KP // ACT_BLOCK
    WB = 1 if not fmt.block else -(-KP // fmt.block)
    APW = (KP if not fmt.block else fmt.block) // ACT_BLOCK  # activation blocks per weight block
    WPA = ACT_BLOCK // (8 if fmt.bits == 4 else 4)  # packed words per lane per activation block
    KW = KP // (8 if fmt.bits == 4 else 4)
    NT, PER = _chunks(spec)
    FULL = N // ROWS  # groups whose 16 rows all exist
    prologue, quantize = _prologue(spec, KP), act.quantize_macro(KP, L)
    sdt, mdt = STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32")
    fvec = f"float32x{L}"
    src_len, out_len, norm_prologue = spec.src_len, spec.out_len, spec.prologue == "norm"
    has_bias, accumulate, four_bit = spec.bias, spec.accumulate, fmt.bits == 4

    def bf(v):
        return T.broadcast(T.float32(v), L)

    @T.prim_func
    def gemv(src: T.Buffer((src_len,), "float32"), blob_h: T.handle, src_off: T.int64, y_off: T.int64,
             o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
             o_ms: T.int64, o_mz: T.int64, o_b: T.int64, o_n: T.int64, y: T.Buffer((out_len,), "float32")):
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
        v = T.alloc_buffer((1, KP), "float32")
        xq8 = T.alloc_buffer((1, KP), "int8")
        xw = T.decl_buffer((KP // 4,), "int32", data=xq8.data)
        xs = T.alloc_buffer((1, ABLK), "float32")
        xsum = T.alloc_buffer((1, ABLK), "float32")
        if norm_prologue:
            prologue(src, src_off, Norm, 0, v, 0)
        else:
            prologue(src, src_off, v, 0)
        quantize(v, xq8, xs, xsum, 0)
        for c in T.parallel(NT):
            accf = T.alloc_buffer((ROWS,), "float32", scope="local")
            blockf = T.alloc_buffer((ROWS,), "float32", scope="local")
            lo = T.alloc_buffer((ROWS,), "int32", scope="local")
            hi = T.alloc_buffer((ROWS,), "int32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for gi in range(PER):
                if c * PER + gi < G:
                    g = c * PER + gi
                    for j in T.unroll(SUB):
                        accf[T.ramp(j * L, 1, L)] = bf(0)
                    for wb in range(WB):
                        for j in T.unroll(SUB):
                            blockf[T.ramp(j * L, 1, L)] = bf(0)
                        for ab in range(APW):
                            a = wb * APW + ab
                            if a < ABLK:
                                for j in T.unroll(SUB):
                                    lo[T.ramp(j * L, 1, L)] = T.broadcast(T.int32(0), L)
                                    hi[T.ramp(j * L, 1, L)] = T.broadcast(T.int32(0), L)
                                for t in T.unroll(WPA):
                                    # The next group's same line, a group ahead: weights stream from
                                    # DRAM/L3 faster than the hardware prefetcher alone brings them
                                    # (lm_head 830 -> 550 us here); other kernels are unaffected.
                                    if isa.family == "x86":
                                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                                            W[T.min(g + 1, G - 1), a * WPA + t, 0]), T.int32(0), T.int32(3), T.int32(1)))
                                    for j in T.unroll(SUB):
                                        word = W[g, a * WPA + t, T.ramp(j * L, 1, L)]
                                        if four_bit:
                                            lo[T.ramp(j * L, 1, L)] = int8_dot(
                                                isa, lo[T.ramp(j * L, 1, L)],
                                                T.bitwise_and(word, T.broadcast(T.int32(M4), L)),
                                                T.broadcast(xw[a * 8 + t * 2], L))
                                            hi[T.ramp(j * L, 1, L)] = int8_dot(
                                                isa, hi[T.ramp(j * L, 1, L)],
                                                T.bitwise_and(T.shift_right(word, T.broadcast(T.int32(4), L)),
                                                              T.broadcast(T.int32(M4), L)),
                                                T.broadcast(xw[a * 8 + t * 2 + 1], L))
                                        else:
                                            if t % 2 == 0:
                                                lo[T.ramp(j * L, 1, L)] = int8_dot(isa, lo[T.ramp(j * L, 1, L)], word,
                                                                               T.broadcast(xw[a * 8 + t], L))
                                            else:
                                                hi[T.ramp(j * L, 1, L)] = int8_dot(isa, hi[T.ramp(j * L, 1, L)], word,
                                                                               T.broadcast(xw[a * 8 + t], L))
                                for j in T.unroll(SUB):
                                    blockf[T.ramp(j * L, 1, L)] = blockf[T.ramp(j * L, 1, L)] + T.Cast(
                                        fvec, lo[T.ramp(j * L, 1, L)] + hi[T.ramp(j * L, 1, L)]) * T.broadcast(xs[0, a], L)
                        total[0] = T.float32(0)
                        for ab in range(APW):
                            if wb * APW + ab < ABLK:
                                total[0] = total[0] + xsum[0, wb * APW + ab]
                        for j in T.unroll(SUB):
                            scale = side_value(S, Ss, Sz, g, wb, T.ramp(j * L, 1, L), fmt.scale, L)
                            offset = block_offset(fmt, scale, Z, Mn, Ms, Mz, g, wb, T.ramp(j * L, 1, L), L)
                            accf[T.ramp(j * L, 1, L)] = accf[T.ramp(j * L, 1, L)] + blockf[T.ramp(j * L, 1, L)] * scale \
                                + offset * T.broadcast(total[0], L)
                    store_row(accf, 0, y, y_off, Bias, g, FULL, N, L, SUB, has_bias, accumulate)

    return gemv.with_attr("global_symbol", spec.name)


# ---------------------------------------------------------------- fp32 activations x low-bit weights


def _int_gemv_fp32_act(spec: GemvSpec):
    isa, fmt = spec.isa, spec.fmt
    L, SUB = isa.lanes, ROWS // isa.lanes
    N, K, KP = spec.n, spec.k, padded_k(spec.k)
    G, ABLK = -(-N // ROWS), KP // ACT_BLOCK
    WB = 1 if not fmt.block else -(-KP // fmt.block)
    BW = KP if not fmt.block else fmt.block  # weight block width
    PER_WORD = 8 if fmt.bits == 4 else 4
    KW = KP // PER_WORD
    NT, PER = _chunks(spec)
    FULL = N // ROWS
    prologue, sums = _prologue(spec, KP), act.block_sums_macro(KP)
    sdt, mdt = STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32")
    src_len, out_len, norm_prologue = spec.src_len, spec.out_len, spec.prologue == "norm"
    has_bias, accumulate = spec.bias, spec.accumulate
    APW = BW // ACT_BLOCK

    def bf(v):
        return T.broadcast(T.float32(v), L)

    def code(word, position):
        return code_vector(word, fmt.bits, position, L)

    @T.prim_func
    def gemv(src: T.Buffer((src_len,), "float32"), blob_h: T.handle, src_off: T.int64, y_off: T.int64,
             o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
             o_ms: T.int64, o_mz: T.int64, o_b: T.int64, o_n: T.int64, y: T.Buffer((out_len,), "float32")):
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
        v = T.alloc_buffer((1, KP), "float32")
        xsum = T.alloc_buffer((1, ABLK), "float32")
        if norm_prologue:
            prologue(src, src_off, Norm, 0, v, 0)
        else:
            prologue(src, src_off, v, 0)
        sums(v, xsum, 0)
        for c in T.parallel(NT):
            accf = T.alloc_buffer((ROWS,), "float32", scope="local")
            even = T.alloc_buffer((ROWS,), "float32", scope="local")
            odd = T.alloc_buffer((ROWS,), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for gi in range(PER):
                if c * PER + gi < G:
                    g = c * PER + gi
                    for j in T.unroll(SUB):
                        accf[T.ramp(j * L, 1, L)] = bf(0)
                    for wb in range(WB):
                        for j in T.unroll(SUB):
                            even[T.ramp(j * L, 1, L)] = bf(0)
                            odd[T.ramp(j * L, 1, L)] = bf(0)
                        for w in range(BW // PER_WORD):
                            if wb * (BW // PER_WORD) + w < KW:
                                kw = wb * (BW // PER_WORD) + w
                                for j in T.unroll(SUB):
                                    word = W[g, kw, T.ramp(j * L, 1, L)]
                                    for p in T.unroll(PER_WORD // 2):
                                        even[T.ramp(j * L, 1, L)] = even[T.ramp(j * L, 1, L)] + code(word, 2 * p) \
                                            * T.broadcast(v[0, kw * PER_WORD + 2 * p], L)
                                        odd[T.ramp(j * L, 1, L)] = odd[T.ramp(j * L, 1, L)] + code(word, 2 * p + 1) \
                                            * T.broadcast(v[0, kw * PER_WORD + 2 * p + 1], L)
                        total[0] = T.float32(0)
                        for ab in range(APW):
                            if wb * APW + ab < ABLK:
                                total[0] = total[0] + xsum[0, wb * APW + ab]
                        for j in T.unroll(SUB):
                            scale = side_value(S, Ss, Sz, g, wb, T.ramp(j * L, 1, L), fmt.scale, L)
                            offset = block_offset(fmt, scale, Z, Mn, Ms, Mz, g, wb, T.ramp(j * L, 1, L), L)
                            accf[T.ramp(j * L, 1, L)] = accf[T.ramp(j * L, 1, L)] + (
                                even[T.ramp(j * L, 1, L)] + odd[T.ramp(j * L, 1, L)]) * scale \
                                + offset * T.broadcast(total[0], L)
                    store_row(accf, 0, y, y_off, Bias, g, FULL, N, L, SUB, has_bias, accumulate)

    return gemv.with_attr("global_symbol", spec.name)


# ---------------------------------------------------------------- float weights


def _float_gemv(spec: GemvSpec):
    isa, fmt = spec.isa, spec.fmt
    L, SUB = isa.lanes, ROWS // isa.lanes
    N, K = spec.n, spec.k
    G = -(-N // ROWS)
    NT, PER = _chunks(spec)
    FULL = N // ROWS
    prologue = _prologue(spec, K)
    wdt = STORAGE_DTYPES[fmt.dtype]
    fvec = f"float32x{L}"
    src_len, out_len, norm_prologue = spec.src_len, spec.out_len, spec.prologue == "norm"
    has_bias, accumulate = spec.bias, spec.accumulate
    HALF, ODD = K // 2, K % 2

    def bf(v):
        return T.broadcast(T.float32(v), L)

    def weight(value):
        if fmt.dtype == "fp8":
            return fp8_to_f32(value, L)
        return T.Cast(fvec, value)

    @T.prim_func
    def gemv(src: T.Buffer((src_len,), "float32"), blob_h: T.handle, src_off: T.int64, y_off: T.int64,
             o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
             o_ms: T.int64, o_mz: T.int64, o_b: T.int64, o_n: T.int64, y: T.Buffer((out_len,), "float32")):
        T.func_attr(SCHEDULED)
        nblob = T.int64()
        blob = T.match_buffer(blob_h, (nblob,), "uint8")
        W = T.decl_buffer((G, K, ROWS), wdt, data=blob.data, elem_offset=o_w)
        Bias = T.decl_buffer((G * ROWS,), "float32", data=blob.data, elem_offset=o_b)
        Norm = T.decl_buffer((K,), "float32", data=blob.data, elem_offset=o_n)
        v = T.alloc_buffer((1, K), "float32")
        if norm_prologue:
            prologue(src, src_off, Norm, 0, v, 0)
        else:
            prologue(src, src_off, v, 0)
        for c in T.parallel(NT):
            accf = T.alloc_buffer((ROWS,), "float32", scope="local")
            odd = T.alloc_buffer((ROWS,), "float32", scope="local")
            for gi in range(PER):
                if c * PER + gi < G:
                    g = c * PER + gi
                    for j in T.unroll(SUB):
                        accf[T.ramp(j * L, 1, L)] = bf(0)
                        odd[T.ramp(j * L, 1, L)] = bf(0)
                    for kk in range(HALF):
                        for j in T.unroll(SUB):
                            accf[T.ramp(j * L, 1, L)] = accf[T.ramp(j * L, 1, L)] + weight(
                                W[g, 2 * kk, T.ramp(j * L, 1, L)]) * T.broadcast(v[0, 2 * kk], L)
                            odd[T.ramp(j * L, 1, L)] = odd[T.ramp(j * L, 1, L)] + weight(
                                W[g, 2 * kk + 1, T.ramp(j * L, 1, L)]) * T.broadcast(v[0, 2 * kk + 1], L)
                    for kk in range(ODD):
                        for j in T.unroll(SUB):
                            accf[T.ramp(j * L, 1, L)] = accf[T.ramp(j * L, 1, L)] + weight(
                                W[g, K - 1, T.ramp(j * L, 1, L)]) * T.broadcast(v[0, K - 1], L)
                    for j in T.unroll(SUB):
                        accf[T.ramp(j * L, 1, L)] = accf[T.ramp(j * L, 1, L)] + odd[T.ramp(j * L, 1, L)]
                    store_row(accf, 0, y, y_off, Bias, g, FULL, N, L, SUB, has_bias, accumulate)

    return gemv.with_attr("global_symbol", spec.name)
