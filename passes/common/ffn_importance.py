"""Data-free importance of FFN channels, from the weights alone.

Shared by `slice` (as the structural prior beside the learned policy) and `fold`
(to pick which channels stay as anchors). The signal is coordinate concentration:
log(||r||_4 / ||r||_2) of a channel's producer rows (norm scale folded in) and of
its consumer column. On SmolLM2 the few channels that feed the massive residual
activations read and write a handful of residual dimensions, so they concentrate,
while their norms are unremarkable (ranking by norm removes them first and the
model collapses). Measured against activation-based importance on held-out text,
concentration is the best single weight-only feature we found (mean Spearman 0.22
over the 30 FFNs; the norms are between -0.07 and 0.0; the learned policy's logit
alone -0.05).
"""

from __future__ import annotations

import numpy as np


def standardise(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def concentration(rows: np.ndarray) -> np.ndarray:
    """log(||r||_4 / ||r||_2) per row: high when a row's energy sits on few coordinates."""
    rows = np.asarray(rows, dtype=np.float64)
    l2 = np.sqrt((rows**2).sum(axis=1)).clip(1e-30)
    l4 = ((rows**4).sum(axis=1) ** 0.25).clip(1e-30)
    return np.log(l4 / l2)


def concentration_prior(producers: list[np.ndarray], consumer_columns: np.ndarray) -> np.ndarray:
    """Sum of the concentrations of every producer row and the consumer column, per channel."""
    return sum(concentration(rows) for rows in producers) + concentration(consumer_columns)
