"""`bn_repair`: moments of activations of a Gaussian (against closed forms and dense numerical
integration), per-channel statistics read from BatchNorms (Clip bounds included), the data-free
second moment of a channel set (against onnxruntime on Gaussian inputs the BN statistics
describe), and `statistics_fold`: exact duplicates fold with no error, dead channels get no
weight, and the reader shifts keep the readers' output means that plain folding loses.

The nets: x ~ N(0, 1) iid -> 1x1 conv (no bias) -> BN whose running stats are the true ones
(mean 0, var = |filter|^2) -> [activation] -> 1x1 conv reader (bias, or a BN after it)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold.analysis import analyse
from edgefold.passes.fold.bn_repair import activation_moments, channel_stats, set_second_moment, statistics_fold
from edgefold.passes.fold.conv_channels import channel_sets, remap_channel_set, set_features
from edgefold.passes.fold.fold_math import assignment, fold_maps

CH, OUT = 4, 3
MU = np.array([-2.0, -0.5, 0.0, 0.3, 1.5, 4.0])
SD = np.array([1.0, 0.5, 2.0, 1.0, 0.7, 1.0])


def _dense_moments(f):
    """Mean and variance of f(y), y ~ N(MU, SD^2), by a fine grid (an independent reference)."""
    t = np.linspace(-12.0, 12.0, 200001)
    w = np.exp(-t * t / 2)
    w /= w.sum()
    values = f(MU[:, None] + SD[:, None] * t[None, :])
    mean = values @ w
    return mean, (values * values) @ w - mean * mean


def test_identity_moments_are_exact():
    for kind in (None, "identity", "leaky_relu"):  # an unknown kind is left linear
        mean, var = activation_moments(MU, SD, kind)
        np.testing.assert_allclose(mean, MU, atol=1e-12)
        np.testing.assert_allclose(var, SD ** 2, atol=1e-12)


def test_relu_moments_match_the_closed_form():
    z = MU / SD
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    mean = MU * cdf + SD * pdf
    second = (MU ** 2 + SD ** 2) * cdf + MU * SD * pdf
    got_mean, got_var = activation_moments(MU, SD, "relu")
    np.testing.assert_allclose(got_mean, mean, atol=5e-3 * SD.max())
    np.testing.assert_allclose(got_var, second - mean ** 2, atol=5e-3 * SD.max() ** 2)


@pytest.mark.parametrize("kind,bounds,reference,tolerance", [
    ("relu6", (None, None), lambda y: np.clip(y, 0.0, 6.0), 2e-2),
    ("clip", (-0.5, 1.0), lambda y: np.clip(y, -0.5, 1.0), 2e-2),
    ("clip", (None, None), lambda y: y, 1e-9),
    ("silu", (None, None), lambda y: y / (1 + np.exp(-y)), 1e-5),
    ("sigmoid", (None, None), lambda y: 1 / (1 + np.exp(-y)), 1e-5),
    ("hardswish", (None, None), lambda y: y * np.clip(y + 3, 0, 6) / 6, 5e-3),
    ("tanh", (None, None), np.tanh, 1e-3),
    ("gelu", (None, None), lambda y: 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3))), 1e-4),
])
def test_activation_moments_match_numerical_integration(kind, bounds, reference, tolerance):
    mean, var = activation_moments(MU, SD, kind, bounds)
    want_mean, want_var = _dense_moments(reference)
    np.testing.assert_allclose(mean, want_mean, atol=tolerance)
    np.testing.assert_allclose(var, want_var, atol=tolerance)
    assert np.all(var >= 0)


def test_zero_spread_is_a_point():
    mean, var = activation_moments(np.array([-1.0, 2.0, 7.0]), np.zeros(3), "relu6")
    np.testing.assert_allclose(mean, [0.0, 2.0, 6.0], atol=1e-12)
    np.testing.assert_allclose(var, 0.0, atol=1e-12)


# --- graphs ----------------------------------------------------------------------------------

def _stats_net(gamma, beta, *, act: str | None = "relu", reader_bn: bool = False, w1=None, seed: int = 0,
               clip=(-0.5, 1.0)) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((CH, CH)) * 0.7 if w1 is None else w1
    w2 = rng.standard_normal((OUT, CH))
    inits = {"w1": w1.reshape(CH, CH, 1, 1), "gamma": gamma, "beta": beta, "mean": np.zeros(CH),
             "var": (w1 ** 2).sum(axis=1), "w2": w2.reshape(OUT, CH, 1, 1), "b2": rng.standard_normal(OUT)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["z"], name="conv1"),
             helper.make_node("BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["bn"], name="bn1")]
    h = "bn"
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["bn"], ["h"], name="act"))
        h = "h"
    elif act == "clip":
        inits.update(low=np.array(clip[0]), high=np.array(clip[1]))
        nodes.append(helper.make_node("Clip", ["bn", "low", "high"], ["h"], name="act"))
        h = "h"
    nodes.append(helper.make_node("Conv", [h, "w2", "b2"], ["r"], name="conv2"))
    if reader_bn:
        inits.update(g2=rng.uniform(0.5, 1.5, OUT), be2=rng.uniform(-0.5, 0.5, OUT), m2=rng.uniform(-1, 1, OUT),
                     v2=rng.uniform(0.5, 2.0, OUT))
        nodes.append(helper.make_node("BatchNormalization", ["r", "g2", "be2", "m2", "v2"], ["y"], name="bn2"))
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "stats", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, CH, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, OUT, 32, 32])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


FEEDS = {"x": np.random.default_rng(11).standard_normal((8, CH, 32, 32)).astype(np.float32)}


def _values(proto: onnx.ModelProto, names: list[str]) -> list[np.ndarray]:
    """Run the graph with `names` as extra outputs (as calibration does)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for name in names:
        if name not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, FEEDS)


