"""The main job end to end: recipe/compress -> validated passes -> output folder."""

from __future__ import annotations

import json

from edgefold import onnx_io


def _files(folder):
    """The hashed artifact files plus the manifest (reports hold timings, so they differ)."""
    names = set(json.loads((folder / "manifest.json").read_text())["files"]) | {"manifest.json"}
    return {name: (folder / name).read_bytes() for name in sorted(names)}


def test_compress_writes_model_and_manifest(cli, tmp_path, digits_onnx):
    out = tmp_path / "out"
    result = cli("compress", digits_onnx, "--pass", "cleanup", "-o", out)
    assert result.code == 0, result.err
    assert (out / "model.onnx").exists() and (out / "manifest.json").exists()
    onnx_io.check(out / "model.onnx")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "digits-cnn"
    [record] = manifest["passes"]
    assert record["name"] == "cleanup"
    assert record["fidelity"]["max_abs_error"] < 1e-5 and record["fidelity"]["cosine"] > 0.999999
    assert record["metrics"]["accuracy"] == manifest["baseline"]["accuracy"]
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data"} or set(manifest["files"]) == {"model.onnx"}
    assert "compressed digits-cnn: accuracy" in result.out


def test_rebuild_is_byte_identical(cli, tmp_path, effnet_onnx):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert cli("compress", effnet_onnx, "--pass", "cleanup", "-o", out, "--no-eval").code == 0
    assert _files(first) == _files(second)
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["files"]["model.onnx.data"]


def test_recipe_build_with_relative_paths(cli, tmp_path, digits_onnx):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'model = "digits-cnn"\nprofile = "host"\noutput = "dist/digits"\nseed = 3\n'
        '[[passes]]\nname = "cleanup"\niterations = 1\n')
    result = cli("build", recipe)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "dist" / "digits" / "manifest.json").read_text())
    assert manifest["recipe"]["seed"] == 3
    assert manifest["passes"][0]["config"] == {"fuse_batchnorm": False, "iterations": 1}
    assert manifest["profile"]["name"] == "host"


def test_default_build_on_smollm2(cli, tmp_path, smollm2_onnx, monkeypatch):
    """The README's main job, with a shorter perplexity text to keep the suite quick."""
    from edgefold import build
    from edgefold.recipe import EvalSettings, Recipe

    recipe = Recipe(eval=EvalSettings(tokens=1024))
    assert recipe.model is None and recipe.profile == "host" and [p.name for p in recipe.passes] == ["cleanup"]
    manifest = build.run_build(recipe, output=tmp_path / "dist").manifest
    assert manifest["model"]["name"] == "smollm2-135m"
    ppl = manifest["final"]["metrics"]["perplexity"]
    assert abs(ppl - manifest["baseline"]["perplexity"]) < 1e-3
    assert 15 < ppl < 40
    assert (tmp_path / "dist" / "model.onnx.data").stat().st_size > 500e6
    # ... and ends in a host artifact that matches onnxruntime, timed beside it.
    compiled = manifest["compile"]
    assert [b["label"] for b in compiled["buckets"]] == ["decode"] and compiled["buckets"][0]["kv_cache"] == 256
    for bucket in compiled["buckets"]:
        assert (tmp_path / "dist" / bucket["library"]).exists()
        assert bucket["fidelity"]["argmax_agreement"] == 1.0
    report = json.loads((tmp_path / "dist" / "compile-report.json").read_text())
    assert report["buckets"]["decode"]["latency"]["tvm_ms"] > 0
    assert report["buckets"]["decode"]["latency"]["onnxruntime_ms"] > 0


def test_files_named_by_pass_options_are_build_inputs(tmp_path):
    # Editing a calibration text (or a policy file) must make the next build run again,
    # not reuse the artifact built from the old content: the option itself is only a path.
    from edgefold.build import pass_input_files
    from edgefold.passes.registry import create_pass

    text = tmp_path / "calibration.txt"
    text.write_text("first version\n", encoding="utf-8")
    policy = tmp_path / "policy.pt"  # not trained yet
    passes = [create_pass("slice", {"method": "activation", "calibration_text": str(text)}),
              create_pass("slice", {"policy": str(policy)}), create_pass("cleanup")]
    before = pass_input_files(passes)
    assert len(before) == 2 and before[f"1.slice:{policy}"] is None
    assert pass_input_files(passes) == before
    text.write_text("second version\n", encoding="utf-8")
    after = pass_input_files(passes)
    assert after[f"0.slice:{text}"] != before[f"0.slice:{text}"]
