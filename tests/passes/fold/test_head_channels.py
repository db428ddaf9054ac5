"""`head_channels`: whole-head surgery on a hand-built two-layer GQA attention graph laid out
as the exporter writes it (q/k/v projections with bias, Reshape to heads, repeat_kv as
Unsqueeze/Expand/Reshape with an Expand shape built by a Concat, shape constants shared by
both layers and by k and v). Identity maps keep the outputs bit-identical; dropping a kv group
or query heads equals a numpy reference of the pruned attention and leaves the other layer's
shapes alone; duplicated kv groups merge with no error. Also the clustering features and norms."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold.analysis import analyse
from edgefold.passes.common.initializers import array
from edgefold.passes.fold.head_channels import block_map, head_features, head_features_raw, remap_heads

D, H, KV, HD, SEQ = 32, 4, 2, 8, 5
REP = H // KV
X = np.random.default_rng(9).standard_normal((1, SEQ, D)).astype(np.float32)


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {}
    for layer in range(2):
        for name, shape in (("wq", (D, H * HD)), ("wk", (D, KV * HD)), ("wv", (D, KV * HD)), ("wo", (H * HD, D))):
            p[f"l{layer}.{name}"] = rng.standard_normal(shape) / math.sqrt(shape[0])
        for name, size in (("bq", H * HD), ("bk", KV * HD), ("bv", KV * HD), ("bo", D)):
            p[f"l{layer}.{name}"] = rng.standard_normal(size) * 0.1
    return {k: v.astype(np.float32) for k, v in p.items()}


def _graph(p: dict[str, np.ndarray]) -> onnx.ModelProto:
    consts = {"shape_q": [1, -1, H, HD], "shape_kv": [1, -1, KV, HD], "shape_rep": [1, H, -1, HD],
              "shape_merge": [1, -1, H * HD], "one": [1], "two": [KV], "head_size": [HD], "axis2": [2]}
    assert KV == REP  # like the exporter, "two" is both the kv count and the repeat count of the Expand shape
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array(1 / math.sqrt(HD), np.float32), "scale"))
    nodes = [helper.make_node("Shape", ["x"], ["seq"], name="seq_len", start=1, end=2),
             helper.make_node("Concat", ["one", "two", "two", "seq", "head_size"], ["expand_shape"],
                              name="expand_shape", axis=0)]
    h = "x"
    for layer in range(2):
        def n(op, inputs, out, **attrs):
            nodes.append(helper.make_node(op, inputs, [f"l{layer}.{out}"], name=f"l{layer}.{out}", **attrs))
            return f"l{layer}.{out}"

        def proj(role, shape):
            y = n("Add", [n("MatMul", [h, f"l{layer}.w{role}"], f"{role}_mm"), f"l{layer}.b{role}"], f"{role}_proj")
            return n("Transpose", [n("Reshape", [y, shape], f"{role}_heads")], f"{role}_t", perm=[0, 2, 1, 3])

        def repeat(role, t):
            u = n("Unsqueeze", [t, "axis2"], f"{role}_unsq")
            return n("Reshape", [n("Expand", [u, "expand_shape"], f"{role}_expand"), "shape_rep"], f"{role}_rep")

        q = proj("q", "shape_q")
        k = repeat("k", proj("k", "shape_kv"))
        v = repeat("v", proj("v", "shape_kv"))
        scores = n("Mul", [n("MatMul", [q, n("Transpose", [k], "k_tt", perm=[0, 1, 3, 2])], "scores"), "scale"],
                   "scaled")
        context = n("MatMul", [n("Softmax", [scores], "probs", axis=-1), v], "context")
        merged = n("Reshape", [n("Transpose", [context], "context_t", perm=[0, 2, 1, 3]), "shape_merge"], "merged")
        out = n("Add", [n("MatMul", [merged, f"l{layer}.wo"], "o_mm"), f"l{layer}.bo"], "o_proj")
        h = n("Add", [h, out], "residual")
    graph = helper.make_graph(nodes, "gqa", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", D])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, "seq", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _reference(p: dict[str, np.ndarray], heads: dict[int, tuple[int, int]]) -> np.ndarray:
    """numpy attention; `heads[layer]` = (query heads, kv heads) of that layer's (pruned) weights."""
    x = X[0].astype(np.float64)
    for layer in range(2):
        nh, nkv = heads.get(layer, (H, KV))
        w = {k.split(".")[1]: v.astype(np.float64) for k, v in p.items() if k.startswith(f"l{layer}.")}
        q = (x @ w["wq"] + w["bq"]).reshape(SEQ, nh, HD).transpose(1, 0, 2)
        k = (x @ w["wk"] + w["bk"]).reshape(SEQ, nkv, HD).transpose(1, 0, 2)
        v = (x @ w["wv"] + w["bv"]).reshape(SEQ, nkv, HD).transpose(1, 0, 2)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)  # query head h reads kv head h // rep
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(HD)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        merged = (probs @ v).transpose(1, 0, 2).reshape(SEQ, nh * HD)
        x = x + merged @ w["wo"] + w["bo"]
    return x[None]