def _first_set(model: ir.Model):
    return next(s for s in channel_sets(analyse(model)) if s.members[0].conv == "conv1")


def _channel_second_moment(values: np.ndarray) -> np.ndarray:
    return np.square(values.astype(np.float64)).mean(axis=(0, 2, 3))


# --- statistics of a set -----------------------------------------------------------------------

def test_channel_stats_read_the_batchnorm_and_the_clip_bounds():
    gamma, beta = np.array([1.0, -0.7, 1.2, 0.4]), np.array([0.5, -0.3, 1.0, 0.2])
    for act, kind, bounds in (("relu", "relu", (None, None)), ("clip", "clip", (-0.5, 1.0)), (None, None, None)):
        model = ir.serde.deserialize_model(_stats_net(gamma, beta, act=act))
        [member] = _first_set(model).members
        assert member.activation == kind
        mean, var = channel_stats(model, member)
        want_mean, want_var = activation_moments(beta, np.abs(gamma), kind, bounds or (None, None))
        np.testing.assert_allclose(mean, want_mean, rtol=1e-6)  # (the graph stores float32)
        np.testing.assert_allclose(var, want_var, rtol=1e-6)
        # given gamma/beta replace the BN's
        mean, var = channel_stats(model, member, gamma=np.ones(CH), beta=np.zeros(CH))
        np.testing.assert_allclose((mean, var), activation_moments(np.zeros(CH), np.ones(CH), kind, bounds or
                                                                   (None, None)), rtol=1e-12)


def test_second_moment_matches_the_network_on_gaussian_inputs():
    gamma, beta = np.array([1.0, 0.7, -1.2, 1.0]), np.array([0.5, -0.3, 1.0, -8.0])  # channel 3: dead
    proto = _stats_net(gamma, beta)
    model = ir.serde.deserialize_model(proto)
    moment = set_second_moment(model, _first_set(model))
    [h] = _values(proto, ["h"])
    measured = _channel_second_moment(h)
    np.testing.assert_allclose(moment[:3], measured[:3], rtol=0.06)
    assert moment[3] < 1e-10 and measured[3] == 0.0  # relu(N(-8, 1)): nothing comes out


def test_second_moment_of_a_residual_sum():
    """Two members added: means and variances add (independent here: disjoint inputs)."""
    rng = np.random.default_rng(5)
    wa, wb = np.zeros((CH, CH)), np.zeros((CH, CH))
    wa[:, :2], wb[:, 2:] = rng.standard_normal((CH, 2)), rng.standard_normal((CH, 2))
    params = {}
    for tag, w in (("a", wa), ("b", wb)):
        params.update({f"w{tag}": w.reshape(CH, CH, 1, 1), f"g{tag}": rng.uniform(0.5, 1.5, CH),
                       f"be{tag}": rng.uniform(-1, 1, CH), f"m{tag}": np.zeros(CH), f"v{tag}": (w ** 2).sum(1)})
    params["wr"] = rng.standard_normal((OUT, CH, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "wa"], ["za"], name="conva"),
             helper.make_node("BatchNormalization", ["za", "ga", "bea", "ma", "va"], ["ya"], name="bna"),
             helper.make_node("Conv", ["x", "wb"], ["zb"], name="convb"),
             helper.make_node("BatchNormalization", ["zb", "gb", "beb", "mb", "vb"], ["yb"], name="bnb"),
             helper.make_node("Add", ["ya", "yb"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["h"], name="relu"),
             helper.make_node("Conv", ["h", "wr"], ["y"], name="reader")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, CH, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, OUT, 32, 32])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in params.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model = ir.serde.deserialize_model(proto)
    [cset] = [s for s in channel_sets(analyse(model)) if len(s.members) == 2]
    assert {m.conv for m in cset.members} == {"conva", "convb"}
    moment = set_second_moment(model, cset)
    mean = params["bea"] + params["beb"]
    var = params["ga"].astype(np.float64) ** 2 + params["gb"].astype(np.float64) ** 2
    np.testing.assert_allclose(moment, var + mean ** 2, rtol=1e-6)
    [s] = _values(proto, ["s"])
    np.testing.assert_allclose(moment, _channel_second_moment(s), rtol=0.06)


