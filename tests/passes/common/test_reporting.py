"""`reporting`: `nothing_removed` marks a no-op in the stats and warns; `warn_if_rounded`
warns exactly when the achieved ratio strays further than the tolerance from the requested one."""

from __future__ import annotations

import pytest

from edgefold.passes.common.reporting import ROUNDING_TOLERANCE, nothing_removed, warn_if_rounded


def test_nothing_removed_marks_the_stats_and_warns(capsys):
    stats = {"removed": 12, "groups": {"ffn.0": [16, 16]}}
    returned = nothing_removed(stats, "slice", "every group keeps all its channels")
    assert returned is stats  # updated in place, and handed back for chaining
    assert stats == {"removed": 0, "groups": {"ffn.0": [16, 16]}, "note": "every group keeps all its channels"}
    err = capsys.readouterr().err
    assert "warning: slice removed nothing: every group keeps all its channels" in err


@pytest.mark.parametrize("achieved", [0.3, 0.3 + ROUNDING_TOLERANCE * 0.99, 0.3 - ROUNDING_TOLERANCE * 0.99])
def test_no_warning_within_the_tolerance(capsys, achieved):
    assert warn_if_rounded("fold", 0.3, achieved, "the ffn parameters") is False
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("achieved", [0.5, 0.25, 0.0])
def test_warning_when_rounding_moved_the_ratio(capsys, achieved):
    assert warn_if_rounded("fold", 0.3, achieved, "the ffn parameters") is True
    err = capsys.readouterr().err
    assert f"warning: fold: asked to remove 0.3 of the ffn parameters, removed {achieved:.3g}" in err
    assert "(widths are rounded to whole channels and to the channel multiple)" in err


def test_warning_carries_the_callers_reason(capsys):
    assert warn_if_rounded("dip", 0.1, 0.2, "the channels", why="only whole heads go") is True
    err = capsys.readouterr().err
    assert "dip: asked to remove 0.1 of the channels, removed 0.2 (only whole heads go)" in err
