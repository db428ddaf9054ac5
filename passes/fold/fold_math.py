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
    """Indices of `k` of `n` channels drawn at random without replacement, sorted (the random baseline)."""
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


def anchor_assignment(importance: np.ndarray, features: np.ndarray, k: int,
                      protected: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, anchors) for an anchored fold of n channels down to k.

    Channels are folded away greedily, cheapest first, where the cost of folding channel
    i is importance_i x (1 - c_i^2) and c_i is its best cosine to a channel still kept:
    what folding it into that channel cannot recover. An exact duplicate costs nothing
    (and its twin then has no twin left, so it stays); a channel like no other costs its
    full importance. `importance` must be positive; protected channels always stay and,
    like the mean merge's singletons, take no members while another anchor exists.
    Every folded channel then joins the kept channel (anchor) it is most similar to.
    Anchors are numbered in channel order, so the folded layer keeps the channel order.
    """
    importance = np.asarray(importance, dtype=np.float64)
    n = len(importance)
    fixed = np.zeros(n, dtype=bool) if protected is None else np.asarray(protected, dtype=bool)
    k = min(int(k), n)
    if k < max(1, int(fixed.sum())):
        raise ValueError(f"cannot keep {k} of {n} channels with {int(fixed.sum())} protected")
    x = np.asarray(features, dtype=np.float64)
    # float32 similarities: n x n stays affordable for wide FFNs (11008^2 x 4 B = 0.5 GB).
    unit = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)).astype(np.float32)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    alive = np.ones(n, dtype=bool)
    partner = np.argmax(cosine, axis=1)

    def cost(rows: np.ndarray) -> np.ndarray:
        best = np.clip(cosine[rows, partner[rows]], 0.0, 1.0) if n > 1 else np.zeros(len(rows))
        return np.where(fixed[rows], np.inf, importance[rows] * (1.0 - best * best))

    costs = cost(np.arange(n))
    for _ in range(max(n - k, 0)):
        # Ties go to the highest index, so of two equal channels the first one stays.
        candidates = np.flatnonzero(alive)
        i = candidates[np.lexsort((-candidates, costs[candidates]))[0]]
        alive[i] = False
        costs[i] = np.inf
        stale = np.flatnonzero(alive & (partner == i))
        if len(stale) and alive.sum() > 1:
            masked = np.where(alive[None, :], cosine[stale], -np.inf)
            partner[stale] = np.argmax(masked, axis=1)
            costs[stale] = cost(stale)
    anchors = np.flatnonzero(alive)
    labels = np.empty(n, dtype=np.int64)
    labels[anchors] = np.arange(len(anchors))
    folded = np.flatnonzero(~alive)
    if len(folded):
        similarity = unit[folded] @ unit[anchors].T
        if not fixed[anchors].all():
            similarity[:, fixed[anchors]] = -np.inf
        labels[folded] = np.argmax(similarity, axis=1)
    return labels, anchors


def anchor_maps(labels: np.ndarray, anchors: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(producer map, consumer map) of an anchored fold.

    The producer keeps the anchors' own rows (a selection: averaging weakly similar
    rows, as cluster means do, blurs the one channel that mattered). A member j of
    anchor a is folded into the consumer with the least-squares coefficient of its
    pre-activation on the anchor's, beta = <r_j, r_a> / |r_a|^2 for isotropic inputs
    (clipped at 0: an anti-aligned channel is dropped, not subtracted). An exact
    duplicate gets beta = 1, so it folds with zero error as in plain folding.
    """
    labels = np.asarray(labels, dtype=np.int64)
    anchors = np.asarray(anchors, dtype=np.int64)
    n, k = len(labels), len(anchors)
    producer = np.zeros((k, n))
    producer[np.arange(k), anchors] = 1.0
    consumer = np.zeros((n, k))
    consumer[anchors, np.arange(k)] = 1.0
    rows = np.asarray(rows, dtype=np.float64)
    members = np.setdiff1d(np.arange(n), anchors)
    if len(members):
        anchor_rows = rows[anchors[labels[members]]]
        energy = np.einsum("nd,nd->n", anchor_rows, anchor_rows)
        beta = np.einsum("nd,nd->n", rows[members], anchor_rows) / np.where(energy > 0, energy, 1.0)
        consumer[members, labels[members]] = np.clip(beta, 0.0, None)
    return producer, consumer
