"""GPTQ: error-compensated rounding of one weight matrix (Frantar et al., 2022).

Round-to-nearest rounds every weight on its own. GPTQ rounds the input columns one at a
time and moves each column's rounding error onto the columns not yet rounded, in the
proportions that keep the layer's output on the calibration inputs closest to the fp32
output: for inputs X (tokens x in) the output error of a weight change D is
trace(D H D^T) with H = X^T X, and the optimal update after rounding column j is
-err_j * Hinv[j, j+1:] / Hinv[j, j], with Hinv read from the upper Cholesky factor of H^-1
(so no matrix is re-inverted per column). Columns go in blocks: within a block the update
is per column, to the rest of the matrix once per block.

The grid (scales, zero points, minimums) is round-to-nearest's (`quant_formats.quantize`),
so every format it writes (int4 sym/asym/min with fp16 or 8-bit scales, int8, any block)
keeps its side tensors' layout. For blocked formats with fp16/fp32 scales each group's grid
is refitted when GPTQ reaches it, from the weights as the earlier columns' errors left them
(as in the paper); 8-bit scales (one step per row over all groups) and `act_order` (groups
visited out of order) keep the grid of the original weights. With H = identity nothing moves
and codes and grid are round-to-nearest's (a test).
"""

from __future__ import annotations

import numpy as np

from edgefold.passes.quantize import quant_formats as qf

DAMPING = 0.01  # fraction of the mean diagonal added to H (numerical safety for rank-deficient X)
COLUMN_BLOCK = 128  # columns rounded per lazy-update block


def gptq_quantize(weight: np.ndarray, fmt: qf.Format, layout: qf.Layout, hessian: np.ndarray, *,
                  damping: float = DAMPING, act_order: bool = False, search: bool = False,
                  importance: np.ndarray | None = None) -> qf.QuantizedWeight:
    """`weight` (2-D, fp32) rounded to `fmt` by GPTQ against `hessian` (in x in, the mean of
    x x^T over calibration tokens of the input that multiplies the weight's input axis).
    Formats without an integer grid (fp32, fp16, fp8) and other ranks are rounded to nearest."""
    q = qf.quantize(weight, fmt, layout, search=search, importance=importance)
    if fmt.kind not in ("int4", "int8") or weight.ndim != 2:
        return q
    width = weight.shape[layout.in_axis]
    if hessian.shape != (width, width) or not np.all(np.isfinite(hessian)):
        raise ValueError(f"GPTQ: Hessian of shape {hessian.shape} for a weight with {width} inputs")
    lo, hi = _code_range(q)
    rows_first = layout.in_axis == 1  # work on [outputs, inputs]

    def columns(array: np.ndarray) -> np.ndarray:
        full = np.broadcast_to(array, weight.shape)
        return np.array(full if rows_first else full.T, dtype=np.float64)

    w = columns(weight)
    scale = columns(q.per_element(q.scale.astype(np.float32)))
    zero = columns(q.per_element(q.zero_point.astype(np.float32))) if q.zero_point is not None else np.zeros_like(w)
    minimum = columns(q.per_element(q.minimum.astype(np.float32))) if q.minimum is not None else np.zeros_like(w)

    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0  # inputs never seen: nothing to compensate for
    h[dead, dead] = 1.0
    h += np.eye(width) * damping * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(width)
    w, scale, zero, minimum = (a[:, order] for a in (w, scale, zero, minimum))
    h = h[np.ix_(order, order)]
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = upper^T upper
    scale32, zero32, minimum32 = (a.astype(np.float32) for a in (scale, zero, minimum))

    # Groups refitted as they are reached (in input order, fp16/fp32 scales: -s8 scales share a
    # per-row step over all groups, and act_order visits groups out of order; those keep the
    # grid of the original weights).
    dynamic = (not act_order and fmt.scale_bits == 16 and q.block > 0 and q.axis == layout.in_axis
               and COLUMN_BLOCK % q.block == 0)
    codes = np.empty_like(w)
    for start in range(0, width, COLUMN_BLOCK):
        end = min(start + COLUMN_BLOCK, width)
        block = w[:, start:end].copy()
        errors = np.empty_like(block)
        for j in range(end - start):
            c = start + j
            if dynamic and c % q.block == 0:
                n = min(q.block, width - c)
                grid = _refit_group(q, fmt, layout, block[:, j:j + n], c // q.block, search,
                                    None if importance is None else np.asarray(importance)[c:c + n])
                for array, array32, row in zip((scale, zero, minimum), (scale32, zero32, minimum32), grid):
                    array[:, c:c + n] = row[:, None]
                    array32[:, c:c + n] = row.astype(np.float32)[:, None]
            # codes in fp32 arithmetic, as round-to-nearest computes them (identical when nothing moved)
            x = block[:, j].astype(np.float32)
            s, z, m = scale32[:, c], zero32[:, c], minimum32[:, c]
            code = np.where(s > 0, np.clip(np.rint((x - m) / np.where(s > 0, s, 1)) + z, lo, hi), z)
            rounded = (code.astype(np.float64) - zero[:, c]) * scale[:, c] + minimum[:, c]
            codes[:, c] = code
            error = (block[:, j] - rounded) / upper[c, c]
            block[:, j:] -= np.outer(error, upper[c, c:end])
            errors[:, j] = error
        w[:, end:] -= errors @ upper[start:end, end:]

    restored = np.empty_like(codes)
    restored[:, order] = codes
    q.codes = (restored if rows_first else restored.T).astype(q.codes.dtype)
    return q


def _refit_group(q: qf.QuantizedWeight, fmt: qf.Format, layout: qf.Layout, current: np.ndarray, group: int,
                 search: bool, importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest's grid for one group of input columns as they are now (errors of the
    columns before it moved in), written into q's side tensors; returns (scale, zero, minimum)
    per output row, as stored."""
    piece = (current if layout.in_axis == 1 else current.T).astype(np.float32)
    fitted = qf.quantize(piece, fmt, layout, search=search, importance=importance)
    index = [slice(None), slice(None)]
    index[q.axis] = group
    rows = []
    for side in ("scale", "zero_point", "minimum"):
        target = getattr(q, side)
        if target is None:
            rows.append(np.zeros(current.shape[0]))
            continue
        target[tuple(index)] = np.take(getattr(fitted, side), 0, axis=q.axis).astype(target.dtype)
        rows.append(target[tuple(index)].astype(np.float64))
    return rows[0], rows[1], rows[2]


def _code_range(q: qf.QuantizedWeight) -> tuple[int, int]:
    """The integer codes this weight's format stores (as round-to-nearest wrote them)."""
    if q.format.kind == "int8":
        return -127, 127
    if q.codes.dtype == np.int8:  # int4 sym (and centred -s8 codes)
        return -8, 7
    return 0, 15


def output_error(weight: np.ndarray, approx: np.ndarray, layout: qf.Layout, hessian: np.ndarray) -> float:
    """Relative output error on the calibration inputs: trace(D H D^T) / trace(W H W^T)."""
    d = (approx - weight).astype(np.float64)
    w = weight.astype(np.float64)
    if layout.in_axis == 0:
        d, w = d.T, w.T
    return float(np.einsum("ij,jk,ik->", d, hessian, d) / max(np.einsum("ij,jk,ik->", w, hessian, w), 1e-30))
