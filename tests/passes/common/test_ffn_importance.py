"""`ffn_importance`: the weight-only channel scorers on hand-built FFN matrices — concentration
ranks a channel that reads/writes few coordinates above a diffuse one of the same norm, the
magnitude scorers are the norms they name, and the helpers (`standardise`, `concentration`)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefold.errors import EdgefoldError
from edgefold.passes.common.ffn_importance import (SCORERS, FfnMatrices, concentration, concentration_prior,
                                                   score_channels, standardise)

HIDDEN = 16


def _ffn(gate: np.ndarray, up: np.ndarray, down_columns: np.ndarray, gain: np.ndarray | None = None) -> FfnMatrices:
    gain = np.ones(HIDDEN) if gain is None else gain
    return FfnMatrices(producers=(gate, up), scaled_producers=(gate * gain, up * gain), up=up, consumer=down_columns)


def _concentrated_and_diffuse():
    """Channel 0 reads and writes one coordinate; channel 1 spreads over all 16; equal norms (2)."""
    spike = np.zeros(HIDDEN)
    spike[3] = 2.0
    flat = np.full(HIDDEN, 2.0 / np.sqrt(HIDDEN))
    rows = np.stack([spike, flat])
    return _ffn(rows.copy(), rows.copy(), rows.copy())


def test_concentration_of_one_hot_and_uniform_rows():
    values = concentration(np.stack([np.eye(HIDDEN)[5] * 7.0, np.ones(HIDDEN), -np.ones(HIDDEN) * 0.1]))
    np.testing.assert_allclose(values, [0.0, -0.25 * np.log(HIDDEN), -0.25 * np.log(HIDDEN)], atol=1e-12)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, HIDDEN))
    np.testing.assert_allclose(concentration(rows), concentration(3.5 * rows), atol=1e-12)  # scale-free
    assert np.all(concentration(rows) <= 1e-12) and np.all(concentration(rows) >= -0.25 * np.log(HIDDEN) - 1e-12)


def test_standardise():
    values = standardise(np.array([1.0, 2.0, 3.0, 10.0], np.float32))
    assert values.dtype == np.float64
    assert abs(values.mean()) < 1e-12 and abs(values.std() - 1.0) < 1e-12
    assert np.argmax(values) == 3
    np.testing.assert_array_equal(standardise(np.full(4, 2.5)), np.zeros(4))


def test_concentration_ranks_the_concentrated_channel_first():
    ffn = _concentrated_and_diffuse()
    scores = score_channels("concentration", ffn)
    assert scores.shape == (2,) and scores[0] > scores[1]
    # three rows each (gate, up, down): 0 for the spike, -log(16)/4 for the flat row
    np.testing.assert_allclose(scores, [0.0, -0.75 * np.log(HIDDEN)], atol=1e-12)
    # the magnitude scorers cannot tell these two channels apart
    norm_product = score_channels("norm-product", ffn)
    np.testing.assert_allclose(norm_product, [np.sqrt(8.0) * 2.0] * 2)
    np.testing.assert_allclose(score_channels("up-norm", ffn), [2.0, 2.0])


def test_concentration_reads_the_norm_scaled_rows():
    """Same raw rows; a norm gain that keeps one input coordinate makes channel 1 concentrated."""
    rng = np.random.default_rng(1)
    rows = rng.uniform(0.5, 1.0, (2, HIDDEN))
    columns = rng.uniform(0.5, 1.0, (2, HIDDEN))
    plain = score_channels("concentration", _ffn(rows, rows, columns))
    gain = np.full(HIDDEN, 1e-3)
    gain[0] = 1.0
    scaled = score_channels("concentration", _ffn(rows, rows, columns, gain))
    np.testing.assert_allclose(scaled, 2 * concentration(rows * gain) + concentration(columns), atol=1e-12)
    assert np.all(scaled > plain + 0.5)  # both producers now sit on coordinate 0
    np.testing.assert_allclose(concentration_prior([rows * gain, rows * gain], columns), scaled, atol=1e-12)


def test_magnitude_scorers_are_the_norms_they_name():
    rng = np.random.default_rng(2)
    gate, up = rng.standard_normal((6, HIDDEN)), rng.standard_normal((6, HIDDEN))
    down = rng.standard_normal((6, 9))
    before = _ffn(gate.copy(), up, down)
    gate[4] *= 50  # a strong gate row moves norm-product, not up-norm
    ffn = _ffn(gate, up, down)
    expected = np.sqrt((gate ** 2).sum(1) + (up ** 2).sum(1)) * np.sqrt((down ** 2).sum(1))
    np.testing.assert_allclose(score_channels("norm-product", ffn), expected, rtol=1e-12)
    np.testing.assert_allclose(score_channels("up-norm", ffn), np.sqrt((up ** 2).sum(1)), rtol=1e-12)
    assert np.argmax(score_channels("norm-product", ffn)) == 4
    changed = score_channels("norm-product", ffn) != score_channels("norm-product", before)
    assert changed.tolist() == [False, False, False, False, True, False]
    np.testing.assert_array_equal(score_channels("up-norm", ffn), score_channels("up-norm", before))


def test_plain_ffn_with_one_producer():
    rng = np.random.default_rng(3)
    up, down = rng.standard_normal((5, HIDDEN)), rng.standard_normal((5, 7))
    ffn = FfnMatrices(producers=(up,), scaled_producers=(up,), up=up, consumer=down)
    for kind in SCORERS:
        assert score_channels(kind, ffn).shape == (5,)
    np.testing.assert_allclose(score_channels("norm-product", ffn),
                               np.linalg.norm(up, axis=1) * np.linalg.norm(down, axis=1), rtol=1e-12)
    np.testing.assert_allclose(score_channels("concentration", ffn), concentration(up) + concentration(down),
                               atol=1e-12)


def test_scorer_names_and_unknown_kind():
    assert set(SCORERS) == {"concentration", "norm-product", "up-norm"}
    with pytest.raises(EdgefoldError, match="unknown channel scorer 'wanda'.*concentration, norm-product, up-norm"):
        score_channels("wanda", _concentrated_and_diffuse())
