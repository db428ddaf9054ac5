"""`channel_allocation` (shared by fold and slice): the global channel budget across layers,
the per-layer cap, merge costs from a Ward tree, and layer sensitivities."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage

from edgefold.passes.common.channel_allocation import (LayerBudget, allocate, feasible_cap, merge_costs_from_tree,
                                                       sensitivities, spectral_concentration)


def test_allocation_spares_sensitive_layers_and_meets_the_budget():
    costs = np.linspace(0.1, 1.0, 99)
    layers = [LayerBudget(f"l{i}", 100, 10, costs, sensitivity=(20.0 if i == 0 else 1.0)) for i in range(5)]
    keep = allocate(layers, 0.2, multiple=4)
    assert sum(100 - k for k in keep.values()) == pytest.approx(100, abs=4)
    assert keep["l0"] > max(keep[f"l{i}"] for i in range(1, 5))
    assert all(k % 4 == 0 for k in keep.values())


def test_zero_ratio_keeps_everything_and_cheap_merges_go_first():
    cheap = LayerBudget("cheap", 10, 1, np.full(9, 0.01))
    dear = LayerBudget("dear", 10, 1, np.full(9, 1.0))
    assert allocate([cheap, dear], 0.0) == {"cheap": 10, "dear": 10}
    keep = allocate([cheap, dear], 0.2)  # 4 of 20 channels go, all from the cheap layer
    assert keep == {"cheap": 6, "dear": 10}


def test_cap_and_protected_channels_bound_each_layer():
    cheap = LayerBudget("cheap", 10, 1, np.full(9, 0.01), min_keep=3)
    dear = LayerBudget("dear", 10, 1, np.full(9, 1.0))
    keep = allocate([cheap, dear], 0.5, max_ratio=0.6)
    assert keep["cheap"] >= 4  # at most 60% of a layer goes, and never its protected channels
    assert keep["cheap"] == 4 and sum(10 - k for k in keep.values()) == 10
    assert feasible_cap(0.3, 0.5) == pytest.approx(0.55)  # a cap below the ratio gets room above it
    assert feasible_cap(0.75, 0.2) == 0.75


def test_shared_tensors_count_once_through_total_params():
    layers = [LayerBudget(f"l{i}", 8, 10, np.linspace(0.1, 0.7, 7)) for i in range(2)]
    # With a total twice the per-layer sum, the same ratio removes twice the channels.
    plain = allocate(layers, 0.25)
    doubled = allocate(layers, 0.25, total_params=2 * 160)
    assert sum(8 - k for k in plain.values()) == 4
    assert sum(8 - k for k in doubled.values()) == 8


def test_merge_costs_from_a_ward_tree_are_non_decreasing_inertia():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((12, 3))
    tree = linkage(points, method="ward")
    costs = merge_costs_from_tree(tree)
    assert costs.shape == (11,) and np.all(np.diff(costs) >= 0)
    np.testing.assert_allclose(costs[-1], tree[-1, 2] ** 2 / 2)


def test_spectral_concentration_and_sensitivities():
    assert spectral_concentration(np.outer([1.0, 2.0], [3.0, 4.0])) == pytest.approx(1.0)  # rank one
    assert spectral_concentration(np.eye(4)) == pytest.approx(0.5)
    assert spectral_concentration(np.zeros((3, 3))) == 0.0
    weights = sensitivities({"a": 1.0, "b": 2.0, "c": 4.0}, power=1.0)
    assert weights == pytest.approx({"a": 0.5, "b": 1.0, "c": 2.0})
    assert sensitivities({"a": 0.0, "b": 0.0}, power=2.0) == {"a": 1.0, "b": 1.0}
    assert sensitivities({}, power=1.0) == {}
