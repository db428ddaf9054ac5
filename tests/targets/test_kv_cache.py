"""The fixed-size KV-cache decode graph reproduces the full-sequence model token by token."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold.targets.tvm.kv_cache import make_decode_graph

CACHE_LEN = 32
TOKENS = 24


@pytest.fixture(scope="module")
def decode_graph(smollm2_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "decode.onnx"
    stats = make_decode_graph(smollm2_onnx, out, CACHE_LEN)
    return out, stats


def test_decode_graph_is_static_and_valid(decode_graph):
    path, stats = decode_graph
    assert stats["layers_rewritten"] == 30 and stats["cache_len"] == CACHE_LEN
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx_io.load_proto(path)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                       for d in v.type.tensor_type.shape.dim]
              for v in list(proto.graph.input) + list(proto.graph.output)}
    assert shapes["input_ids"] == [1, 1] and shapes["position"] == [1]
    assert shapes["logits"] == [1, 1, 49152]
    for layer in range(30):
        for kind in ("key", "value"):
            assert shapes[f"past_{kind}_{layer}"] == [1, 3, CACHE_LEN, 64]
            assert shapes[f"present_{kind}_{layer}"] == [1, 3, CACHE_LEN, 64]


def test_decode_loop_matches_full_sequence(smollm2_onnx, decode_graph):
    from edgefold.evaluate.perplexity import wikipedia_tokens

    path, _ = decode_graph
    ids = wikipedia_tokens("smollm2-135m", TOKENS)[None]
    full = onnx_io.run(onnx_io.session(smollm2_onnx), {"input_ids": ids})["logits"][0]

    session = onnx_io.session(path)
    feeds = {entry.name: np.zeros((1, 3, CACHE_LEN, 64), np.float32)
             for entry in session.get_inputs() if entry.name.startswith("past_")}
    errors, agree = [], 0
    for position in range(TOKENS):
        feeds["input_ids"] = ids[:, position:position + 1]
        feeds["position"] = np.array([position], np.int64)
        out = onnx_io.run(session, feeds)
        step = out["logits"][0, 0]
        errors.append(float(np.abs(step - full[position]).max()))
        agree += int(step.argmax() == full[position].argmax())
        for name, value in out.items():
            if name.startswith("present_"):
                assert value.shape == (1, 3, CACHE_LEN, 64)
                assert not value[:, :, position + 1:].any(), f"{name} wrote past slot {position}"
                assert value[:, :, position].any(), f"{name} did not write slot {position}"
                feeds["past_" + name[len("present_"):]] = value
    print(f"kv-cache decode: max abs logit error {max(errors):.3g}, argmax agreement {agree}/{TOKENS}")
    assert max(errors) < 1e-3
    assert agree == TOKENS


def test_rejects_non_causal_lm(digits_onnx, tmp_path):
    with pytest.raises(EdgefoldError, match="kv-cache"):
        make_decode_graph(digits_onnx, tmp_path / "decode.onnx", CACHE_LEN)
