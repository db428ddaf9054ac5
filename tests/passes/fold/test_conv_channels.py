"""`conv_channels`: channel sets of a conv/BN net (residual and depthwise ties, concat refusal),
what they read (BN parameters, BN-folded rows, features, norms, reader axes), and the surgery
`remap_channel_set` run in onnxruntime: identity maps keep the outputs, a selection equals the
pruned network built directly, exact duplicates merge with no error, channel scales and reader
shifts land where they should, and the parameter count drops by exactly the removed channels.

The net (built by `_net` from a parameter dict, so a pruned reference is the same builder on
sliced parameters): stem conv3x3-BN-relu -> [a: conv3x3+bias-BN-relu -> dw: depthwise-BN-relu ->
b: conv1x1-BN] + residual -> relu -> GlobalAveragePool -> Reshape([-1, C]) -> Gemm head.
Sets: {stem, b} (width C, residual add) and {a, dw} (width C2, depthwise)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold.analysis import analyse
from edgefold.model_stats import parameter_count
from edgefold.passes.common.ffn_channels import selection_maps
from edgefold.passes.common.initializers import array, node_by_name
from edgefold.passes.fold.conv_channels import (batchnorm_params, channel_sets, effective_rows, producer_norms,
                                                reader_weight, remap_channel_set, set_features)
from edgefold.passes.fold.fold_math import fold_maps

C, C2, CLASSES = 6, 8, 5
BN = ("scale", "bias", "mean", "var")
X = np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(np.float32)


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {"stem.w": rng.standard_normal((C, 3, 3, 3)) * 0.4, "a.w": rng.standard_normal((C2, C, 3, 3)) * 0.2,
         "a.b": rng.standard_normal(C2) * 0.3, "dw.w": rng.standard_normal((C2, 1, 3, 3)) * 0.4,
         "b.w": rng.standard_normal((C, C2, 1, 1)) * 0.4, "head.w": rng.standard_normal((CLASSES, C)) * 0.5,
         "head.b": rng.standard_normal(CLASSES) * 0.1}
    for layer, width in (("stem", C), ("a", C2), ("dw", C2), ("b", C)):
        p[f"{layer}.scale"] = rng.uniform(0.5, 1.5, width)
        p[f"{layer}.bias"] = rng.uniform(-0.5, 0.5, width)
        p[f"{layer}.mean"] = rng.uniform(-0.5, 0.5, width)
        p[f"{layer}.var"] = rng.uniform(0.5, 2.0, width)
    return {k: v.astype(np.float32) for k, v in p.items()}


def _net(p: dict[str, np.ndarray]) -> onnx.ModelProto:
    c, c2 = p["stem.w"].shape[0], p["a.w"].shape[0]

    def bn(layer, x, **attrs):
        return helper.make_node("BatchNormalization", [x] + [f"{layer}.{k}" for k in BN], [f"{layer}.bn"],
                                name=f"{layer}.bn", **attrs)

    nodes = [helper.make_node("Conv", ["x", "stem.w"], ["stem.conv"], name="stem.conv", pads=[1] * 4),
             bn("stem", "stem.conv", epsilon=1e-3),
             helper.make_node("Relu", ["stem.bn"], ["stem.relu"], name="stem.relu"),
             helper.make_node("Conv", ["stem.relu", "a.w", "a.b"], ["a.conv"], name="a.conv", pads=[1] * 4),
             bn("a", "a.conv", epsilon=1e-3),
             helper.make_node("Relu", ["a.bn"], ["a.relu"], name="a.relu"),
             helper.make_node("Conv", ["a.relu", "dw.w"], ["dw.conv"], name="dw.conv", pads=[1] * 4, group=c2),
             bn("dw", "dw.conv"),  # no epsilon attribute: the ONNX default 1e-5
             helper.make_node("Relu", ["dw.bn"], ["dw.relu"], name="dw.relu"),
             helper.make_node("Conv", ["dw.relu", "b.w"], ["b.conv"], name="b.conv"),
             bn("b", "b.conv", epsilon=1e-3),
             helper.make_node("Add", ["stem.relu", "b.bn"], ["residual"], name="residual"),
             helper.make_node("Relu", ["residual"], ["out.relu"], name="out.relu"),
             helper.make_node("GlobalAveragePool", ["out.relu"], ["pool"], name="pool"),
             helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "head.w", "head.b"], ["logits"], name="head", transB=1)]
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array([-1, c], np.int64), "flat_shape"))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _load(p) -> ir.Model:
    return ir.serde.deserialize_model(_net(p))


def _sets(model: ir.Model):
    return {tuple(m.conv for m in s.members): s for s in channel_sets(analyse(model))}


def _run(model, tmp_path=None, feeds=None) -> np.ndarray:
    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    if tmp_path is not None:  # rewritten graphs go through a file and the full checker
        path = tmp_path / "model.onnx"
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds or {"x": X})[0]


def _sliced(p: dict[str, np.ndarray], layers_out: tuple[str, ...], readers_in: tuple[str, ...],
            keep: np.ndarray) -> dict[str, np.ndarray]:
    """The pruned network's parameters: rows of the members (and their BN), columns of the readers."""
    q = dict(p)
    for layer in layers_out:
        q[f"{layer}.w"] = p[f"{layer}.w"][keep]
        for k in BN:
            q[f"{layer}.{k}"] = p[f"{layer}.{k}"][keep]
        if f"{layer}.b" in p and layer != "head":
            q[f"{layer}.b"] = p[f"{layer}.b"][keep]
    for layer in readers_in:
        q[f"{layer}.w"] = p[f"{layer}.w"][:, keep]
    return q


