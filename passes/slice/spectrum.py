"""Singular-value spectra and the Kolmogorov–Smirnov distance between them.

The slice pass judges a pruned FFN1 matrix by how much its spectrum moved: the KS
statistic D = sup_x |F1(x) - F2(x)| between the empirical distributions of the
singular values of the original and the sliced matrix (PruneNet's reward). Computed
here in numpy so the number is the same as `scipy.stats.ks_2samp(...).statistic`
(the two-sided statistic) without scipy's p-value machinery in the training loop.
"""

from __future__ import annotations

import numpy as np


def singular_values(matrix: np.ndarray, *, method: str = "svd") -> np.ndarray:
    """Singular values of a 2-D matrix, descending, float64.

    `method="gram"` takes square roots of the eigenvalues of the smaller Gram matrix
    (several times faster than an SVD for the tall FFN matrices the policy trains on;
    float64 keeps the small values accurate to ~1e-8 of the largest).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"singular values need a 2-D matrix, got shape {matrix.shape}")
    if method == "svd":
        return np.linalg.svd(matrix, compute_uv=False)
    if method != "gram":
        raise ValueError(f"unknown method {method!r}")
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    eigen = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(eigen, 0.0, None))


def ks_distance(sample_a: np.ndarray, sample_b: np.ndarray) -> float:
    """Two-sample KS statistic: the largest gap between the two empirical CDFs.

    Both CDFs only jump at sample points, so the supremum is attained at one of them:
    evaluate each right-continuous CDF at every point of the pooled sample.
    """
    a = np.sort(np.asarray(sample_a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(sample_b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("KS distance needs two non-empty samples")
    pooled = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, pooled, side="right") / a.size
    cdf_b = np.searchsorted(b, pooled, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))
