"""The linear algebra of folding, independent of any graph.

A layer's n channels go to k: folding merges clusters (producer rows -> cluster
means, consumer columns -> cluster sums), the pruning baselines keep k channels
(selection). Both are a pair of maps, so one surgery routine serves all methods.
"""

from __future__ import annotations

import math

import numpy as np


def assignment(labels: np.ndarray, k: int | None = None) -> np.ndarray:
    """C, the n x k 0/1 cluster-membership matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if k is None else k
    matrix = np.zeros((len(labels), k))
    matrix[np.arange(len(labels)), labels] = 1.0
    return matrix


def fold_maps(labels: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(producer map M = (C^T W C)^-1 C^T W, consumer map C) for a clustering.

    With `weights` (per channel, positive) the centroid is a weighted mean; without,
    M is the plain cluster mean of the method notes. Singletons map to themselves
    exactly (a row with a single 1), so ratio 0 is bit-exact.
    """
    members = assignment(labels)
    w = np.ones(members.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    weighted = members * w[:, None]
    producer = (weighted / weighted.sum(axis=0, keepdims=True)).T
    singles = members.sum(axis=0) == 1
    producer[singles] = members[:, singles].T  # exact 1.0, no division round-off
    return producer, members


def cluster_correlation(labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """E[c] per cluster: mean pairwise Pearson correlation of the members' weight rows
    (the data-free stand-in for the correlation of their activations). 1 for singletons."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    result = np.ones(k)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    # sum over i != j of <x_i, x_j> = |sum x|^2 - sum |x_i|^2 (= size, unit rows)
    pair_sum = np.einsum("kd,kd->k", sums, sums) - sizes
    multi = sizes > 1
    result[multi] = pair_sum[multi] / (sizes[multi] * (sizes[multi] - 1))
    return np.clip(result, 0.0, 1.0)


def fold_ar_scale(labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Fold-AR: N / sqrt(N + (N^2 - N) E[c]) per cluster — undoes the variance lost
    when N partly correlated channels are averaged into one. 1 for singletons."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels).astype(np.float64)
    corr = cluster_correlation(labels, features)
    return sizes / np.sqrt(sizes + (sizes * sizes - sizes) * corr)


def magnitude_keep(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest-scoring channels, sorted (ties broken by index)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:k])


def random_keep(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False))


def kept_channels(n: int, ratio: float, multiple: int = 1, minimum: int = 1) -> int:
    """Channels left after removing `ratio` of n, rounded to a multiple (never below
    `minimum`, never above n; n itself is kept when rounding would exceed it)."""
    if ratio <= 0:
        return n
    k = n * (1.0 - ratio)
    if multiple > 1:
        k = multiple * math.floor(k / multiple + 0.5)
    k = int(round(k))
    return int(min(n, max(minimum, k)))