# --- finding sets ----------------------------------------------------------------------------

def test_channel_sets_follow_residual_and_depthwise_ties():
    sets = _sets(_load(_params()))
    assert set(sets) == {("stem.conv", "b.conv"), ("a.conv", "dw.conv")}
    residual, depthwise = sets[("stem.conv", "b.conv")], sets[("a.conv", "dw.conv")]
    assert (residual.width, depthwise.width) == (C, C2)
    assert residual.reason is None and depthwise.reason is None
    assert sorted(residual.consumers) == ["a.conv", "head"]
    assert depthwise.consumers == ["b.conv"]  # the depthwise conv reads its own channels: not a reader
    assert [m.conv for m in depthwise.producers] == ["a.conv"]
    assert [m.conv for m in depthwise.passthrough] == ["dw.conv"]
    assert residual.passthrough == []


def test_concatenated_channels_are_left_as_is():
    """c1 and c2 are concatenated; c4 (read by c5) is not tied to anything."""
    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((4, 3, 1, 1)), "w2": rng.standard_normal((5, 3, 1, 1)),
             "w3": rng.standard_normal((2, 9, 1, 1)), "w4": rng.standard_normal((3, 4, 1, 1)),
             "w5": rng.standard_normal((2, 3, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="c2"),
             helper.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["y"], name="c3"),
             helper.make_node("Conv", ["c1", "w4"], ["c4"], name="c4"),
             helper.make_node("Conv", ["c4", "w5"], ["z"], name="c5")]
    graph = helper.make_graph(nodes, "cat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    sets = _sets(model)
    for name in ("c1", "c2"):
        assert sets[(name,)].reason == "channels are concatenated (concat folding is not supported)"
    assert sets[("c4",)].reason is None and sets[("c4",)].consumers == ["c5"]


# --- reading ---------------------------------------------------------------------------------

def test_batchnorm_params_and_multiplier():
    p = _params()
    model = _load(p)
    nodes = node_by_name(model)
    bn = batchnorm_params(model, nodes["a.bn"])
    assert bn.eps == pytest.approx(1e-3) and bn.names == [f"a.{k}" for k in BN]
    for got, key in zip((bn.gamma, bn.beta, bn.mean, bn.var), BN):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, p[f"a.{key}"])
    np.testing.assert_allclose(bn.a, p["a.scale"] / np.sqrt(p["a.var"].astype(np.float64) + bn.eps), rtol=1e-15)
    assert batchnorm_params(model, nodes["dw.bn"]).eps == 1e-5  # attribute absent


