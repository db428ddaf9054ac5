"""Evaluation harness: data protocols, metric arithmetic, and the real models' numbers."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnx
import pytest
import scipy.stats
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold import datasets as data
from edgefold.evaluate import evaluate, primary_metric
from edgefold.evaluate import perplexity as ppl_mod
from edgefold.evaluate import similarity, vision
from edgefold.models.metadata import TASK_KEY, Task

WIKI_CHARS = 3_082_588
WIKI_SHA256 = "0099c12c5859af1a203b9118d6d8c1dbd23989525d9b2f588727bab0758fca3d"
SMOLLM2_VOCAB = 49152


# --- data protocols -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_wiki_ids() -> list[int]:
    from edgefold.models.metadata import load_tokenizer

    return load_tokenizer("smollm2-135m")(data.wikipedia_text(), add_special_tokens=False)["input_ids"]


def test_wikipedia_text_protocol():
    text = data.wikipedia_text()
    assert text and "'''" not in text and "''" not in text
    assert text.startswith("#REDIRECT Computer accessibility\n\nAnarchism is")  # pages joined by a blank line
    assert text == text.strip()
    # Pinned: any change to the protocol (pages, filtering, joining) changes these.
    assert len(text) == WIKI_CHARS
    assert hashlib.sha256(text.encode()).hexdigest() == WIKI_SHA256
    assert data.wikipedia_text() is text  # cached


def test_wikipedia_tokens_match_whole_text(smollm2_wiki_ids):
    assert len(smollm2_wiki_ids) >= 8192
    from edgefold.models.metadata import load_tokenizer

    ids = ppl_mod.wikipedia_tokens(load_tokenizer("smollm2-135m"), 8192)
    assert ids.dtype == np.int64 and ids.tolist() == smollm2_wiki_ids[:8192]


def test_lee_pairs():
    pairs = data.lee_pairs()
    assert len(pairs) == 1225
    scores = np.array([s for _, _, s in pairs])
    assert scores.min() >= 0.0 and scores.max() <= 1.0 and scores.std() > 0.05
    docs = data.lee_documents()
    assert len(docs) == 50 and len(set(docs)) == 50
    assert all(a in docs and b in docs and a != b for a, b, _ in pairs[:50])
    rows, cols, human = data.lee_pair_indices()
    assert (rows < cols).all() and np.array_equal(human, scores)
    assert (docs[rows[7]], docs[cols[7]], human[7]) == pairs[7]


def test_sample_photos_deterministic():
    photos = data.sample_photos()
    assert 50 <= len(photos) <= 100
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 64 for p in photos)
    digest = hashlib.sha256(b"".join(p.tobytes() for p in photos)).hexdigest()
    data._photos.cache_clear()
    again = data.sample_photos()
    assert [p.shape for p in again] == [p.shape for p in photos]
    assert hashlib.sha256(b"".join(p.tobytes() for p in again)).hexdigest() == digest


def test_image_batch_preprocessing():
    photos = data.sample_photos()[:3]
    batch = data.image_batch(photos)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0  # (pixel - 127) / 128
    flat = np.full((300, 400, 3), 127, np.uint8)
    assert np.allclose(data.image_batch([flat]), 0.0)


def test_digits_split():
    x_train, y_train, x_test, y_test = data.digits_split()
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert sorted(set(y_test.tolist())) == list(range(10))
    assert np.array_equal(data.digits_split()[2], x_test)


# --- perplexity arithmetic on a tiny bigram "LM" ------------------------------------------

def _tiny_lm(path, batch, seed=0, dim=4):
    """logits[b, t] = E[ids[b, t]] @ W: a bigram model over SmolLM2's vocabulary."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(0, 1.0, (SMOLLM2_VOCAB, dim)).astype(np.float32)
    out = rng.normal(0, 1.0, (dim, SMOLLM2_VOCAB)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "input_ids"], ["h"]),
            helper.make_node("MatMul", ["h", "W"], ["logits"]),
        ],
        "tiny_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, "seq", SMOLLM2_VOCAB])],
        [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(out, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, str(path))
    return emb, out


def _hand_perplexity(emb, out, ids, chunk):
    from scipy.special import log_softmax

    nll = []
    for window in np.asarray(ids).reshape(-1, chunk):
        logits = (emb[window] @ out).astype(np.float64)
        logp = log_softmax(logits, axis=-1)
        nll.extend(-logp[np.arange(chunk - 1), window[1:]])
    return math.exp(np.mean(nll))


@pytest.mark.parametrize("batch", [1, "batch"])
def test_perplexity_matches_hand_computation(tmp_path, smollm2_wiki_ids, batch):
    path = tmp_path / "tiny.onnx"
    emb, out = _tiny_lm(path, batch)
    tokens, chunk = 160, 32  # 5 windows: one batch of 4 plus 1 when the batch is dynamic
    got = ppl_mod.perplexity(onnx_io.session(path), "smollm2-135m", tokens=tokens, chunk=chunk)
    want = _hand_perplexity(emb, out, smollm2_wiki_ids[:tokens], chunk)
    assert got == pytest.approx(want, rel=1e-9)
    # a remainder shorter than a window is dropped, not scored
    assert ppl_mod.perplexity(onnx_io.session(path), "smollm2-135m", tokens=tokens + 31, chunk=chunk) == got


def test_perplexity_rejects_bad_arguments(tmp_path):
    path = tmp_path / "tiny.onnx"
    _tiny_lm(path, 1)
    with pytest.raises(EdgefoldError):
        ppl_mod.perplexity(onnx_io.session(path), "smollm2-135m", tokens=16, chunk=32)


def test_log_softmax_stable():
    from edgefold.evaluate.common import log_softmax64

    x = np.array([[1e4, 0.0, -1e4]], dtype=np.float32)
    y = log_softmax64(x)
    assert np.isfinite(y).all() and y[0, 0] == 0.0


# --- digits CNN and classifier agreement ---------------------------------------------------

@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """Trained and exported here (not the cached `digits_onnx`) so training time is measured."""
    import time

    import torch

    from edgefold.models.digits_cnn import train_digits_cnn

    start = time.perf_counter()
    model = train_digits_cnn(seed=0)
    seconds = time.perf_counter() - start
    folder = tmp_path_factory.mktemp("digits")
    program = torch.onnx.export(
        model,
        (torch.zeros(2, 1, 8, 8),),
        dynamo=True,
        opset_version=21,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    path = folder / "digits.onnx"
    program.save(str(path))
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=TASK_KEY, value=Task.DIGITS_CLASSIFIER.value)
    onnx.save(proto, str(path))
    return path, seconds


def _perturbed(path, out_path, scale=0.5, seed=0):
    proto = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 2:  # conv and linear weights
            noisy = w + rng.normal(0, scale * float(w.std()), w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(proto, str(out_path))
    return out_path


def test_digits_cnn_trains(trained_digits):
    path, seconds = trained_digits
    assert seconds < 20
    accuracy = vision.digits_accuracy(onnx_io.session(path))
    assert accuracy >= 0.95
    assert evaluate(path) == {"accuracy": accuracy}  # task from metadata


def test_digits_cnn_deterministic():
    import torch

    from edgefold.models.digits_cnn import train_digits_cnn

    a, b = train_digits_cnn(seed=0, epochs=1), train_digits_cnn(seed=0, epochs=1)
    assert not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_compare_classifiers_identity_and_perturbed(trained_digits, tmp_path):
    path, _ = trained_digits
    x_test = data.digits_split()[2]
    same = vision.compare_classifiers(path, path, x_test)
    assert same["top1_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-9)

    noisy = _perturbed(path, tmp_path / "noisy.onnx")
    other = vision.compare_classifiers(path, noisy, x_test)
    assert other["top1_agreement"] < 1.0 and other["kl"] > 1e-3

    result = evaluate(noisy, reference_path=path)
    assert set(result) == {"accuracy", "top1_agreement", "kl"}
    assert result["top1_agreement"] == pytest.approx(other["top1_agreement"])
    assert result["accuracy"] < vision.digits_accuracy(onnx_io.session(path)) + 1e-9


def test_agreement_arithmetic():
    ref = np.array([[2.0, 0.0], [0.0, 1.0]])
    cand = np.array([[0.0, 2.0], [0.0, 1.0]])
    got = vision.agreement(ref, cand)
    p = np.exp(ref[0]) / np.exp(ref[0]).sum()
    q = np.exp(cand[0]) / np.exp(cand[0]).sum()
    assert got["top1_agreement"] == 0.5
    assert got["kl"] == pytest.approx((p * np.log(p / q)).sum() / 2)


# --- dispatch ------------------------------------------------------------------------------

def test_primary_metric():
    assert primary_metric("causal-lm") == ("perplexity", False)
    assert primary_metric(Task.SENTENCE_EMBEDDING) == ("lee_spearman", True)
    assert primary_metric("image-classifier") == ("top1_agreement", True)
    assert primary_metric("digits-classifier") == ("accuracy", True)
    assert primary_metric("generic") is None
    with pytest.raises(EdgefoldError):
        primary_metric("translation")


def test_evaluate_dispatch(tmp_path, trained_digits):
    path, _ = trained_digits
    assert evaluate(path, task="generic") == {}
    lm = tmp_path / "tiny.onnx"
    _tiny_lm(lm, 1)
    with pytest.raises(EdgefoldError, match="tokenizer"):
        evaluate(lm, task="causal-lm")
    with pytest.raises(EdgefoldError, match="unknown task"):
        evaluate(lm, task="translation")
    result = evaluate(lm, task="causal-lm", tokenizer="smollm2-135m", tokens=64)
    assert set(result) == {"perplexity"} and result["perplexity"] > 1.0


# --- real models (fixtures from tests/conftest.py) -----------------------------------------

MINILM_LEE_SPEARMAN = 0.5083  # fp32 all-MiniLM-L6-v2, equal to the PyTorch model's value


def test_minilm_lee_spearman_real(minilm_onnx):
    session = onnx_io.session(minilm_onnx)
    first = similarity.lee_spearman(session, "minilm-l6")
    second = evaluate(minilm_onnx)["lee_spearman"]  # task and tokenizer from the model's metadata
    assert 0.45 < first < 0.7
    assert round(first, 3) == round(second, 3)
    assert first == pytest.approx(MINILM_LEE_SPEARMAN, abs=2e-3)


def test_lee_pair_fidelity_and_bootstrap_interval(minilm_onnx):
    emb = similarity.embed(onnx_io.session(minilm_onnx), "minilm-l6", data.lee_documents())
    assert similarity.pair_fidelity(emb, emb) == pytest.approx(1.0)
    assert tuple(similarity.spearman_difference(emb, emb, draws=50)) == (0.0, 0.0, 0.0)
    # Mostly noise: the similarity ranking is lost, and the paired interval sees it.
    noisy = emb + np.random.default_rng(0).normal(scale=0.5, size=emb.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert similarity.pair_fidelity(noisy, emb) < 0.6
    difference = similarity.spearman_difference(emb, noisy, draws=200)
    human = data.lee_pair_indices()[2]
    expected = (scipy.stats.spearmanr(similarity.pair_similarities(emb), human).statistic
                - scipy.stats.spearmanr(similarity.pair_similarities(noisy), human).statistic)
    assert difference.observed == pytest.approx(expected)
    assert 0.0 < difference.low < difference.observed < difference.high
    assert similarity.spearman_difference(noisy, emb, draws=200).high < 0.0
    with pytest.raises(EdgefoldError, match="Lee embeddings must be"):
        similarity.pair_fidelity(emb[:10], emb[:10])
    with pytest.raises(EdgefoldError, match="draws must be at least 1"):
        similarity.spearman_difference(emb, emb, draws=0)


def test_effnet_self_agreement(effnet_onnx):
    session = onnx_io.session(effnet_onnx)
    images = data.image_batch(data.sample_photos())
    same = vision.compare_classifiers(session, session, images)
    assert same["top1_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-9)
    without_reference = evaluate(effnet_onnx, images=images)  # task from metadata
    assert set(without_reference) == {"entropy"} and 0.0 < without_reference["entropy"] < math.log(1000)
    with_reference = evaluate(effnet_onnx, reference_path=effnet_onnx, images=images)
    assert with_reference == same


@pytest.mark.slow
def test_smollm2_perplexity_real(smollm2_onnx):
    value = ppl_mod.perplexity(onnx_io.session(smollm2_onnx), "smollm2-135m")
    assert value == pytest.approx(22.81, abs=0.01)


def test_digits_builtin_accuracy(digits_onnx):
    result = evaluate(digits_onnx)  # the cached built-in export, task from metadata
    assert set(result) == {"accuracy"} and result["accuracy"] >= 0.95
