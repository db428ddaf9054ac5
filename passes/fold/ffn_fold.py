"""What folding needs to know about an FFN, read from its weights.

- Channel features for clustering: each channel's producer rows (gate and up
  together), jointly scaled to unit length, plus the log of each producer row's norm.
  Direction decides what a channel computes; the log norms keep channels of very
  different strength apart (averaging a strong channel with a weak one halves it).
- Outlier channels: a producer-norm product far above the layer's median marks the
  few channels that write massive activations; they are never merged.
- Layer sensitivity: spectral concentration of the producers scaled by the norm
  weight in front of them. Layers that read one dominant input direction (in
  SmolLM2: layer 0 and the last layers, which handle the massive-activation
  dimensions) score high.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.channel_allocation import spectral_concentration
from edgefold.passes.common.initializers import array
from edgefold.passes.common.norm_scale import input_norm_scale


def producer_rows(model: ir.Model, group) -> list[np.ndarray]:
    """Per producer: [intermediate, in (+1 with bias)] float64 rows, one per channel."""
    rows = []
    for linear in group.producers:
        weight = np.moveaxis(array(model, linear.weight).astype(np.float64), linear.out_axis, 0)
        if linear.bias:
            weight = np.concatenate([weight, array(model, linear.bias).astype(np.float64)[:, None]], axis=1)
        rows.append(weight)
    return rows


def consumer_columns(model: ir.Model, group) -> np.ndarray:
    """[intermediate, out]: the consumer's weights per intermediate channel."""
    down = group.consumer
    return np.moveaxis(array(model, down.weight).astype(np.float64), down.in_axis, 0)


def channel_features(rows: list[np.ndarray]) -> np.ndarray:
    """Rows to cluster, one per channel: its producer rows jointly scaled to unit length, plus the log
    of each producer row's norm (so channels of very different strength stay apart)."""
    joint = np.concatenate(rows, axis=1)
    norm = np.linalg.norm(joint, axis=1, keepdims=True)
    unit = joint / np.where(norm > 0, norm, 1.0)
    logs = [np.log(np.maximum(np.linalg.norm(r, axis=1), 1e-12))[:, None] for r in rows]
    return np.concatenate([unit, *logs], axis=1)


def outlier_channels(rows: list[np.ndarray], threshold: float) -> np.ndarray:
    """Channels whose producer-norm product exceeds `threshold` x the median (0: none)."""
    strength = np.prod([np.linalg.norm(r, axis=1) for r in rows], axis=0)
    if threshold <= 0:
        return np.zeros(len(strength), dtype=bool)
    return strength > threshold * np.median(strength)


def sensitivity_score(model: ir.Model, group, rows: list[np.ndarray] | None = None) -> float:
    """Data-free sensitivity of the FFN: spectral concentration of its producers, input norm scale applied.

    High for layers that read one dominant input direction; `rows` saves reading the producers again."""
    rows = rows if rows is not None else producer_rows(model, group)
    scale = input_norm_scale(model, group.producers[0])
    stacked = np.concatenate([r[:, : group.hidden] for r in rows], axis=0)
    if scale is not None:
        stacked = stacked * scale[None, :]
    return spectral_concentration(stacked)


def scaled_producer_rows(model: ir.Model, group, rows: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Producer rows with the input norm's scale folded into their input columns (the
    matrix the FFN really applies to the normalised input); a bias column stays as is."""
    rows = rows if rows is not None else producer_rows(model, group)
    scale = input_norm_scale(model, group.producers[0])
    if scale is None:
        return [r.copy() for r in rows]
    scaled = []
    for r in rows:
        r = r.copy()
        r[:, : scale.size] *= scale[None, :]
        scaled.append(r)
    return scaled
