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


def test_default_build_on_smollm2(cli, tmp_path, smollm2_onnx):
    """The README's main job (a shorter perplexity text to keep the suite quick): the default
    recipe compresses, compiles the fast kernels, checks them, and ends with a summary table
    whose numbers are the manifest's and reports', and a line of text from the artifact."""
    from edgefold.recipe import DEFAULT_PASSES, Recipe
    from edgefold.summary import SAMPLE_PROMPT, summary_rows

    assert [p.name for p in Recipe().passes] == [p["name"] for p in DEFAULT_PASSES] == ["quantize"]
    recipe = tmp_path / "default.toml"
    recipe.write_text('output = "dist"\n[eval]\ntokens = 1024\n')  # everything else: the defaults
    result = cli("build", recipe)
    assert result.code == 0, result.err
    dist = tmp_path / "dist"
    manifest = json.loads((dist / "manifest.json").read_text())
    report = json.loads((dist / "report.json").read_text())
    timings = json.loads((dist / "compile-report.json").read_text())["buckets"]
    summary = report["summary"]

    # compressed: about 7x smaller at a small perplexity cost
    before, after = manifest["model"]["file_bytes"], manifest["final"]["file_bytes"]
    assert after < 0.16 * before
    ppl_before, ppl_after = manifest["baseline"]["perplexity"], manifest["final"]["metrics"]["perplexity"]
    assert 15 < ppl_before < 40 and abs(ppl_after / ppl_before - 1) < 0.05  # 1,024 tokens: can go either way
    # compiled with the LLM kernels: decode and a 128-token prefill, both checked on real text
    compiled = manifest["compile"]
    assert [b["label"] for b in compiled["buckets"]] == ["decode", "prefill128"]
    for bucket in compiled["buckets"]:
        assert bucket["kind"] == "llm" and (dist / bucket["library"]).exists()
        assert bucket["fidelity"]["argmax_agreement"] == 1.0 and bucket["fidelity"]["cosine"] > 0.99
        assert not [key for key in bucket if "seconds" in key or key.endswith("_ms")]  # timings: the report only

    # the summary is the manifest's and the compile report's numbers, nothing measured again
    assert summary["size_bytes"] == {"before": before, "after": after}
    assert summary["metric"] == {"name": "perplexity", "before": ppl_before, "after": ppl_after}
    for key, label in (("decode", "decode"), ("prefill", "prefill128")):
        latency = timings[label]["latency"]
        assert summary[key]["edgefold_ms"] == latency["tvm_ms"] > 0
        assert summary[key]["onnxruntime_ms"] == latency["onnxruntime_ms"] > 0
        assert latency["onnxruntime_model"] == "original"  # onnxruntime ran the uncompressed export
    assert {row["path"] for row in summary["files"]} >= {"model.onnx", "weights.bin", "lib/decode.so",
                                                           "lib/prefill128.so", "manifest.json", "report.html"}
    # ... and the printed table shows exactly those numbers
    table = [line for line in result.out.splitlines() if "│" in line]  # the summary table's rows
    for what, first, second, _ in summary_rows(summary):
        assert any(what in line and first in line and second in line for line in table), (what, first, second)
    assert f"{before / 1e6:.1f} MB" in result.out and f"{after / 1e6:.1f} MB" in result.out
    assert f"{ppl_before:.2f}" in result.out and f"{ppl_after:.2f}" in result.out
    assert f"{timings['decode']['latency']['tvm_ms']:.2f}" in result.out

    # one line of text from the artifact (`edgefold run --prompt`: tests/targets/test_llm_generate.py)
    sample = summary["sample"]
    assert sample["prompt"] == SAMPLE_PROMPT and len(sample["text"].split()) >= 3
    assert f"sample ({sample['tokens_per_s']:.0f} tokens/s): {SAMPLE_PROMPT}" in result.out

    # a second run is reused in seconds and prints the same summary
    again = cli("build", recipe)
    assert again.code == 0 and "reused" in again.err
    assert json.loads((dist / "report.json").read_text())["summary"]["decode"] == summary["decode"]
    assert f"{timings['decode']['latency']['tvm_ms']:.2f}" in again.out


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


def test_each_model_version_is_read_and_analysed_once(cli, tmp_path, digits_onnx, monkeypatch):
    """A pass's output analysis is the next pass's input analysis, and the build reuses the first
    and last: three model versions, three loads and three analyses."""
    import edgefold.analysis
    from collections import Counter

    loads, analysed = Counter(), []
    real_load, real_analyse = onnx_io.load, edgefold.analysis.analyse
    monkeypatch.setattr(onnx_io, "load", lambda path: loads.update([str(path)]) or real_load(path))
    monkeypatch.setattr(edgefold.analysis, "analyse", lambda model: analysed.append(model) or real_analyse(model))
    out = tmp_path / "out"
    result = cli("compress", digits_onnx, "--pass", "cleanup", "--pass", "cleanup", "--no-eval", "-o", out)
    assert result.code == 0, result.err
    assert len(loads) == 3 and set(loads.values()) == {1}, loads
    assert len(analysed) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["params"] == manifest["passes"][0]["params"] == manifest["final"]["params"] > 0
