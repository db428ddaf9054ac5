"""Deterministic k-means over channel feature vectors (scikit-learn).

Channels are rows of `features`. The result is a label per channel, renumbered so
cluster j is the one whose first member comes j-th in channel order: folded layers
keep the original channel order as far as possible, and equal inputs give equal
bytes. k-means is seeded from Ward's agglomerative clustering (scipy), which is
itself deterministic and already close to optimal when k is near n — the common case
at folding ratios of 10–50% — so Lloyd iterations converge in a few steps.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import KMeans


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by the index of their first member (0, 1, 2, ...)."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first, kind="stable")
    remap = np.empty(labels.max() + 1, dtype=np.int64)
    remap[labels[first[order]]] = np.arange(len(order))
    return remap[labels]


def ward_tree(features: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Ward linkage of the rows (scipy's linkage matrix). Weighted rows are scaled
    by sqrt(weight), so merge costs count heavy channels more."""
    x = np.asarray(features, dtype=np.float64)
    if sample_weight is not None:
        x = x * np.sqrt(np.asarray(sample_weight, dtype=np.float64))[:, None]
    return linkage(x, method="ward")


def ward_labels(tree: np.ndarray, k: int) -> np.ndarray:
    """Labels (canonical order) from cutting a Ward tree into at most `k` clusters."""
    return canonical_labels(fcluster(tree, t=k, criterion="maxclust") - 1)


def kmeans_labels(features: np.ndarray, k: int, *, seed: int = 0, sample_weight: np.ndarray | None = None,
                  init_labels: np.ndarray | None = None, max_iter: int = 100) -> np.ndarray:
    """k-means labels (canonical order) of the rows of `features` into `k` clusters."""
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if k >= n:
        return np.arange(n)
    if k <= 0:
        raise ValueError("k must be positive")
    if init_labels is None:
        init_labels = ward_labels(ward_tree(x, sample_weight), k)
    init_labels = canonical_labels(init_labels)
    if init_labels.max() + 1 != k:  # ties in the tree can give fewer clusters: fall back to k-means++
        init = "k-means++"
    else:
        init = _centroids(x, init_labels, k, sample_weight)
    model = KMeans(n_clusters=k, init=init, n_init=1, max_iter=max_iter, tol=1e-6, random_state=seed,
                   algorithm="lloyd")
    labels = model.fit(x, sample_weight=sample_weight).labels_
    if len(np.unique(labels)) < k:  # an emptied cluster: keep the (valid) initial partition
        labels = init_labels
    return canonical_labels(labels)


def _centroids(x: np.ndarray, labels: np.ndarray, k: int, sample_weight: np.ndarray | None) -> np.ndarray:
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x * w[:, None])
    counts = np.bincount(labels, weights=w, minlength=k)
    return sums / counts[:, None]
