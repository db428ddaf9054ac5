"""`calibration`: reading a user's calibration text, the feeds for a digits model and for a
text model (a word-level tokenizer written to tmp_path), and the measured statistics — per-channel
mean squares, input Hessians, and quantize's reader energies (MatMul/Conv inputs, Gather token
counts) — from onnxruntime runs of small hand-built models, checked against numpy on the same feeds."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.datasets import digits_split
from edgefold.errors import EdgefoldError
from edgefold.models.metadata import TASK_KEY, TOKENIZER_KEY
from edgefold.passes.common.calibration import (TEXT_TOKENS, CalibrationRun, calibration_feeds, channel_mean_squares,
                                                input_hessians, input_moments, measure_energy, read_calibration_text,
                                                require_calibration_text)
from edgefold.passes.quantize.quantize import find_sites

WORDS = ["rain", "flooded", "the", "valley", "council", "approved", "new", "budget", "."]
VOCAB = len(WORDS) + 1  # and [UNK]


def _save(model: onnx.ModelProto, path, meta: dict[str, str]):
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return onnx_io.save(ir.serde.deserialize_model(model), path)  # weights go to external data


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """image [N, 1, 8, 8] -> Conv 1x1 (3 channels, bias) "h" -> Relu -> Flatten "f" -> MatMul W [192, 10]."""
    rng = np.random.default_rng(0)
    params = {"cw": rng.standard_normal((3, 1, 1, 1)), "cb": rng.standard_normal(3),
              "W": rng.standard_normal((192, 10))}
    nodes = [helper.make_node("Conv", ["image", "cw", "cb"], ["h"], name="conv"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Flatten", ["a"], ["f"], name="flatten", axis=1),
             helper.make_node("MatMul", ["f", "W"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "digits",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = _save(model, tmp_path_factory.mktemp("digits") / "model.onnx", {TASK_KEY: "digits-classifier"})
    return path, {k: v.astype(np.float32) for k, v in params.items()}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """input_ids -> Gather(E [VOCAB, 6]) -> MatMul W: a causal-lm with a word-level tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              "unk_token": "[UNK]"}))
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "W"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "t"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "t", 4])],
                              [numpy_helper.from_array(rng.standard_normal((VOCAB, 6)).astype(np.float32), "E"),
                               numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return _save(model, tmp_path_factory.mktemp("lm") / "model.onnx",
                 {TASK_KEY: "causal-lm", TOKENIZER_KEY: str(folder)})


def _numpy_activations(params, feed):
    h = params["cw"].reshape(1, 3, 1, 1) * feed["image"] + params["cb"].reshape(1, 3, 1, 1)
    a = np.maximum(h, 0)
    return h.astype(np.float64), a.reshape(len(a), -1).astype(np.float64)


# --- text files --------------------------------------------------------------------------------

def test_read_calibration_text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes("\ufeffRain flooded the valley.\r\n\r\n  The council approved the budget.  \n\n".encode("utf-8"))
    assert read_calibration_text(path, "slice") == ["Rain flooded the valley.", "The council approved the budget."]
    (tmp_path / "blank.txt").write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(EdgefoldError, match="slice: calibration_text .*blank.txt has no text"):
        read_calibration_text(tmp_path / "blank.txt", "slice")
    with pytest.raises(EdgefoldError, match="quantize: cannot read calibration_text .*absent.txt"):
        read_calibration_text(tmp_path / "absent.txt", "quantize")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(EdgefoldError, match="cannot read calibration_text"):
        read_calibration_text(tmp_path / "latin1.txt", "quantize")


def test_require_calibration_text(tmp_path):
    require_calibration_text(None)
    (tmp_path / "there.txt").write_text("text\n", encoding="utf-8")
    require_calibration_text(str(tmp_path / "there.txt"))
    with pytest.raises(ValueError, match="calibration_text .*missing.txt: no such file"):
        require_calibration_text(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="no such file"):
        require_calibration_text(str(tmp_path))  # a folder is not a file


def test_calibration_run_stats():
    assert CalibrationRun(samples=3).stats() == {"calibration_samples": 3}
    assert CalibrationRun(samples=2, text_sha256="ab").stats() == {"calibration_samples": 2,
                                                                   "calibration_text_sha256": "ab"}
    assert CalibrationRun(samples=2, inputs_sha256="cd").stats() == {"calibration_samples": 2,
                                                                     "calibration_inputs_sha256": "cd"}


# --- feeds -------------------------------------------------------------------------------------

def test_digits_feeds_are_training_batches(digits_model):
    path, _ = digits_model
    feeds = calibration_feeds(path, 3, "slice", "use the weights")
    train = digits_split()[0]
    assert len(feeds) == 3
    for i, feed in enumerate(feeds):
        assert list(feed) == ["image"] and feed["image"].dtype == np.float32
        np.testing.assert_array_equal(feed["image"], train[i * 8:(i + 1) * 8])


def test_feeds_need_a_known_task_and_text_needs_a_text_model(digits_model, tmp_path):
    path, _ = digits_model
    text = tmp_path / "text.txt"
    text.write_text("rain\n", encoding="utf-8")
    with pytest.raises(EdgefoldError, match="quantize: calibration_text needs a text model"):
        calibration_feeds(path, 2, "quantize", "drop it", text)
    generic = onnx.load(str(path))
    del generic.metadata_props[:]
    generic_path = tmp_path / "generic" / "model.onnx"
    generic_path.parent.mkdir()
    onnx.save(generic, str(generic_path))
    with pytest.raises(EdgefoldError, match="slice: calibration needs a model with a known task.*; use the weights$"):
        calibration_feeds(generic_path, 2, "slice", "use the weights")
    with pytest.raises(EdgefoldError, match="slice: calibration needs the model file; use the weights"):
        channel_mean_squares(None, ["h"], 2, "slice", "use the weights")


def test_text_feeds_read_the_users_documents(text_model, tmp_path):
    text = tmp_path / "text.txt"
    long_document = " ".join(["rain"] * (TEXT_TOKENS + 40))
    text.write_text(f"the council approved the new budget .\n\nrain flooded the valley\n{long_document}\n",
                    encoding="utf-8")
    run = CalibrationRun()
    feeds = calibration_feeds(text_model, 2, "quantize", "", text, run)
    ids = {w: i for i, w in enumerate(["[UNK]"] + WORDS)}
    assert [f["input_ids"].tolist() for f in feeds] == [
        [[ids[w] for w in "the council approved the new budget .".split()]],
        [[ids[w] for w in "rain flooded the valley".split()]]]  # no special tokens for a causal-lm
    for feed in feeds:
        np.testing.assert_array_equal(feed["attention_mask"], np.ones_like(feed["input_ids"]))
        np.testing.assert_array_equal(feed["token_type_ids"], np.zeros_like(feed["input_ids"]))
    documents = "the council approved the new budget .\nrain flooded the valley"
    assert run.text_sha256 == hashlib.sha256(documents.encode("utf-8")).hexdigest()  # only what was run
    assert run.samples == 0  # feeds are made, not run
    [_, _, long_feed] = calibration_feeds(text_model, 5, "quantize", "", text)
    assert long_feed["input_ids"].shape == (1, TEXT_TOKENS)


# --- measurements --------------------------------------------------------------------------------

def test_channel_mean_squares_match_numpy(digits_model):
    path, params = digits_model
    before = [p.read_bytes() for p in onnx_io.model_files(path)]
    squares, run = channel_mean_squares(path, ["h", "f", "h"], 3, "slice", "")
    assert run.samples == 3 and set(squares) == {"h", "f"}
    h_sum, f_sum, h_count, f_count = np.zeros(3), np.zeros(192), 0, 0
    for feed in calibration_feeds(path, 3, "slice", ""):
        h, f = _numpy_activations(params, feed)
        h_sum += np.square(h).sum(axis=(0, 2, 3))  # NCHW: channels on axis 1
        f_sum += np.square(f).sum(axis=0)  # 2-D: the last axis
        h_count += h.shape[0] * h.shape[2] * h.shape[3]
        f_count += f.shape[0]
    np.testing.assert_allclose(squares["h"], h_sum / h_count, rtol=1e-5)
    np.testing.assert_allclose(squares["f"], f_sum / f_count, rtol=1e-5, atol=1e-12)
    on_width, _ = channel_mean_squares(path, ["h"], 3, "slice", "", axis=3)  # an explicit channel axis
    assert on_width["h"].shape == (8,)
    np.testing.assert_allclose(on_width["h"].mean(), squares["h"].mean(), rtol=1e-5)  # same data, other grouping
    assert [p.read_bytes() for p in onnx_io.model_files(path)] == before  # the model file is left as it was


def test_input_hessians_match_numpy(digits_model):
    path, params = digits_model
    hessians, run = input_hessians(path, ["f"], 2, "quantize", "")
    assert run.samples == 2
    gram, count = np.zeros((192, 192)), 0
    for feed in calibration_feeds(path, 2, "quantize", ""):
        _, f = _numpy_activations(params, feed)
        gram += f.T @ f
        count += f.shape[0]
    assert hessians["f"].shape == (192, 192) and hessians["f"].dtype == np.float64
    np.testing.assert_allclose(hessians["f"], gram / count, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(hessians["f"], hessians["f"].T)


def test_input_moments_match_numpy_and_the_inputs_are_hashed(digits_model):
    path, params = digits_model
    moments, run = input_moments(path, ["f"], 2, "fold", "")
    rows = []
    for feed in calibration_feeds(path, 2, "fold", ""):
        _, f = _numpy_activations(params, feed)
        rows.append(np.hstack([f, np.ones((len(f), 1))]))
    rows = np.vstack(rows)
    assert moments["f"].shape == (193, 193)
    np.testing.assert_allclose(moments["f"], rows.T @ rows / len(rows), rtol=1e-5, atol=1e-9)
    assert moments["f"][-1, -1] == 1.0  # E[1 * 1]
    # What was fed is hashed, so a manifest says which calibration made a build.
    assert len(run.inputs_sha256) == 64
    assert input_moments(path, ["f"], 2, "fold", "")[1].inputs_sha256 == run.inputs_sha256
    assert input_moments(path, ["f"], 3, "fold", "")[1].inputs_sha256 != run.inputs_sha256


def test_measure_energy_for_quantize_readers(digits_model, text_model, tmp_path):
    path, params = digits_model
    model = onnx_io.load(path)
    sites = {s.name: s for s in find_sites(model, min_elements=0, exclude=["cb"])}
    run = measure_energy(path, sites.values(), 2)
    assert run.samples == 2
    [head] = sites["W"].readers
    [conv] = sites["cw"].readers
    feeds = calibration_feeds(path, 2, "quantize", "")
    f = np.concatenate([_numpy_activations(params, feed)[1] for feed in feeds])
    np.testing.assert_allclose(head.energy, np.square(f).mean(axis=0), rtol=1e-5, atol=1e-12)
    images = np.concatenate([feed["image"] for feed in feeds]).astype(np.float64)
    np.testing.assert_allclose(conv.energy, [np.square(images).mean()], rtol=1e-6)

    text = tmp_path / "text.txt"
    text.write_text("the valley the the\nrain zzz budget\n", encoding="utf-8")
    lm = onnx_io.load(text_model)
    lm_sites = {s.name: s for s in find_sites(lm, min_elements=0, exclude=[])}
    run = measure_energy(text_model, lm_sites.values(), 4, text_file=text)
    assert run.samples == 2 and run.text_sha256 == hashlib.sha256(text.read_bytes().rstrip(b"\n")).hexdigest()
    [gather] = lm_sites["E"].readers
    ids = {w: i for i, w in enumerate(["[UNK]"] + WORDS)}
    expected = np.ones(VOCAB)  # every token counts once, plus how often it was read
    for token in ("the", "valley", "the", "the", "rain", "[UNK]", "budget"):
        expected[ids[token]] += 1
    np.testing.assert_array_equal(gather.energy, expected)
