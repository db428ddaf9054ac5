"""Spend a global channel budget across layers, from the weights alone.

Each layer brings a cost curve — the k-means/Ward inertia added by each further merge
(non-decreasing, so the curve is convex) — and a sensitivity weight. A greedy pass
over all layers' next merges, cheapest (weighted cost per removed parameter) first,
is then the optimal allocation for this separable convex problem. Merges are taken
`multiple` channels at a time so that widths stay on the device's preferred multiple.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


@dataclass
class LayerBudget:
    """One layer as the allocator sees it: width, parameters per channel, merge cost curve, sensitivity."""

    name: str
    width: int
    params_per_channel: int
    merge_costs: np.ndarray  # cost of the m-th merge, m = 1..width-1 (non-decreasing)
    sensitivity: float = 1.0
    min_keep: int = 1  # protected channels cannot be merged away


def merge_costs_from_tree(tree: np.ndarray) -> np.ndarray:
    """Ward linkage heights -> inertia added by each merge (height^2 / 2), made
    non-decreasing (Ward's heights are, up to float round-off)."""
    costs = tree[:, 2] ** 2 / 2.0
    return np.maximum.accumulate(costs)


def allocate(layers: list[LayerBudget], ratio: float, *, max_ratio: float = 1.0, multiple: int = 1,
             total_params: int | None = None) -> dict[str, int]:
    """Channels to keep per layer so that about `ratio` of all their parameters go.

    `total_params` is the parameter count the ratio refers to when layers share
    tensors (conv chains); by default the sum over layers of width x params per channel.
    """
    keep = {layer.name: layer.width for layer in layers}
    total = total_params if total_params is not None else sum(layer.width * layer.params_per_channel for layer in layers)
    target = ratio * total
    if target <= 0 or not layers:
        return keep
    floors = {layer.name: max(layer.min_keep, multiple if layer.width >= multiple else 1,
                              _ceil_to(layer.width * (1.0 - max_ratio), multiple)) for layer in layers}
    by_name = {layer.name: layer for layer in layers}
    heap: list[tuple[float, int, str]] = []
    for index, layer in enumerate(layers):
        step = _next_step(layer, keep[layer.name], floors[layer.name], multiple)
        if step is not None:
            heapq.heappush(heap, (step, index, layer.name))
    removed = 0.0
    while heap and removed < target:
        _, index, name = heapq.heappop(heap)
        layer = by_name[name]
        drop = _drop(layer.width, keep[name], multiple)
        # Stop before overshooting by more than half a step.
        if removed + drop * layer.params_per_channel - target > 0.5 * drop * layer.params_per_channel:
            continue
        keep[name] -= drop
        removed += drop * layer.params_per_channel
        step = _next_step(layer, keep[name], floors[name], multiple)
        if step is not None:
            heapq.heappush(heap, (step, index, name))
    return keep


def feasible_cap(cap: float, ratio: float) -> float:
    """A per-layer cap below the global ratio makes the budget infeasible: keep a little room above it."""
    return max(cap, min(0.95, ratio + 0.05))


def _ceil_to(value: float, multiple: int) -> int:
    return int(np.ceil(value / multiple - 1e-9) * multiple)


def _drop(width: int, kept: int, multiple: int) -> int:
    """Channels the next step removes: down to the next multiple below `kept`."""
    if multiple <= 1:
        return 1
    below = (kept - 1) // multiple * multiple
    return kept - below


def _next_step(layer: LayerBudget, kept: int, floor: int, multiple: int) -> float | None:
    drop = _drop(layer.width, kept, multiple)
    if kept - drop < floor or kept - drop < 1:
        return None
    merges_done = layer.width - kept
    cost = float(layer.merge_costs[merges_done:merges_done + drop].sum())
    return layer.sensitivity * cost / (drop * layer.params_per_channel)


def spectral_concentration(matrix: np.ndarray) -> float:
    """sigma_1 / ||M||_F: how much one direction dominates a weight matrix (1 = rank one)."""
    singular = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = np.sqrt((singular ** 2).sum())
    return float(singular[0] / total) if total > 0 else 0.0


def sensitivities(scores: dict[str, float], power: float) -> dict[str, float]:
    """(score / median score) ** power, so typical layers weigh ~1."""
    if not scores:
        return {}
    median = float(np.median(list(scores.values())))
    if median <= 0:
        return {name: 1.0 for name in scores}
    return {name: (value / median) ** power for name, value in scores.items()}
