"""Which channels a token keeps: DIP's top-K and DIP-CA's cache-aware score.

The `dip` pass decides how many channels a token keeps (`passes/dip/dip.py:keep_count`);
this module decides which ones, per token, for the simulator. Top-K here is exact (argpartition keeps exactly K); the ONNX
graph uses "|x| >= K-th largest |x|", which is the same set unless two magnitudes tie
exactly, and continuous activations do not.
"""

from __future__ import annotations

import numpy as np


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k largest entries along the last axis (exactly k per row)."""
    width = scores.shape[-1]
    if k >= width:
        return np.ones(scores.shape, dtype=bool)
    if scores.ndim == 1:  # the per-token path: skip put_along_axis's overhead
        mask = np.zeros(width, dtype=bool)
        mask[np.argpartition(scores, width - k)[width - k:]] = True
        return mask
    # argpartition puts the k largest in the last k slots (order inside is irrelevant).
    top = np.argpartition(scores, width - k, axis=-1)[..., width - k:]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=-1)
    return mask


def normalised(magnitude: np.ndarray) -> np.ndarray:
    """|x| / max|x| per token (last axis); a row of zeros stays zeros."""
    peak = magnitude.max(axis=-1, keepdims=True)
    return magnitude / np.where(peak > 0, peak, 1).astype(magnitude.dtype)


def cache_weight(resident: np.ndarray, gamma: float, dtype=np.float32) -> np.ndarray:
    """c + gamma (1 - c): 1 for channels resident in DRAM, gamma for the others."""
    return np.where(resident, dtype(1.0), dtype(gamma))


def cache_aware_scores(magnitude: np.ndarray, resident: np.ndarray, gamma: float) -> np.ndarray:
    """DIP-CA: s = |x| (c + gamma (1 - c)) / max|x|, c = 1 for channels already in DRAM.

    gamma = 1 gives |x| / max|x|, which ranks exactly like plain DIP (and is bit-for-bit
    the score plain DIP uses here); gamma < 1 discounts channels that would have to
    come from flash.
    """
    return normalised(magnitude) * cache_weight(resident, gamma, magnitude.dtype.type)
