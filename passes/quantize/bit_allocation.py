"""Mixed precision: how much each weight suffers in each format, and which format each gets.

Sensitivity is the relative error a quantized weight puts on the output of every node that
reads it: for MatMul y = x W the output error energy is sum_i E[x_i^2] |dW_i|^2 (inputs
treated as uncorrelated), divided by the output energy sum_i E[x_i^2] |W_i|^2. Data-free,
E[x_i^2] is taken from the RMS/LayerNorm scale that feeds the node when there is one (else
1); with calibration it is measured on real inputs. An embedding table is read by rows,
weighted by how often each token occurs (uniform when data-free). A tied weight sums the
errors of all its readers. Each reader's error is scaled by its share of the signal: a
branch added into a residual stream with N branches gets 1/N (see passes/quantize/quantize.py).

The allocator picks one format per weight to minimise the summed error within a byte
budget: a multiple-choice knapsack solved exactly by dynamic programming over budget
units (sizes rounded up, so the budget is never exceeded), then topped up greedily with
the exact byte counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgefold.errors import EdgefoldError


@dataclass
class Reader:
    """How one node reads a weight: `energy[i]` weighs index i of `axis` (None = all equal)."""

    axis: int
    energy: np.ndarray | None = None
    share: float = 1.0  # how much of the model's signal passes through this reader


def relative_error(weight: np.ndarray, approx: np.ndarray, readers: list[Reader]) -> float:
    """Sum over readers of share x output error energy / output energy (0 for an exact copy)."""
    diff2 = np.square(approx - weight, dtype=np.float32)
    sig2 = np.square(weight, dtype=np.float32)
    total = 0.0
    for reader in readers:
        others = tuple(i for i in range(weight.ndim) if i != reader.axis)
        noise = diff2.sum(axis=others, dtype=np.float64)
        signal = sig2.sum(axis=others, dtype=np.float64)
        energy = np.ones_like(noise) if reader.energy is None else np.asarray(reader.energy, np.float64)
        total += reader.share * float(noise @ energy) / max(float(signal @ energy), 1e-30)
    return total


@dataclass(frozen=True)
class Option:
    """One candidate format for a weight: the bytes it stores and the relative error it causes."""

    format: str
    nbytes: int
    error: float


def pareto(options: list[Option]) -> list[int]:
    """Indices of options worth considering: each is cheaper than every option with less error."""
    order = sorted(range(len(options)), key=lambda i: (options[i].nbytes, options[i].error, options[i].format))
    keep, best = [], math.inf
    for index in order:
        if options[index].error < best:
            keep.append(index)
            best = options[index].error
    return keep


def allocate(layers: list[list[Option]], budget_bytes: int, *, resolution: int = 200_000) -> list[int]:
    """One option index per layer: least total error with total bytes <= budget_bytes.

    Raises EdgefoldError when even the smallest option of every layer does not fit.
    """
    candidates = [pareto(options) for options in layers]
    smallest = sum(layers[i][c[0]].nbytes for i, c in enumerate(candidates))
    if smallest > budget_bytes:
        raise EdgefoldError(f"budget of {budget_bytes:,} bytes is impossible: the smallest formats allowed "
                            f"need {smallest:,} bytes")
    spare = budget_bytes - smallest
    room = sum(layers[i][c[-1]].nbytes - layers[i][c[0]].nbytes for i, c in enumerate(candidates))
    if spare >= room:  # everything gets its most accurate option
        return [c[-1] for c in candidates]

    unit = max(1, math.ceil(spare / resolution))
    slots = spare // unit
    best = np.zeros(slots + 1)  # best[b]: least error of the layers so far within b units
    choices = np.zeros((len(layers), slots + 1), dtype=np.int16)
    for layer, (options, keep) in enumerate(zip(layers, candidates)):
        base = options[keep[0]].nbytes
        new = np.full(slots + 1, np.inf)
        for k, index in enumerate(keep):
            cost = math.ceil((options[index].nbytes - base) / unit)
            if cost > slots:
                break
            shifted = np.full(slots + 1, np.inf)
            shifted[cost:] = best[: slots + 1 - cost] + options[index].error
            better = shifted < new
            new[better] = shifted[better]
            choices[layer, better] = k
        best = new
    picked, b = [0] * len(layers), slots
    for layer in range(len(layers) - 1, -1, -1):
        k = int(choices[layer, b])
        picked[layer] = candidates[layer][k]
        options, keep = layers[layer], candidates[layer]
        b -= math.ceil((options[keep[k]].nbytes - options[keep[0]].nbytes) / unit)
    return _top_up(layers, candidates, picked, budget_bytes)


def _top_up(layers, candidates, picked, budget_bytes) -> list[int]:
    """Spend what rounding left over: best error reduction per byte first, exact sizes."""
    used = sum(layers[i][p].nbytes for i, p in enumerate(picked))
    while True:
        best_gain, best_move = 0.0, None
        for layer, keep in enumerate(candidates):
            current = layers[layer][picked[layer]]
            for index in keep:
                option = layers[layer][index]
                extra = option.nbytes - current.nbytes
                if option.error < current.error and extra <= budget_bytes - used:
                    gain = (current.error - option.error) / max(extra, 1)
                    if gain > best_gain:
                        best_gain, best_move = gain, (layer, index, extra)
        if best_move is None:
            return picked
        layer, index, extra = best_move
        picked[layer] = index
        used += extra
