"""The GEMM epilogue shared by the vector and AMX kernels: one token's results of a row group into y."""

from __future__ import annotations

from tvm.script import tirx as T

from edgefold.targets.tvm.kernels.isa import ROWS


@T.macro
def store_row(accf, r, y, base, Bias, g, full, n, lanes, sub, has_bias, accumulate):
    """Write (or add, plus the bias) one token's 16 results of row group g at y[base + g*16 ...]:
    acc[r*16 + q] for row q of the group, `sub` vectors of `lanes`; the last, partial group
    (g >= full) element by element up to n."""
    if g < full:
        for j in T.unroll(sub):
            value = accf[T.ramp(r * ROWS + j * lanes, 1, lanes)]
            if has_bias:
                value = value + Bias[T.ramp(g * ROWS + j * lanes, 1, lanes)]
            if accumulate:
                y[T.ramp(base + g * ROWS + j * lanes, 1, lanes)] = y[T.ramp(base + g * ROWS + j * lanes, 1, lanes)] + value
            else:
                y[T.ramp(base + g * ROWS + j * lanes, 1, lanes)] = value
    else:
        for q in range(ROWS):
            if g * ROWS + q < n:
                value = accf[r * ROWS + q]
                if has_bias:
                    value = value + Bias[g * ROWS + q]
                if accumulate:
                    y[base + g * ROWS + q] = y[base + g * ROWS + q] + value
                else:
                    y[base + g * ROWS + q] = value