def _pruned(p, layer: int, q_keep: list[int], kv_keep: list[int]) -> dict[str, np.ndarray]:
    q_cols = np.concatenate([np.arange(h * HD, (h + 1) * HD) for h in q_keep])
    kv_cols = np.concatenate([np.arange(j * HD, (j + 1) * HD) for j in kv_keep])
    out = dict(p)
    pre = f"l{layer}."
    out[pre + "wq"], out[pre + "bq"] = p[pre + "wq"][:, q_cols], p[pre + "bq"][q_cols]
    for role in "kv":
        out[pre + f"w{role}"], out[pre + f"b{role}"] = p[pre + f"w{role}"][:, kv_cols], p[pre + f"b{role}"][kv_cols]
    out[pre + "wo"] = p[pre + "wo"][q_cols]
    return out


def _load(p) -> tuple[ir.Model, list]:
    model = ir.serde.deserialize_model(_graph(p))
    return model, analyse(model).attentions


def _run(model: ir.Model, tmp_path) -> np.ndarray:
    path = tmp_path / "model.onnx"
    onnx.save(ir.serde.serialize_model(model), str(path))
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(tmp_path / "inferred.onnx"), strict_mode=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


def _float_params(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values()
               if v.const_value.dtype == ir.DataType.FLOAT and v.const_value.size > 1)