@pytest.mark.parametrize("layer", ["a", "dw", "stem"])
def test_effective_rows_compute_what_conv_plus_bn_computes(layer):
    """Conv + BN in onnxruntime equals one plain conv with the BN-folded rows."""
    p = _params()
    model = _load(p)
    sets = _sets(model)
    member = next(m for s in sets.values() for m in s.members if m.conv == f"{layer}.conv")
    rows = effective_rows(model, member)
    weight = p[f"{layer}.w"]
    assert rows.shape == (weight.shape[0], weight[0].size + 1)
    group = weight.shape[0] if layer == "dw" else 1
    c_in = weight.shape[1] * group
    inputs = ["x", "w"] + (["b"] if f"{layer}.b" in p else [])
    bn_inputs = [f"{layer}.{k}" for k in BN]
    eps = 1e-5 if layer == "dw" else 1e-3
    nodes = [helper.make_node("Conv", inputs, ["z"], pads=[1] * 4, group=group),
             helper.make_node("BatchNormalization", ["z", *bn_inputs], ["y"], epsilon=eps),
             helper.make_node("Conv", ["x", "w_eff", "b_eff"], ["y_folded"], pads=[1] * 4, group=group)]
    inits = {"w": weight, "w_eff": rows[:, :-1].reshape(weight.shape), "b_eff": rows[:, -1],
             **{k: p[k] for k in bn_inputs}, **({"b": p[f"{layer}.b"]} if f"{layer}.b" in p else {})}
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, weight.shape[0], 5, 5]) for n in ("y", "y_folded")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 5, 5])],
                              out, [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((1, c_in, 5, 5)).astype(np.float32)
    y, folded = session.run(None, {"x": x})
    np.testing.assert_allclose(folded, y, rtol=1e-5, atol=1e-5)


def test_features_and_norms():
    model = _load(_params())
    depthwise = _sets(model)[("a.conv", "dw.conv")]
    features = set_features(model, depthwise)
    a_rows, dw_rows = (effective_rows(model, m) for m in depthwise.members)
    assert features.shape == (C2, a_rows.shape[1] + dw_rows.shape[1])
    blocks = np.split(features, [a_rows.shape[1]], axis=1)
    for block, rows in zip(blocks, (a_rows, dw_rows)):
        assert np.linalg.norm(block, axis=1).mean() == pytest.approx(1.0)  # each member weighs the same
        np.testing.assert_allclose(block * np.linalg.norm(rows, axis=1).mean(), rows, rtol=1e-12)
    norms = producer_norms(model, depthwise)  # the first producer (a), not the depthwise conv
    np.testing.assert_allclose(norms, np.linalg.norm(a_rows[:, :-1], axis=1), rtol=1e-12)


def test_reader_weight_axes_and_refusals():
    rng = np.random.default_rng(4)
    inits = {"wc": rng.standard_normal((4, 3, 1, 1)), "wg": rng.standard_normal((4, 3, 3, 3)),
             "wt": rng.standard_normal((5, 12)), "wn": rng.standard_normal((12, 5)), "sv": rng.standard_normal(12)}
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], name="conv"),
             helper.make_node("Conv", ["c", "wg"], ["g"], name="grouped", pads=[1] * 4, group=1),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wt"], ["gt"], name="gemm_t", transB=1),
             helper.make_node("Gemm", ["f", "wn"], ["gn"], name="gemm_n"),
             helper.make_node("MatMul", ["f", "wn"], ["mm"], name="matmul"),
             helper.make_node("Gemm", ["f_t", "wn"], ["ga"], name="gemm_a", transA=1),
             helper.make_node("MatMul", ["f_t", "f"], ["dyn"], name="dynamic"),
             helper.make_node("Mul", ["f", "sv"], ["sq"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2]),
                                           helper.make_tensor_value_info("f_t", TensorProto.FLOAT, [12, 1])],
                              [helper.make_tensor_value_info("gt", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    nodes = node_by_name(model)
    for name, weight, axis in [("conv", "wc", 1), ("grouped", "wg", 1), ("gemm_t", "wt", 1), ("gemm_n", "wn", 0),
                               ("matmul", "wn", 0)]:
        value, got = reader_weight(nodes[name])
        assert (value.name, got) == (weight, axis), name
    nodes["grouped"].attributes["group"] = ir.AttrInt64("group", 2)
    with pytest.raises(ValueError, match="grouped conv reader"):
        reader_weight(nodes["grouped"])
    with pytest.raises(ValueError, match="transA"):
        reader_weight(nodes["gemm_a"])
    with pytest.raises(ValueError, match="not an initializer"):
        reader_weight(nodes["dynamic"])
    with pytest.raises(ValueError, match="Mul reader is not supported"):
        reader_weight(nodes["mul"])


# --- surgery ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", [("stem.conv", "b.conv"), ("a.conv", "dw.conv")])
def test_identity_maps_keep_the_outputs(which, tmp_path):
    p = _params()
    model = _load(p)
    cset = _sets(model)[which]
    before = parameter_count(model)
    eye = np.eye(cset.width)
    remap_channel_set(model, cset, eye, eye)
    assert parameter_count(model) == before
    np.testing.assert_allclose(_run(model, tmp_path), _run(_net(p)), rtol=1e-6, atol=1e-6)


CASES = {  # set -> (members' layers, readers' layers, parameters per removed channel)
    ("stem.conv", "b.conv"): (("stem", "b"), ("a", "head"), 27 + 4 + C2 + 4 + C2 * 9 + CLASSES),
    ("a.conv", "dw.conv"): (("a", "dw"), ("b",), C * 9 + 1 + 4 + 9 + 4 + C),
}


@pytest.mark.parametrize("which", list(CASES))
def test_selection_equals_the_pruned_network(which, tmp_path):
    p = _params()
    model = _load(p)
    cset = _sets(model)[which]
    keep = np.array([0, 2, 3, 5]) if cset.width == C else np.array([1, 2, 4, 6, 7])
    members, readers, per_channel = CASES[which]
    before = parameter_count(model)
    remap_channel_set(model, cset, *selection_maps(keep, cset.width))
    removed = cset.width - len(keep)
    assert parameter_count(model) == before - removed * per_channel
    reference = _net(_sliced(p, members, readers, keep))
    np.testing.assert_allclose(_run(model, tmp_path), _run(reference), rtol=1e-5, atol=1e-5)
    if which == ("a.conv", "dw.conv"):
        assert node_by_name(model)["dw.conv"].attributes["group"].value == len(keep)
    else:
        assert array(model, node_by_name(model)["flatten"].inputs[1].name).tolist() == [-1, len(keep)]


def test_exact_duplicates_merge_with_no_error(tmp_path):
    p = _params()
    for key in ("a.w", "a.b", "dw.w") + tuple(f"{layer}.{k}" for layer in ("a", "dw") for k in BN):
        p[key][5] = p[key][2]  # channel 5 of the {a, dw} set duplicates channel 2 wherever it is made
    model = _load(p)
    cset = _sets(model)[("a.conv", "dw.conv")]
    labels = np.array([0, 1, 2, 3, 4, 2, 5, 6])
    producer, consumer = fold_maps(labels)
    before = parameter_count(model)
    remap_channel_set(model, cset, producer, consumer)
    assert parameter_count(model) == before - CASES[("a.conv", "dw.conv")][2]
    np.testing.assert_allclose(_run(model, tmp_path), _run(_net(p)), rtol=1e-5, atol=1e-5)
    merged_b = array(model, "b.w")
    np.testing.assert_allclose(merged_b[:, 2], p["b.w"][:, 2] + p["b.w"][:, 5], rtol=1e-6)  # columns summed


def test_channel_scale_goes_through_the_batchnorm_gain(tmp_path):
    p = _params()
    model = _load(p)
    cset = _sets(model)[("stem.conv", "b.conv")]
    scale = np.linspace(0.5, 2.0, C)
    eye = np.eye(C)
    remap_channel_set(model, cset, eye, eye, channel_scale=scale)
    for layer in ("stem", "b"):
        np.testing.assert_allclose(array(model, f"{layer}.scale"), p[f"{layer}.scale"] * scale, rtol=1e-6)
        np.testing.assert_allclose(array(model, f"{layer}.w"), p[f"{layer}.w"], rtol=1e-6)
    reference = dict(p, **{f"{layer}.scale": (p[f"{layer}.scale"] * scale).astype(np.float32)
                           for layer in ("stem", "b")})
    np.testing.assert_allclose(_run(model, tmp_path), _run(_net(reference)), rtol=1e-5, atol=1e-5)


def test_reader_maps_and_shifts(tmp_path):
    """Per-reader maps replace the consumer map; shifts go into a reader's BN mean or its bias."""
    p = _params()
    model = _load(p)
    cset = _sets(model)[("stem.conv", "b.conv")]
    eye = np.eye(C)
    head_map = np.diag(np.linspace(1.0, 2.0, C))
    a_shift, head_shift = np.linspace(-1.0, 1.0, C2), np.arange(CLASSES, dtype=np.float64)
    remap_channel_set(model, cset, eye, eye, reader_maps={"head": head_map},
                      reader_shifts={"a.conv": a_shift, "head": head_shift})
    np.testing.assert_allclose(array(model, "a.mean"), p["a.mean"] - a_shift, rtol=1e-6)  # a has a BN after it
    np.testing.assert_array_equal(array(model, "a.b"), p["a.b"])  # ... so its bias stays
    np.testing.assert_allclose(array(model, "head.b"), p["head.b"] + head_shift, rtol=1e-6)
    np.testing.assert_allclose(array(model, "head.w"), p["head.w"] @ head_map, rtol=1e-6)
    np.testing.assert_allclose(array(model, "a.w"), p["a.w"], rtol=1e-6)  # the shared consumer map: identity
    reference = dict(p, **{"a.mean": (p["a.mean"] - a_shift).astype(np.float32),
                           "head.b": (p["head.b"] + head_shift).astype(np.float32),
                           "head.w": (p["head.w"] @ head_map).astype(np.float32)})
    np.testing.assert_allclose(_run(model, tmp_path), _run(_net(reference)), rtol=1e-5, atol=1e-5)


def test_maps_must_match_the_width():
    model = _load(_params())
    cset = _sets(model)[("a.conv", "dw.conv")]
    with pytest.raises(ValueError, match="maps do not match width 8"):
        remap_channel_set(model, cset, np.eye(C), np.eye(C))
    producer, consumer = selection_maps(np.arange(4), C2)
    with pytest.raises(ValueError, match="maps do not match"):
        remap_channel_set(model, cset, producer, consumer[:, :3])
