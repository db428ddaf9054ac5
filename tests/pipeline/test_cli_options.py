"""A CLI that explains itself: every pass option described, one name per idea (old spellings
name the new one), recipe paths from the recipe's folder, one RPC syntax."""

from __future__ import annotations

import json

import pytest
import torch

from edgefold.errors import EdgefoldError
from edgefold.passes.options import option_docs
from edgefold.passes.registry import available_passes, create_pass
from edgefold.targets.rpc_url import parse_rpc_url


def test_every_pass_option_has_a_type_default_and_description():
    for name, cls in available_passes().items():
        docs = option_docs(cls.Config)
        assert docs, name
        for doc in docs:
            assert len(doc.description) > 10, f"{name}.{doc.name} has no description"
            assert "PydanticUndefined" not in doc.default and doc.type, f"{name}.{doc.name}"


def test_passes_command_prints_every_option(cli):
    result = cli("passes")
    assert result.code == 0
    assert "PydanticUndefined" not in result.out
    for name, cls in available_passes().items():
        assert f"{name}: " in result.out
        for field, info in cls.Config.model_fields.items():
            assert f"  {field} (" in result.out and info.description in result.out
    # defaults from factories and allowed values are shown, not a pydantic placeholder
    assert "structures (list of choice, default ['ffn', 'conv']; allowed: 'ffn', 'attention', 'conv')" in result.out


def test_targets_command_shows_key_figures(cli):
    result = cli("targets")
    assert result.code == 0
    block = result.out.split("mobile-arm64:")[1].split("\n")[1]
    assert "DRAM 8 GB at 25 GB/s" in block and "cores 4" in block and "aarch64" in block


@pytest.mark.parametrize("name, old, new", [
    ("fold", {"ratios": {"ffn.0": 0.1}}, "layer_ratios"),
    ("slice", {"ratios": [0.1, 0.2]}, "layer_ratios"),
    ("slice", {"multiple": 8}, "channel_multiple"),
    ("slice", {"max_ratio": 0.5}, "max_layer_ratio"),
    ("quantize", {"target": "onnxruntime"}, "emit"),
])
def test_renamed_options_are_errors_naming_the_new_name(name, old, new):
    with pytest.raises(EdgefoldError, match=f"is now called '{new}'"):
        create_pass(name, old)


def test_renamed_option_in_cli_is_one_line(cli, tmp_path):
    result = cli("compress", tmp_path / "absent.onnx", "--pass", "slice:multiple=8", "-o", tmp_path / "out")
    assert result.code == 2
    assert "is now called 'channel_multiple'" in result.err and len(result.err.strip().splitlines()) == 1


def test_same_idea_same_name_across_passes():
    fold, slice_ = (set(available_passes()[n].Config.model_fields) for n in ("fold", "slice"))
    assert {"ratio", "layer_ratios", "channel_multiple", "max_layer_ratio", "seed"} <= fold & slice_
    assert "target" not in available_passes()["quantize"].Config.model_fields


class _Gated(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gate, self.up = torch.nn.Linear(16, 64, bias=False), torch.nn.Linear(16, 64, bias=False)
        self.down = torch.nn.Linear(64, 16, bias=False)

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def test_relative_policy_in_a_recipe_resolves_from_the_recipe_folder(cli, tmp_path, monkeypatch):
    from edgefold import onnx_io
    from edgefold.export import export_module

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    handle = export_module(_Gated().eval(), {"x": torch.randn(2, 5, 16)}, name="gated", output_names=["y"],
                           dynamic_axes={"x": {0: "batch", 1: "seq"}})
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    onnx_io.save(onnx_io.load(handle.path), recipes / "gated.onnx")
    (recipes / "r.toml").write_text(
        'model = "gated.onnx"\nprofile = "host"\noutput = "out"\n[compile]\nenabled = false\n'
        '[[passes]]\nname = "slice"\nratio = 0.25\npolicy = "policies/p.pt"\nepisodes = 2\nchannel_multiple = 1\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("build", "../recipes/r.toml")
    assert result.code == 0, result.err
    assert (recipes / "policies" / "p.pt").is_file()  # trained and written beside the recipe
    assert not (elsewhere / "policies").exists()
    manifest = json.loads((recipes / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["passes"][0]["policy"] == "policies/p.pt"  # the recipe as written
    # a second run from yet another folder finds the same policy instead of training one
    trained = (recipes / "policies" / "p.pt").read_bytes()
    monkeypatch.chdir(tmp_path)
    result = cli("build", "recipes/r.toml", "--force")
    assert result.code == 0, result.err
    assert f"reusing policy {recipes / 'policies' / 'p.pt'}" in result.err
    assert (recipes / "policies" / "p.pt").read_bytes() == trained


@pytest.mark.parametrize("url, parsed", [("rpc://127.0.0.1:9190/phone", ("127.0.0.1", 9190, "phone")),
                                         ("rpc://tracker.lan:9000/rk3588", ("tracker.lan", 9000, "rk3588"))])
def test_rpc_url(url, parsed):
    assert parse_rpc_url(url) == parsed


@pytest.mark.parametrize("bad", ["127.0.0.1:9190:phone", "rpc://host/phone", "rpc://host:port/key", "rpc://h:1/"])
def test_bad_rpc_urls_name_the_syntax(bad):
    with pytest.raises(EdgefoldError, match="rpc://TRACKER_HOST:PORT/KEY"):
        parse_rpc_url(bad)


def test_compile_rpc_takes_the_same_syntax(cli, tmp_path):
    result = cli("compile", tmp_path / "m.onnx", "--rpc", "127.0.0.1:9190:phone")
    assert result.code == 2 and "rpc://TRACKER_HOST:PORT/KEY" in result.err


def test_every_command_line_option_has_help():
    import argparse

    from edgefold.cli import _parser

    missing = []
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, parser in action.choices.items():
                missing += [f"{command} {'/'.join(a.option_strings) or a.dest}" for a in parser._actions
                            if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing, missing


def test_every_recipe_setting_has_a_description():
    from edgefold.gates import Gates
    from edgefold.recipe import CompileSettings, EvalSettings, Recipe, SearchSpace, ValidationSettings

    missing = [f"{model.__name__}.{name}" for model in (Recipe, EvalSettings, CompileSettings, ValidationSettings,
                                                         SearchSpace, Gates)
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, missing