def test_the_graph_is_two_gqa_blocks():
    p = _params()
    model, groups = _load(p)
    assert [(g.num_heads, g.num_kv_heads, g.head_dim, g.kv_repeat) for g in groups] == [(H, KV, HD, "interleave")] * 2
    assert groups[0].kv_groups == [[0, 1], [2, 3]]
    assert "l0.k_expand" in groups[0].shape_nodes and "l0.merged" in groups[0].shape_nodes
    session = ort.InferenceSession(_graph(p).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": X})[0], _reference(p, {}), rtol=1e-5, atol=1e-5)


def test_block_map():
    head_map = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    channels = block_map(head_map, 2)
    np.testing.assert_array_equal(channels, np.kron(head_map, np.eye(2)))
    w = np.arange(6.0)  # channels 0-1: head 0, 2-3: head 1, 4-5: head 2
    np.testing.assert_array_equal(channels @ w, [2.0, 3.0, 2.0, 3.0])


def _unit_norms(model, group, unit):
    """Each unit's magnitude as fold's baseline reads it: the norm of its raw rows."""
    return np.linalg.norm(head_features_raw(model, group, unit), axis=1)


def test_features_and_norms():
    p = _params()
    p["l0.wq"][:, 3 * HD:] = p["l0.wq"][:, HD:2 * HD]  # query head 3 = query head 1 (q rows and o columns)
    p["l0.wo"][3 * HD:] = p["l0.wo"][HD:2 * HD]
    model, groups = _load(p)
    group = groups[0]
    q_features = head_features(model, group, "q")
    assert q_features.shape == (H, 2 * HD * D)
    np.testing.assert_array_equal(q_features[3], q_features[1])
    q_part = q_features[:, : HD * D]
    assert np.linalg.norm(q_part, axis=1).mean() == pytest.approx(1.0)  # each projection block: unit mean norm
    kv_features = head_features(model, group, "kv")
    assert kv_features.shape == (KV, 2 * HD * D + REP * 2 * HD * D)
    wq, wo = p["l0.wq"].astype(np.float64), p["l0.wo"].astype(np.float64)
    q_norms = [math.sqrt((wq[:, h * HD:(h + 1) * HD] ** 2).sum() + (wo[h * HD:(h + 1) * HD] ** 2).sum())
               for h in range(H)]
    np.testing.assert_allclose(_unit_norms(model, group, "q"), q_norms, rtol=1e-12)
    kv_raw = head_features_raw(model, group, "kv")
    wk, wv = p["l0.wk"].astype(np.float64), p["l0.wv"].astype(np.float64)
    for j, heads in enumerate(group.kv_groups):
        want = (wk[:, j * HD:(j + 1) * HD] ** 2).sum() + (wv[:, j * HD:(j + 1) * HD] ** 2).sum() + sum(
            q_norms[h] ** 2 for h in heads)
        assert np.linalg.norm(kv_raw[j]) == pytest.approx(math.sqrt(want), rel=1e-12)
    # scaling a projection moves the norms, not the (block-normalised) features
    model.graph.initializers["l0.wq"].const_value = ir.Tensor(p["l0.wq"] * 10, name="l0.wq")
    np.testing.assert_allclose(head_features(model, group, "q"), q_features, atol=1e-12)
    assert np.all(_unit_norms(model, group, "q") > 3 * np.asarray(q_norms))


def test_identity_maps_are_bit_identical(tmp_path):
    p = _params()
    model, groups = _load(p)
    before = _float_params(model)
    session = ort.InferenceSession(_graph(p).SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": X})[0]
    remap_heads(model, groups[0], np.eye(H), np.eye(H), np.eye(KV))
    assert _float_params(model) == before
    np.testing.assert_array_equal(_run(model, tmp_path), want)


@pytest.mark.parametrize("q_keep,kv_keep", [([0, 1], [0]), ([2, 3], [1]), ([0, 3], [0, 1]), ([1, 2], [0, 1])])
def test_dropping_heads_equals_the_pruned_attention(tmp_path, q_keep, kv_keep):
    """A whole kv group (with its query heads), or one query head per group (repeat 2 -> 1)."""
    p = _params()
    model, groups = _load(p)
    before = _float_params(model)
    q_map = np.eye(H)[q_keep]
    kv_map = np.eye(KV)[kv_keep]
    remap_heads(model, groups[0], q_map, q_map.T.copy(), kv_map)
    removed_q, removed_kv = H - len(q_keep), KV - len(kv_keep)
    assert before - _float_params(model) == removed_q * HD * (2 * D + 1) + removed_kv * 2 * HD * (D + 1)
    got = _run(model, tmp_path)
    want = _reference(_pruned(p, 0, q_keep, kv_keep), {0: (len(q_keep), len(kv_keep))})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # layer 1 still reads the shared constants, unchanged; layer 0 reads its own
    nodes = {n.name: n for n in model.graph}
    for name in ("shape_q", "shape_kv", "shape_rep", "shape_merge"):
        assert array(model, name).tolist() == {"shape_q": [1, -1, H, HD], "shape_kv": [1, -1, KV, HD],
                                               "shape_rep": [1, H, -1, HD], "shape_merge": [1, -1, H * HD]}[name]
    assert nodes["l1.q_heads"].inputs[1].name == "shape_q" and nodes["l1.k_expand"].inputs[1].name == "expand_shape"
    assert array(model, nodes["l0.q_heads"].inputs[1].name).tolist() == [1, -1, len(q_keep), HD]
    assert array(model, nodes["l0.merged"].inputs[1].name).tolist() == [1, -1, len(q_keep) * HD]
    for name in ("wq", "wk", "wv", "wo", "bq", "bk", "bv"):
        np.testing.assert_array_equal(array(model, f"l1.{name}"), p[f"l1.{name}"])


def test_duplicated_kv_groups_merge_with_no_error(tmp_path):
    p = _params()
    for role in "kv":  # kv head 1 = kv head 0, query heads 2, 3 = query heads 0, 1
        p[f"l0.w{role}"][:, HD:] = p[f"l0.w{role}"][:, :HD]
        p[f"l0.b{role}"][HD:] = p[f"l0.b{role}"][:HD]
    p["l0.wq"][:, 2 * HD:] = p["l0.wq"][:, : 2 * HD]
    p["l0.bq"][2 * HD:] = p["l0.bq"][: 2 * HD]
    model, groups = _load(p)
    want = _reference(p, {})
    kv_map = np.array([[0.5, 0.5]])  # fold's maps for the two kv groups into one: mean of producers ...
    q_map = np.array([[0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5]])  # ... query head r of each group with its group
    q_consumer = np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]])  # ... and sums of consumers
    remap_heads(model, groups[0], q_map, q_consumer, kv_map)
    np.testing.assert_allclose(_run(model, tmp_path), want, rtol=1e-5, atol=1e-5)
    merged_o = array(model, "l0.wo")
    assert merged_o.shape == (REP * HD, D)
    np.testing.assert_allclose(merged_o[:HD], p["l0.wo"][:HD] + p["l0.wo"][2 * HD:3 * HD], rtol=1e-6)


def test_query_heads_must_share_kv_heads_evenly():
    model, groups = _load(_params())
    with pytest.raises(ValueError, match="3 query heads cannot share 2 kv heads"):
        remap_heads(model, groups[0], np.eye(H)[:3], np.eye(H)[:3].T, np.eye(KV))
