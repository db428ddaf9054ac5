"""Every kind of bad input: one clear line on stderr, exit code 2, nothing partial left."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _assert_clean_failure(result, *needles: str):
    assert result.code == 2
    lines = [line for line in result.err.strip().splitlines() if line.startswith("edgefold: error:")]
    assert len(lines) == 1, result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.err


def _no_partial_output(folder: Path):
    parent = folder.parent
    assert not folder.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{folder.name}.tmp-")]


def test_missing_file(cli, tmp_path):
    result = cli("compress", tmp_path / "nope.onnx", "--pass", "cleanup", "-o", tmp_path / "out")
    _assert_clean_failure(result, "not found")
    _no_partial_output(tmp_path / "out")


def test_corrupt_onnx(cli, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf at all" * 10)
    result = cli("compress", bad, "--pass", "cleanup", "-o", tmp_path / "out")
    _assert_clean_failure(result, "bad.onnx")
    _no_partial_output(tmp_path / "out")


def test_truncated_onnx(cli, tmp_path, digits_onnx):
    truncated = tmp_path / "truncated.onnx"
    data = digits_onnx.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = cli("inspect", truncated)
    _assert_clean_failure(result, "truncated.onnx")


def test_missing_external_data(cli, tmp_path, effnet_onnx):
    copy = tmp_path / "model.onnx"
    shutil.copy(effnet_onnx, copy)  # graph only: its .data file is not beside it
    result = cli("compress", copy, "--pass", "cleanup", "-o", tmp_path / "out", "--no-eval")
    _assert_clean_failure(result, "external data")
    _no_partial_output(tmp_path / "out")


def test_truncated_external_data(cli, tmp_path, effnet_onnx):
    copy = tmp_path / "model.onnx"
    shutil.copy(effnet_onnx, copy)
    data = effnet_onnx.with_name("model.onnx.data").read_bytes()
    (tmp_path / "model.onnx.data").write_bytes(data[: len(data) // 3])
    result = cli("inspect", copy)
    _assert_clean_failure(result, "truncated")


def test_unsupported_model_folder(cli, tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper"}')
    result = cli("export", tmp_path)
    _assert_clean_failure(result, "unsupported model")


def test_unknown_builtin_name(cli):
    result = cli("export", "gpt-17")
    _assert_clean_failure(result, "unknown model")


def test_unknown_pass(cli, tmp_path, digits_onnx):
    result = cli("compress", digits_onnx, "--pass", "shrinkify:ratio=0.5", "-o", tmp_path / "out")
    _assert_clean_failure(result, "unknown pass", "shrinkify")
    _no_partial_output(tmp_path / "out")


def test_bad_pass_option(cli, tmp_path, digits_onnx):
    result = cli("compress", digits_onnx, "--pass", "cleanup:iterations=many", "-o", tmp_path / "out")
    _assert_clean_failure(result, "bad options for pass", "iterations")
    _no_partial_output(tmp_path / "out")


def test_unknown_profile(cli, tmp_path, digits_onnx):
    result = cli("compress", digits_onnx, "--pass", "cleanup", "--profile", "toaster", "-o", tmp_path / "out")
    _assert_clean_failure(result, "unknown profile", "toaster")
    _no_partial_output(tmp_path / "out")


@pytest.mark.parametrize("body, needle", [
    ('model = "digits-cnn"\nseed = "zero"\n', "seed"),
    ('model = "digits-cnn"\n[[passes]]\nname = "cleanup"\niterations = -x\n', "not valid TOML"),
    ('model = "digits-cnn"\nsurprise = 1\n', "surprise"),
    ('model = "digits-cnn"\n[eval]\ntokens = 3\n', "eval.tokens"),
])
def test_bad_recipe_values(cli, tmp_path, body, needle):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(body)
    result = cli("build", recipe, "-o", tmp_path / "out")
    _assert_clean_failure(result, needle)
    _no_partial_output(tmp_path / "out")


def test_failure_keeps_previous_output_intact(cli, tmp_path, digits_onnx):
    out = tmp_path / "out"
    assert cli("compress", digits_onnx, "--pass", "cleanup", "-o", out).code == 0
    before = (out / "manifest.json").read_bytes()
    result = cli("compress", digits_onnx, "--pass", "nope", "-o", out)
    assert result.code == 2
    assert (out / "manifest.json").read_bytes() == before