def test_no_batchnorm_no_second_moment():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CH, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT, 4, 4])],
                              [numpy_helper.from_array(rng.standard_normal((CH, CH, 1, 1)).astype(np.float32), "w1"),
                               numpy_helper.from_array(rng.standard_normal((OUT, CH, 1, 1)).astype(np.float32), "w2")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    cset = _first_set(model)
    assert set_second_moment(model, cset) is None
    mean, var = channel_stats(model, cset.members[0])  # gamma 1, beta 0: relu of N(0, 1)
    np.testing.assert_allclose(mean, 1 / math.sqrt(2 * math.pi), atol=5e-3)  # (quadrature across the kink)
    np.testing.assert_allclose(var, 0.5 - 1 / (2 * math.pi), atol=5e-3)


# --- statistics_fold ---------------------------------------------------------------------------

def _run(proto_or_model) -> np.ndarray:
    proto = proto_or_model if isinstance(proto_or_model, onnx.ModelProto) else ir.serde.serialize_model(proto_or_model)
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, FEEDS)[0]


def test_exact_duplicates_fold_plainly_and_with_no_error():
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((CH, CH))
    w1[3] = w1[1]
    gamma, beta = np.array([1.0, 0.8, 1.3, 0.8]), np.array([0.2, -0.1, 0.4, -0.1])  # channel 3 = channel 1
    proto = _stats_net(gamma, beta, w1=w1)
    model = ir.serde.deserialize_model(proto)
    cset = _first_set(model)
    labels = np.array([0, 1, 2, 1])
    folded = statistics_fold(model, cset, labels, set_features(model, cset))
    np.testing.assert_allclose(folded.producer_map, fold_maps(labels)[0], atol=1e-12)  # equal spreads: the mean
    assert list(folded.consumer_maps) == ["conv2"]
    np.testing.assert_allclose(folded.consumer_maps["conv2"], assignment(labels), atol=1e-9)  # alpha = 1
    np.testing.assert_allclose(folded.reader_shifts["conv2"], 0.0, atol=1e-9)
    remap_channel_set(model, cset, folded.producer_map, assignment(labels), reader_maps=folded.consumer_maps,
                      reader_shifts=folded.reader_shifts)
    np.testing.assert_allclose(_run(model), _run(proto), rtol=1e-5, atol=1e-5)


def test_dead_channel_adds_nothing_and_singletons_keep_their_column():
    gamma, beta = np.array([1.0, 0.7, 1.2, 1.0]), np.array([0.5, -0.3, 1.0, -9.0])  # channel 3: dead after relu
    model = ir.serde.deserialize_model(_stats_net(gamma, beta))
    cset = _first_set(model)
    labels = np.array([0, 1, 2, 0])
    folded = statistics_fold(model, cset, labels, set_features(model, cset))
    assert folded.producer_map[0, 3] < 1e-5 and folded.producer_map[0, 0] > 1 - 1e-5
    np.testing.assert_array_equal(folded.producer_map[1:], np.eye(CH)[1:3])  # singletons: exact selections
    consumer = folded.consumer_maps["conv2"]
    assert consumer[1, 1] == 1.0 and consumer[2, 2] == 1.0
    given = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    assert statistics_fold(model, cset, labels, set_features(model, cset), producer=given).producer_map is given


@pytest.mark.parametrize("reader_bn", [False, True])
def test_reader_shifts_keep_the_output_mean(reader_bn):
    """Channels of means +2 and -2 merged: their mean is 0, so plain folding moves the reader's
    output mean by W_0 * 2 - W_1 * 2; the shift (into the reader's bias, or its BN mean) gives it back."""
    gamma, beta = np.array([1.0, 1.0, 0.6, 0.9]), np.array([2.0, -2.0, 0.3, -0.4])
    proto = _stats_net(gamma, beta, act=None, reader_bn=reader_bn, seed=3)
    want = _run(proto).astype(np.float64).mean(axis=(0, 2, 3))
    means = {}
    for shifted in (True, False):
        model = ir.serde.deserialize_model(proto)
        cset = _first_set(model)
        labels = np.array([0, 0, 1, 2])
        folded = statistics_fold(model, cset, labels, set_features(model, cset))
        assert np.abs(folded.reader_shifts["conv2"]).max() > 0.5
        remap_channel_set(model, cset, folded.producer_map, assignment(labels), reader_maps=folded.consumer_maps,
                          reader_shifts=folded.reader_shifts if shifted else None)
        means[shifted] = _run(model).astype(np.float64).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(means[True], want, atol=0.05)
    assert np.abs(means[False] - want).max() > 0.5
