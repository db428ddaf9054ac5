"""Activation pieces shared by the kernels: exp, RMSNorm, SwiGLU and int8 block quantization.

These run on one thread at the start of the kernel that consumes them (a few hundred to
a few thousand values), so they cost no extra kernel launch. `exp` is a vectorizable
polynomial (relative error < 2e-7 on [-87, 88]) rather than libm's scalar `expf`, which
LLVM cannot vectorize and which costs microseconds per layer.
"""

from __future__ import annotations

from tvm.script import tirx as T

from edgefold.targets.tvm.kernels.isa import ACT_BLOCK

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# Minimax coefficients of exp(r) on [-ln2/2, ln2/2] (Cephes expf).
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _lanes(x) -> int:
    import tvm

    dtype = getattr(x, "dtype", None)  # a buffer element read inside a macro may carry none yet
    return int(tvm.DataType(str(dtype)).lanes) if dtype is not None else 1


def exp(x):
    """exp(x) for float32 PrimExprs (scalar or vector)."""
    lanes = _lanes(x)

    def c(value, dtype="float32"):
        scalar = T.float32(value) if dtype == "float32" else T.int32(value)
        return T.broadcast(scalar, lanes) if lanes > 1 else scalar

    x = T.max(T.min(x, c(88.0)), c(-87.0))
    n = T.floor(x * c(_LOG2E) + c(0.5))
    r = x - n * c(_LN2_HI) - n * c(_LN2_LO)
    p = c(_P[0])
    for coefficient in _P[1:]:
        p = p * r + c(coefficient)
    p = p * r * r + r + c(1.0)
    itype = f"int32x{lanes}" if lanes > 1 else "int32"
    ftype = f"float32x{lanes}" if lanes > 1 else "float32"
    scale = T.reinterpret(ftype, T.shift_left(T.Cast(itype, n) + c(127, "int32"), c(23, "int32")))
    return p * scale


def sigmoid(x):
    """sigmoid(x) for float32 PrimExprs (scalar or vector)."""
    lanes = _lanes(x)
    one = T.broadcast(T.float32(1), lanes) if lanes > 1 else T.float32(1)
    return one / (one + exp(-x))


