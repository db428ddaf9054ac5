"""`edgefold search`: grid expansion, Pareto front, choice under gates."""

from __future__ import annotations

import json

import pytest

from edgefold.errors import EdgefoldError
from edgefold.recipe import PassEntry, Recipe, SearchSpace
from edgefold.search import configurations, pareto_front


def test_pareto_front_marks_only_undominated_points():
    points = [
        {"name": "a", "cost": 1.0, "ppl": 30.0},
        {"name": "b", "cost": 2.0, "ppl": 25.0},
        {"name": "c", "cost": 3.0, "ppl": 26.0},  # dominated by b
        {"name": "d", "cost": 4.0, "ppl": 22.0},
    ]
    pareto_front(points, "cost", "ppl", higher_is_better=False)
    assert [p["name"] for p in points if p["pareto"]] == ["a", "b", "d"]
    pareto_front(points, "cost", "ppl", higher_is_better=True)  # now higher ppl is "better"
    assert [p["name"] for p in points if p["pareto"]] == ["a"]


def test_grid_expands_into_pass_options():
    recipe = Recipe(model="digits-cnn", passes=[PassEntry(name="cleanup", iterations=2)])
    configs = configurations(recipe, SearchSpace(grid={"cleanup.iterations": [1, 3], "cleanup.fuse_batchnorm": [True]}))
    assert [setting for setting, _ in configs] == [
        {"cleanup.fuse_batchnorm": True, "cleanup.iterations": 1},
        {"cleanup.fuse_batchnorm": True, "cleanup.iterations": 3}]
    assert configs[1][1].passes[0].options == {"iterations": 3, "fuse_batchnorm": True}
    with pytest.raises(EdgefoldError, match="no pass 'fold'"):
        configurations(recipe, SearchSpace(grid={"fold.ratio": [0.1]}))


def test_search_cli_builds_each_point_and_picks_one(cli, tmp_path, digits_onnx):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('model = "digits-cnn"\noutput = "out"\n[[passes]]\nname = "cleanup"\n'
                      '[gates]\nmin_accuracy = 0.9\n'
                      '[search]\ngrid = { "cleanup.fuse_batchnorm" = [false, true] }\ncost = "file_mb"\n')
    result = cli("search", recipe)
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(summary["points"]) == 2 and summary["quality"] == "accuracy"
    assert any(p["pareto"] for p in summary["points"])
    # fusing BatchNorm into the convs makes the file smaller at equal accuracy: it must win
    assert summary["best"]["setting"] == {"cleanup.fuse_batchnorm": True}
    assert (tmp_path / "out" / "best" / "manifest.json").exists()
    # the Pareto chart: on the search's page, and in the chosen build's own report
    for page in (tmp_path / "out" / "search.html", tmp_path / "out" / "best" / "report.html"):
        text = page.read_text()
        search = text[text.index('<section id="search">'):]
        assert 'alt="file_mb vs accuracy: configurations tried and the Pareto front"' in search, page
    assert json.loads((tmp_path / "out" / "best" / "report.json").read_text())["search"]["best"] == summary["best"]


def test_search_without_table_is_a_clear_error(cli, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('model = "digits-cnn"\n')
    result = cli("search", recipe)
    assert result.code == 2 and "no [search] table" in result.err
