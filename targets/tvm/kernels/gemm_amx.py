"""Prefill GEMM on Intel AMX tiles (bf16): the same packed low-bit weights, 16x16 tile products.

    y[m, y_off + n] (+)= sum_k W[n, k] * a[m, k]        m < M, n < N

On CPUs with AMX (Sapphire Rapids and later) one `tdpbf16ps` multiplies a 16x32 bf16 tile by a
32x16 one into 16x16 fp32 accumulators: 8,192 multiply-adds per instruction, against 1,024 per
AVX-512 `vpdpbusd` (and with no per-block int32 -> float epilogue, because the block scales
are applied while the weights are decoded). For one pair of 16-row weight groups:

1. decode: the groups' packed codes over the whole K become bf16 weights `q * S + O` in a
   per-thread scratch (K x 32 x 2 bytes: 100 KB for K = 1536, resident in L2), in the pair
   layout AMX reads for its second operand ([k/2][n][2]);
2. product: for every 32 tokens, 4 accumulator tiles (2 token tiles x 2 groups) start at zero,
   take K/32 steps of 2 activation tiles x 2 weight tiles, and go through a small staging
   buffer into y (set or add, plus the bias). Weights are decoded once per prompt, not once
   per token tile.

Activations: the prologue (RMSNorm / copy / SwiGLU, as in the other kernels) then bf16 with
round-to-nearest-even: 8 significant bits, about what the int8-per-block activations of the
VNNI kernel keep (and no requantization of the weights: their bf16 rounding error, 2^-9
relative, is far below the 4-bit grid's).

Linux gives a process the AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM,
kernel 5.16+); the kernel asks itself on every call (a no-op syscall once granted), so any
host process that loads the library, the C++ runner included, can run it. Each thread loads
the tile configuration (8 tiles of 16 rows x 64 bytes) before its first tile instruction and
releases the tiles at the end.

Used when the target has amx-bf16 (`Isa.amx`), the weights are an integer format and the
activations may be rounded (the int8-activation mode; the exact fp32-activation kernels never
take this path). Any M >= 16, N and K: missing tokens and rows are zeros whose results are
not written.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from edgefold.targets.tvm.kernels import act
from edgefold.targets.tvm.kernels.epilogue import store_row
from edgefold.targets.tvm.kernels.gemv import SCHEDULED, STORAGE_DTYPES
from edgefold.targets.tvm.kernels.isa import ROWS
from edgefold.targets.tvm.kernels.packing import IntFormat, padded_k
from edgefold.targets.tvm.kernels.weight_element import block_offset, code_vector, side_value

TILE_ROWS = 16  # rows of every tile
TILE_BYTES = 64  # bytes per tile row: 32 bf16 or 16 fp32
K_STEP = 32  # bf16 inputs per tile product
TOKENS = 2 * TILE_ROWS  # tokens per pass (2 activation tiles)
_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def fits(spec) -> bool:
    """Whether a GemmSpec runs on AMX tiles (else the vector kernel serves it): integer weights,
    activations that may be rounded (not the exact fp32-activation mode), a prompt of at least
    one token tile."""
    return spec.isa.amx and spec.isa.has_int_dot and isinstance(spec.fmt, IntFormat) and spec.m >= TILE_ROWS


def _tile(op: str, *args):
    return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{op}", *args))


def _bf16_bits(value, lanes: int):
    """fp32 x lanes -> uint32 x lanes whose high 16 bits are the bf16 (round to nearest even)."""
    bits = T.reinterpret(f"uint32x{lanes}", value)
    odd = T.bitwise_and(T.shift_right(bits, T.broadcast(T.uint32(16), lanes)), T.broadcast(T.uint32(1), lanes))
    return bits + T.broadcast(T.uint32(0x7FFF), lanes) + odd


def build_amx_gemm(spec) -> tvm.tirx.PrimFunc:
    """The prefill GEMM kernel of a GemmSpec on Intel AMX bf16 tiles."""
    fmt = spec.fmt
    L = 16
    N, K, KP, M = spec.n, spec.k, padded_k(spec.k), spec.m
    G, FULL = -(-N // ROWS), N // ROWS
    PAIRS = -(-G // 2)
    MP = -(-M // TOKENS) * TOKENS  # tokens padded to whole token tiles
    XW = KP + (K_STEP if (KP * 2) % 4096 == 0 else 0)  # activation row stride, off 4 KB multiples
    PER_WORD = 8 if fmt.bits == 4 else 4
    KW = KP // PER_WORD
    WB = 1 if not fmt.block else -(-KP // fmt.block)
    BW = KP if not fmt.block else fmt.block
    WPB = -(-BW // PER_WORD)  # packed words per weight block
    NT = max(1, min(spec.isa.cores, PAIRS))
    NTM = max(1, min(spec.isa.cores, M))
    PPER, MPER = -(-PAIRS // NT), -(-M // NTM)
    KS = KP // K_STEP
    SW, OW, norm_prologue, accumulate = spec.src_width, spec.out_width, spec.prologue == "norm", spec.accumulate
    has_bias = spec.bias
    sdt, mdt = STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32")
    prologue = act.prologue_macro(spec.prologue, K, KP, spec.eps, L)  # as in the vector GEMM
    hi_mask = T.broadcast(T.uint32(0xFFFF0000), L)

    def code(word, p: int):
        return code_vector(word, fmt.bits, p, L)

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
        xa = T.alloc_buffer((MP, XW), "uint16")  # bf16 activations, one tile row per token
        wt = T.alloc_buffer((NT, 2, KP // 2, ROWS), "uint32")  # per thread: 2 groups, bf16 pairs [k/2][n]
        if T.call_extern("int64", "syscall", T.int64(_ARCH_PRCTL), T.int64(_ARCH_REQ_XCOMP_PERM),
                         T.int64(_XFEATURE_XTILEDATA)) != T.int64(0):
            # no tile state for this process (kernel < 5.16, or a too-small sigaltstack): NaNs,
            # which the build's checks report, rather than a SIGILL on the first tile instruction
            for i in range(M * OW):
                y[i] = T.reinterpret("float32", T.uint32(0x7FC00000))
        else:
            for c in T.parallel(NTM):  # one chunk of tokens per thread
                for mi in range(MPER):
                    if c * MPER + mi < M:
                        if norm_prologue:
                            prologue(src, src_off + (c * MPER + mi) * SW, Norm, 0, v, c * MPER + mi)
                        else:
                            prologue(src, src_off + (c * MPER + mi) * SW, v, c * MPER + mi)
                        for o in range(KP // L):
                            xa[c * MPER + mi, T.ramp(o * L, 1, L)] = T.Cast(f"uint16x{L}", T.shift_right(
                                _bf16_bits(v[c * MPER + mi, T.ramp(o * L, 1, L)], L), T.broadcast(T.uint32(16), L)))
            for m in range(MP - M):  # the last token tile's missing rows: zeros (results discarded)
                for i in range(KP):
                    xa[M + m, i] = T.uint16(0)
            for c in T.parallel(NT):  # one contiguous chunk of group pairs per thread
                config = T.alloc_buffer((64,), "uint8", scope="local")
                stage = T.alloc_buffer((4 * TILE_ROWS * ROWS,), "float32", scope="local")  # the 4 accumulators
                side = T.alloc_buffer((2, ROWS), "float32", scope="local")  # a block's scale and offset
                for i in range(64):
                    config[i] = T.uint8(0)
                config[0] = T.uint8(1)  # palette 1
                for t in range(8):  # every tile: 16 rows of 64 bytes
                    config[16 + 2 * t] = T.uint8(TILE_BYTES)
                    config[48 + t] = T.uint8(TILE_ROWS)
                _tile("ldtilecfg", T.address_of(config[0]))
                for pi in range(PPER):
                    if c * PPER + pi < PAIRS:
                        g0 = (c * PPER + pi) * 2
                        for b in range(2):  # decode the pair's weights to bf16, block scales applied
                            if g0 + b < G:
                                for wb in range(WB):  # the block's scale and offset once, then its words
                                    side[0, T.ramp(0, 1, L)] = side_value(S, Ss, Sz, g0 + b, wb, T.ramp(0, 1, L),
                                                                          fmt.scale, L)
                                    side[1, T.ramp(0, 1, L)] = block_offset(fmt, side[0, T.ramp(0, 1, L)], Z, Mn, Ms, Mz,
                                                                            g0 + b, wb, T.ramp(0, 1, L), L)
                                    for w in range(WPB):
                                        if wb * WPB + w < KW:
                                            kw = wb * WPB + w
                                            word = W[g0 + b, kw, T.ramp(0, 1, L)]
                                            for pp in T.unroll(PER_WORD // 2):
                                                even = _bf16_bits(code(word, 2 * pp) * side[0, T.ramp(0, 1, L)]
                                                                  + side[1, T.ramp(0, 1, L)], L)
                                                odd = _bf16_bits(code(word, 2 * pp + 1) * side[0, T.ramp(0, 1, L)]
                                                                 + side[1, T.ramp(0, 1, L)], L)
                                                wt[c, b, kw * (PER_WORD // 2) + pp, T.ramp(0, 1, L)] = T.bitwise_or(
                                                    T.bitwise_and(odd, hi_mask),
                                                    T.shift_right(even, T.broadcast(T.uint32(16), L)))
                            else:  # an odd group count: the pair's second group is zeros
                                for kk in range(KP // 2):
                                    wt[c, b, kk, T.ramp(0, 1, L)] = T.broadcast(T.uint32(0), L)
                        for mt in range(MP // TOKENS):
                            for t in T.unroll(4):
                                _tile("tilezero", T.uint8(t))
                            for ks in range(KS):
                                _tile("tileloadd64", T.uint8(4), T.address_of(xa[mt * TOKENS, ks * K_STEP]), T.int64(XW * 2))
                                _tile("tileloadd64", T.uint8(5), T.address_of(xa[mt * TOKENS + TILE_ROWS, ks * K_STEP]),
                                      T.int64(XW * 2))
                                _tile("tileloadd64", T.uint8(6), T.address_of(wt[c, 0, ks * (K_STEP // 2), 0]),
                                      T.int64(TILE_BYTES))
                                _tile("tileloadd64", T.uint8(7), T.address_of(wt[c, 1, ks * (K_STEP // 2), 0]),
                                      T.int64(TILE_BYTES))
                                _tile("tdpbf16ps", T.uint8(0), T.uint8(4), T.uint8(6))
                                _tile("tdpbf16ps", T.uint8(1), T.uint8(4), T.uint8(7))
                                _tile("tdpbf16ps", T.uint8(2), T.uint8(5), T.uint8(6))
                                _tile("tdpbf16ps", T.uint8(3), T.uint8(5), T.uint8(7))
                            # Through a staging buffer with 64-byte rows: tile stores straight into y at a
                            # row stride that is a multiple of 4 KB (3072 fp32) ran 2x slower (cache-set
                            # aliasing); vector rows also take the bias, the accumulate and the edges.
                            for t in T.unroll(4):
                                _tile("tilestored64", T.uint8(t), T.address_of(stage[t * TILE_ROWS * ROWS]),
                                          T.int64(TILE_BYTES))
                            for a in range(2):
                                for b in range(2):
                                    for r in range(TILE_ROWS):
                                        if mt * TOKENS + a * TILE_ROWS + r < M:
                                            # tile t's row r is "row" t*16 + r of the staged results
                                            store_row(stage, (a * 2 + b) * TILE_ROWS + r, y,
                                                      y_off + (mt * TOKENS + a * TILE_ROWS + r) * OW, Bias, g0 + b,
                                                      FULL, N, ROWS, 1, has_bias, accumulate)
                _tile("tilerelease")

    return gemm.with_attr("global_symbol", spec.name)