def quantize_macro(kp: int, lanes: int):
    """Row `row` of v [rows, kp] fp32 (zero padded) -> xq8 [rows, kp] int8, xs [rows, kp/32] (step),
    xsum [rows, kp/32]: the sum of the *rounded* values per block (xs * sum of codes).

    The kernels compute sum_k (S q + O) x as S * sum(q x) + O * sum(x); with both sums over the
    same rounded x the rounding error is weighted by the weights themselves, as in a plain
    product with rounded activations. The exact sum(x) would weight it by S q = w - O instead,
    which for offset formats is several times larger (measured: logits cosine 0.985 -> 0.997)."""
    blocks = kp // ACT_BLOCK

    @T.macro
    def quantize(v, xq8, xs, xsum, row):
        amax = T.alloc_buffer((1,), "float32", scope="local")
        total = T.alloc_buffer((1,), "int32", scope="local")
        for b in range(blocks):
            amax[0] = T.float32(0)
            for i in range(ACT_BLOCK):
                amax[0] = T.max(amax[0], T.abs(v[row, b * ACT_BLOCK + i]))
            inv = T.Select(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
            for i in T.vectorized(ACT_BLOCK):
                xq8[row, b * ACT_BLOCK + i] = T.Cast("int8", T.nearbyint(v[row, b * ACT_BLOCK + i] * inv))
            total[0] = 0
            for i in range(ACT_BLOCK):
                total[0] = total[0] + T.Cast("int32", xq8[row, b * ACT_BLOCK + i])
            xs[row, b] = amax[0] / T.float32(127)
            xsum[row, b] = T.Cast("float32", total[0]) * (amax[0] / T.float32(127))

    return quantize


def block_sums_macro(kp: int):
    """Row `row` of v [rows, kp] fp32 -> xsum [rows, kp/32] (for the exact fp32-activation kernels)."""
    blocks = kp // ACT_BLOCK

    @T.macro
    def block_sums(v, xsum, row):
        total = T.alloc_buffer((1,), "float32", scope="local")
        for b in range(blocks):
            total[0] = T.float32(0)
            for i in range(ACT_BLOCK):
                total[0] = total[0] + v[row, b * ACT_BLOCK + i]
            xsum[row, b] = total[0]

    return block_sums


def rms_norm_macro(k: int, kp: int, eps: float, lanes: int):
    """v[i] = w[i] * (x[i] * (1 / sqrt(mean(x^2) + eps))) for i < k, 0 beyond (onnxruntime's order)."""
    chunks, tail = divmod(k, lanes)

    @T.macro
    def rms_norm(x, x_off, w, w_off, v, row):
        # `lanes` partial sums: one serial chain of k dependent adds cost ~4 cycles per input
        # (50 us per 128-token prefill GEMM at k = 576), more than the AMX product itself
        partial = T.alloc_buffer((lanes,), "float32", scope="local")
        total = T.alloc_buffer((1,), "float32", scope="local")
        for i in T.vectorized(lanes):
            partial[i] = T.float32(0)
        for o in range(chunks):
            for i in T.vectorized(lanes):
                partial[i] = partial[i] + x[x_off + o * lanes + i] * x[x_off + o * lanes + i]
        total[0] = T.float32(0)
        for i in range(lanes):
            total[0] = total[0] + partial[i]
        for i in range(tail):
            total[0] = total[0] + x[x_off + chunks * lanes + i] * x[x_off + chunks * lanes + i]
        r = T.float32(1) / T.sqrt(total[0] / T.float32(k) + T.float32(eps))
        for o in range(chunks):
            for i in T.vectorized(lanes):
                v[row, o * lanes + i] = w[w_off + o * lanes + i] * (x[x_off + o * lanes + i] * r)
        for i in range(tail):
            v[row, chunks * lanes + i] = w[w_off + chunks * lanes + i] * (x[x_off + chunks * lanes + i] * r)
        for i in range(kp - k):
            v[row, k + i] = T.float32(0)

    return rms_norm


def copy_macro(k: int, kp: int, lanes: int):
    """Macro: row `row` of v [rows, kp] = x[x_off:x_off+k] as is, zero padded to kp."""
    chunks, tail = divmod(k, lanes)

    @T.macro
    def copy(x, x_off, v, row):
        for o in range(chunks):
            for i in T.vectorized(lanes):
                v[row, o * lanes + i] = x[x_off + o * lanes + i]
        for i in range(tail):
            v[row, chunks * lanes + i] = x[x_off + chunks * lanes + i]
        for i in range(kp - k):
            v[row, k + i] = T.float32(0)

    return copy


def swiglu_macro(k: int, kp: int, lanes: int):
    """v[i] = silu(gate[i]) * up[i], gate = x[x_off:x_off+k], up = x[x_off+k:x_off+2k]."""
    chunks, tail = divmod(k, lanes)

    @T.macro
    def swiglu(x, x_off, v, row):
        for o in range(chunks):
            for i in T.vectorized(lanes):
                v[row, o * lanes + i] = (x[x_off + o * lanes + i] * sigmoid(x[x_off + o * lanes + i])) \
                    * x[x_off + k + o * lanes + i]
        for i in range(tail):
            v[row, chunks * lanes + i] = (x[x_off + chunks * lanes + i] * sigmoid(x[x_off + chunks * lanes + i])) \
                * x[x_off + k + chunks * lanes + i]
        for i in range(kp - k):
            v[row, k + i] = T.float32(0)

    return swiglu


def prologue_macro(kind: str, k: int, kp: int, eps: float, lanes: int):
    """A GEMM's per-token prologue: "norm" (RMSNorm), "swiglu" or "plain" (a copy)."""
    if kind == "norm":
        return rms_norm_macro(k, kp, eps, lanes)
    if kind == "swiglu":
        return swiglu_macro(k, kp, lanes)
    return copy_macro(k, kp, lanes)
