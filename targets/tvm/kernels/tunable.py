"""The GEMV as MetaSchedule sees it: the same computation as the template, unscheduled.

`unscheduled_gemv(spec)` computes what `gemv.build_gemv(spec)` computes (with exact fp32
activations: decode each weight, multiply, sum) as plain SBlocks with no schedule, and
takes the same arguments, so a tuned version is a drop-in replacement for the template.

MetaSchedule needs static buffer shapes and no scalar arguments, so tuning runs on a twin
(`frozen=...`): the blob at its real size and the offsets of one layer as constants. The
schedule it finds is then replayed on the real function (its blocks and loops are the
same), see `llm.tuning`.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from edgefold.targets.tvm.kernels.gemv import STORAGE_DTYPES, GemvSpec
from edgefold.targets.tvm.kernels.isa import ROWS
from edgefold.targets.tvm.kernels.packing import IntFormat, padded_k
from edgefold.targets.tvm.kernels.weight_element import weight_element


def unscheduled_gemv(spec: GemvSpec, frozen: dict | None = None) -> tvm.tirx.PrimFunc:
    """The template's signature (src, blob, offsets..., y); with `frozen` = {"blob_size", slot: value}
    the tuning twin (src, blob[blob_size], y) with those offsets as constants."""
    fmt = spec.fmt
    N, K = spec.n, spec.k
    G = -(-N // ROWS)
    if isinstance(fmt, IntFormat):
        KP = padded_k(K)
        per_word = 8 if fmt.bits == 4 else 4
        wshape, wdt = (G, KP // per_word, ROWS), "int32"
        WB, block = (1 if not fmt.block else -(-KP // fmt.block)), (fmt.block or KP)
        sdt, mdt = STORAGE_DTYPES[fmt.scale], STORAGE_DTYPES.get(fmt.minimum, "float32")
    else:
        wshape, wdt = (G, K, ROWS), STORAGE_DTYPES[fmt.dtype]
        WB, block, sdt, mdt = 1, K, "float32", "float32"
    SRC, OUT, EPS = spec.src_len, spec.out_len, spec.eps
    prologue, accumulate, has_bias = spec.prologue, spec.accumulate, spec.bias

    @T.macro
    def body(src, blob, src_off, y_off, o_w, o_s, o_ss, o_sz, o_z, o_m, o_ms, o_mz, o_b, o_n, y):
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
        v = T.alloc_buffer((K,), "float32")
        ss = T.alloc_buffer((1,), "float32")
        t = T.alloc_buffer((N,), "float32")
        if prologue == "norm":
            for k in range(K):
                with T.sblock("sum_squares"):
                    vk = T.axis.reduce(K, k)
                    with T.init():
                        ss[0] = T.float32(0)
                    ss[0] = ss[0] + src[src_off + vk] * src[src_off + vk]
            for k in range(K):
                with T.sblock("normalize"):
                    vk = T.axis.spatial(K, k)
                    v[vk] = Norm[vk] * (src[src_off + vk] * (T.float32(1) / T.sqrt(ss[0] / T.float32(K) + T.float32(EPS))))
        elif prologue == "swiglu":
            for k in range(K):
                with T.sblock("swiglu"):
                    vk = T.axis.spatial(K, k)
                    v[vk] = src[src_off + vk] / (T.float32(1) + T.exp(-src[src_off + vk])) * src[src_off + K + vk]
        else:
            for k in range(K):
                with T.sblock("copy"):
                    vk = T.axis.spatial(K, k)
                    v[vk] = src[src_off + vk]
        for n, k in T.grid(N, K):
            with T.sblock("matvec"):
                vn, vk = T.axis.remap("SR", [n, k])
                with T.init():
                    t[vn] = T.float32(0)
                t[vn] = t[vn] + weight_element(fmt, block, (W, S, Ss, Sz, Z, Mn, Ms, Mz), vn // ROWS, vn % ROWS,
                                               vk) * v[vk]
        for n in range(N):
            with T.sblock("store"):
                vn = T.axis.spatial(N, n)
                if accumulate and has_bias:
                    y[y_off + vn] = y[y_off + vn] + t[vn] + Bias[vn]
                elif accumulate:
                    y[y_off + vn] = y[y_off + vn] + t[vn]
                elif has_bias:
                    y[y_off + vn] = t[vn] + Bias[vn]
                else:
                    y[y_off + vn] = t[vn]

    if frozen is None:
        @T.prim_func(s_tir=True)
        def gemv(src: T.Buffer((SRC,), "float32"), blob_h: T.handle, src_off: T.int64, y_off: T.int64,
                 o_w: T.int64, o_s: T.int64, o_ss: T.int64, o_sz: T.int64, o_z: T.int64, o_m: T.int64,
                 o_ms: T.int64, o_mz: T.int64, o_b: T.int64, o_n: T.int64, y: T.Buffer((OUT,), "float32")):
            T.func_attr({"tirx.noalias": True})
            nblob = T.int64()
            blob = T.match_buffer(blob_h, (nblob,), "uint8")
            body(src, blob, src_off, y_off, o_w, o_s, o_ss, o_sz, o_z, o_m, o_ms, o_mz, o_b, o_n, y)

        return gemv.with_attr("global_symbol", spec.name)

    c = {name: T.int64(int(frozen.get(name, 0))) for name in ("src_off", "y_off", "W", "S", "S_step", "S_zero", "Z",
                                                              "M", "M_step", "M_zero", "bias", "norm")}
    NBLOB = int(frozen["blob_size"])

    @T.prim_func(s_tir=True)
    def twin(src: T.Buffer((SRC,), "float32"), blob: T.Buffer((NBLOB,), "uint8"), y: T.Buffer((OUT,), "float32")):
        T.func_attr({"tirx.noalias": True})
        body(src, blob, c["src_off"], c["y_off"], c["W"], c["S"], c["S_step"], c["S_zero"], c["Z"], c["M"],
             c["M_step"], c["M_zero"], c["bias"], c["norm"], y)

    return twin.with_attr("global_symbol", spec.name)
