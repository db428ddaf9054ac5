"""Every kind of bad input: one clear line on stderr, exit code 2, nothing partial left."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _assert_clean_failure(result, *needles: str) -> str:
    assert result.code == 2, (result.code, result.err[-3000:])
    lines = [line for line in result.err.strip().splitlines() if line.startswith("edgefold: error:")]
    assert len(lines) == 1, result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.err
    return lines[0]


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


# ---------------------------------------------------------------- exit codes: 2 bad input, 3 bug


def test_non_utf8_recipe(cli, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_bytes(b'model = "digits-cnn"\n# caf\xe9\n')
    _assert_clean_failure(cli("build", recipe, "-o", tmp_path / "out"), "UTF-8")


def test_recipe_that_is_a_folder(cli, tmp_path):
    _assert_clean_failure(cli("build", tmp_path, "-o", tmp_path / "out"), "folder")


@pytest.mark.parametrize("args, needle", [
    (("compress", "digits-cnn", "--pass", "cleanup", "--eval-tokens", "0", "-o", "OUT"), "--eval-tokens"),
    (("compress", "digits-cnn", "--pass", "cleanup", "--min-cosine", "2", "-o", "OUT"), "--min-cosine"),
    (("eval", "digits-cnn", "--tokens", "-5"), "--tokens"),
    (("profile", "x.onnx", "--repeats", "0"), "--repeats"),
    (("no-such-command",), "invalid choice"),
])
def test_bad_arguments_are_one_line(cli, tmp_path, args, needle):
    result = cli(*(str(tmp_path / "out") if a == "OUT" else a for a in args))
    _assert_clean_failure(result, needle)


def test_internal_error_exits_3_with_traceback(cli, monkeypatch):
    from edgefold import cli as cli_module

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli_module.COMMANDS, "passes", broken)
    result = cli("passes")
    assert result.code == 3
    assert "Traceback" in result.err and "ZeroDivisionError" in result.err and "internal error" in result.err


def test_empty_onnx_file(cli, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for args in (("inspect", empty), ("compress", empty, "--pass", "cleanup", "-o", tmp_path / "out"),
                 ("profile", empty), ("eval", empty)):
        line = _assert_clean_failure(cli(*args), "empty.onnx")
    _no_partial_output(tmp_path / "out")


def test_profile_of_a_missing_path(cli, tmp_path):
    _assert_clean_failure(cli("profile", tmp_path / "nothing"), "not found")


def test_eval_without_a_task_metric_is_an_error(cli, tmp_path):
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), opset_imports=[helper.make_opsetid("", 21)])
    path = tmp_path / "generic.onnx"
    path.write_bytes(model.SerializeToString())
    _assert_clean_failure(cli("eval", path), "no task metric")


@pytest.mark.parametrize("gate", ["max_perplexity_increase = 0.1", "max_spearman_drop = 0.01"])
def test_gate_the_task_cannot_measure_is_a_recipe_error(cli, tmp_path, digits_onnx, gate):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "digits-cnn"\n[compile]\nenabled = false\n[gates]\n{gate}\n')
    _assert_clean_failure(cli("build", recipe, "-o", tmp_path / "out"), gate.split()[0], "digits-classifier")
    _no_partial_output(tmp_path / "out")


def test_old_opset_model_that_cannot_be_upgraded_names_the_upgrade(cli, tmp_path):
    """An opset-7 Upsample graph: the error is about the opset upgrade, not a later pass."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Upsample", ["x"], ["y"], name="up", mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    del scales
    path = tmp_path / "old.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)]).SerializeToString())
    result = cli("compress", path, "--pass", "cleanup", "--no-eval", "-o", tmp_path / "out")
    if result.code == 0:  # the converter handled it: then the output must be valid
        assert (tmp_path / "out" / "model.onnx").exists()
        return
    line = _assert_clean_failure(result, "old.onnx")
    assert "opset" in line and "cleanup" not in line
    assert ".tmp-" not in line and "exports" not in line  # the user's path, not a cache temp path


def test_crafted_slice_policy_is_one_line_and_never_unpickled(cli, tmp_path, minilm_onnx):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    policy = tmp_path / "policy.pt"
    policy.write_bytes(pickle.dumps({"format": Boom()}))
    result = cli("compress", minilm_onnx, "--pass", f"slice:ratio=0.2,policy={policy}", "--no-eval",
                 "-o", tmp_path / "out")
    line = _assert_clean_failure(result, "policy")
    assert "weights_only=False" not in result.err
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
