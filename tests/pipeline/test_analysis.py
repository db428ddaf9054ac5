"""Graph analysis: synthetic graphs with known structure, then the three real models."""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from edgefold import onnx_io
from edgefold.analysis import (
    Analysis,
    AttentionGroup,
    ChannelTie,
    ConvChannelGroup,
    FfnGroup,
    LinearRef,
    analyse,
    print_table,
)

torch.manual_seed(0)


def _export(module: torch.nn.Module, *args: torch.Tensor):
    """The real exporter path the pipeline uses (dynamo, opset 21, default optimisation)."""
    program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=21, verbose=False)
    return program.model  # an onnx_ir.Model


# --------------------------------------------------------------------------- torch models
class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class TinyDecoderBlock(torch.nn.Module):
    """Llama-shaped: RMSNorm, GQA attention (4 q / 2 kv heads) with RoPE and repeat_kv, SwiGLU."""

    def __init__(self, hidden=32, heads=4, kv_heads=2, inter=64):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        d = self.head_dim
        self.input_norm, self.post_norm = RMSNorm(hidden), RMSNorm(hidden)
        self.q_proj = torch.nn.Linear(hidden, heads * d, bias=False)
        self.k_proj = torch.nn.Linear(hidden, kv_heads * d, bias=False)
        self.v_proj = torch.nn.Linear(hidden, kv_heads * d, bias=False)
        self.o_proj = torch.nn.Linear(heads * d, hidden, bias=False)
        self.gate_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.up_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.down_proj = torch.nn.Linear(inter, hidden, bias=False)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d)), persistent=False)

    def _repeat_kv(self, x):
        b, h, s, d = x.shape
        rep = self.heads // self.kv_heads
        return x[:, :, None, :, :].expand(b, h, rep, s, d).reshape(b, h * rep, s, d)

    def forward(self, x):
        b, s, _ = x.shape
        h = self.input_norm(x)
        q = self.q_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        pos = torch.arange(s, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, s, -1))
        h = self.post_norm(x)
        return x + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class TiledKvBlock(TinyDecoderBlock):
    """Same block with kv heads repeated as a whole (Tile): query head h reads kv h % 2."""

    def _repeat_kv(self, x):
        return x.repeat(1, self.heads // self.kv_heads, 1, 1)


class GeGLU(torch.nn.Module):
    def __init__(self, hidden=16, inter=40):
        super().__init__()
        self.gate = torch.nn.Linear(hidden, inter, bias=False)
        self.up = torch.nn.Linear(hidden, inter, bias=False)
        self.down = torch.nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.gate(x), approximate="tanh") * self.up(x))


class PlainFfn(torch.nn.Module):
    def __init__(self, hidden=16, inter=48):
        super().__init__()
        self.fc1 = torch.nn.Linear(hidden, inter)
        self.fc2 = torch.nn.Linear(inter, hidden)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class ConvBnBlock(torch.nn.Module):
    """conv->BatchNorm->ReLU->depthwise->ReLU6->1x1 conv + residual, concat with a side conv, head, Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = torch.nn.Conv2d(8, 8, 1)
        self.c3 = torch.nn.Conv2d(3, 4, 1)
        self.head = torch.nn.Conv2d(12, 6, 1)
        self.fc = torch.nn.Linear(6, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        r = self.c2(torch.nn.functional.relu6(self.dw(y))) + y
        z = torch.cat([r, torch.relu(self.c3(x))], 1)
        return self.fc(self.head(z).mean((2, 3)))


@pytest.fixture(scope="module")
def decoder_block_model():
    return _export(TinyDecoderBlock(), torch.randn(1, 6, 32))


@pytest.fixture(scope="module")
def decoder_block(decoder_block_model):
    return analyse(decoder_block_model)


@pytest.fixture(scope="module")
def geglu():
    return analyse(_export(GeGLU(), torch.randn(2, 5, 16)))


@pytest.fixture(scope="module")
def plain_ffn():
    return analyse(_export(PlainFfn(), torch.randn(2, 5, 16)))


# --------------------------------------------------------------------------- onnx.helper graphs
def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def erf_gelu_gemm_model() -> onnx.ModelProto:
    """Gemm(transB=1) producer with bias in C, Erf-based GELU, MatMul consumer + bias Add.

    No value_info: head/channel sizes must come from shape inference.
    """
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Div", ["h", "sqrt2"], ["h_div"], name="gelu_div"),
        helper.make_node("Erf", ["h_div"], ["h_erf"], name="gelu_erf"),
        helper.make_node("Add", ["h_erf", "one"], ["h_erf1"], name="gelu_add"),
        helper.make_node("Mul", ["h", "h_erf1"], ["h_mul"], name="gelu_mul"),
        helper.make_node("Mul", ["h_mul", "half"], ["act"], name="gelu_half"),
        helper.make_node("MatMul", ["act", "w2"], ["y_raw"], name="fc2"),
        helper.make_node("Add", ["y_raw", "b2"], ["y"], name="fc2_bias"),
    ]
    inits = [_init("w1", 24, 8), _init("b1", 24), _scalar("sqrt2", math.sqrt(2)), _scalar("one", 1.0),
             _scalar("half", 0.5), _init("w2", 24, 8), _init("b2", 8)]
    return _model(nodes, [_tensor("x", 4, 8)], [_tensor("y", 4, 8)], inits)


def unknown_patterns_model() -> onnx.ModelProto:
    """Three things the analysis must not touch, each reported as left as is.

    1. an MLP whose activation output is also read outside the block (ReduceSum);
    2. an MLP with a per-channel scale inside the activation region;
    3. a grouped (not depthwise) conv.
    """
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="leak_up"),
        helper.make_node("Relu", ["a"], ["a_act"], name="leak_relu"),
        helper.make_node("MatMul", ["a_act", "wb"], ["b"], name="leak_down"),
        helper.make_node("ReduceSum", ["a_act", "axes"], ["side"], name="side_read", keepdims=0),
        helper.make_node("MatMul", ["b", "wc"], ["c"], name="scaled_up"),
        helper.make_node("Relu", ["c"], ["c_act"], name="scaled_relu"),
        helper.make_node("Mul", ["c_act", "channel_scale"], ["c_scaled"], name="scaled_mul"),
        helper.make_node("MatMul", ["c_scaled", "wd"], ["d"], name="scaled_down"),
        helper.make_node("Conv", ["img", "wg"], ["g"], name="grouped_conv", group=2, kernel_shape=[1, 1]),
    ]
    inits = [_init("wa", 8, 16), _init("wb", 16, 8), numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             _init("wc", 8, 12), _init("channel_scale", 12), _init("wd", 12, 8), _init("wg", 4, 2, 1, 1)]
    outputs = [_tensor("d", 2, 8), _tensor("side", 2), _tensor("g", 1, 4, 5, 5)]
    return _model(nodes, [_tensor("x", 2, 8), _tensor("img", 1, 4, 5, 5)], outputs, inits)


def conv_model() -> onnx.ModelProto:
    """conv->BatchNormalization->Relu->depthwise->Relu->1x1 conv, residual Add back onto the
    first conv's channels, a side conv concatenated with it, a 1x1 conv over the concat, then
    GlobalAveragePool->Flatten->Gemm."""
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a_raw"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a_raw", "bn_s", "bn_b", "bn_m", "bn_v"], ["a_bn"], name="bn_a"),
        helper.make_node("Relu", ["a_bn"], ["a"], name="relu_a"),
        helper.make_node(
            "Conv", ["a", "wdw", "bdw"], ["dw_raw"], name="conv_dw", group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Clip", ["dw_raw", "zero", "six"], ["dw"], name="relu6_dw"),
        helper.make_node("Conv", ["dw", "wb"], ["b"], name="conv_b", kernel_shape=[1, 1]),
        helper.make_node("Add", ["b", "a"], ["res"], name="residual"),
        helper.make_node("Conv", ["x", "wc"], ["c_raw"], name="conv_c", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c_raw"], ["c"], name="relu_c"),
        helper.make_node("Concat", ["res", "c"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "wd"], ["d"], name="conv_d", kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["d"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        _init("wa", c, 3, 3, 3), _init("ba", c),
        _init("bn_s", c), _init("bn_b", c), _init("bn_m", c),
        numpy_helper.from_array(np.ones(c, np.float32), "bn_v"),
        _init("wdw", c, 1, 3, 3), _init("bdw", c), _scalar("zero", 0.0), _scalar("six", 6.0),
        _init("wb", c, c, 1, 1), _init("wc", 4, 3, 1, 1), _init("wd", 6, c + 4, 1, 1),
        _init("wfc", 10, 6), _init("bfc", 10),
    ]
    return _model(nodes, [_tensor("x", 1, 3, 16, 16)], [_tensor("logits", 1, 10)], inits)


# --------------------------------------------------------------------------- synthetic tests
def test_swiglu_and_gqa_attention(decoder_block: Analysis):
    a = decoder_block
    assert len(a.ffns) == 1 and len(a.attentions) == 1
    ffn = a.ffns[0]
    assert (ffn.kind, ffn.activation, ffn.hidden, ffn.intermediate) == ("gated", "silu", 32, 64)
    assert [p.label for p in ffn.producers] == ["gate_proj", "up_proj"] and ffn.consumer.label == "down_proj"
    assert ffn.gate is ffn.producers[0] and ffn.down is ffn.consumer

    attn = a.attentions[0]
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.v_head_dim) == (4, 2, 8, 8)
    assert attn.kv_groups == [[0, 1], [2, 3]]
    assert attn.kv_repeat == "interleave" and attn.rope
    assert [r.label for r in (attn.q, attn.k, attn.v, attn.o)] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # Weights are [in, out] initializers; names must be real graph names.
    assert (attn.k.in_axis, attn.k.out_axis, attn.k.out_features) == (0, 1, 16)

    (stream,) = [t for t in a.ties if t.kind == "residual-stream"]
    assert stream.members == ["attn.0", "ffn.0"] and len(stream.nodes) == 2
    assert a.left_as_is == []
    assert [r.kind for r in a.layers] == ["linear"] * 7
    assert a.totals["macs"] == sum(r.macs for r in a.layers) and a.totals["macs_per"] == "token"


@pytest.mark.parametrize("block, repeat, groups", [
    ("repeat_kv", "interleave", [[0, 1], [2, 3]]),
    ("tile", "tile", [[0, 2], [1, 3]]),
])
def test_kv_groups_match_what_the_graph_computes(block, repeat, groups, decoder_block_model):
    """Zero one kv head's v columns and check which query heads' outputs change in ORT."""
    import onnx_ir as ir
    import onnxruntime as ort

    model = decoder_block_model if block == "repeat_kv" else _export(TiledKvBlock(), torch.randn(1, 6, 32))
    (attn,) = analyse(model).attentions
    assert attn.kv_repeat == repeat and attn.kv_groups == groups
    proto = ir.to_proto(model)
    o_input = next(n for n in proto.graph.node if n.name == attn.o.node).input[0]
    proto.graph.output.append(helper.make_tensor_value_info(o_input, TensorProto.FLOAT, None))
    x = np.random.default_rng(1).standard_normal((1, 6, 32)).astype(np.float32)

    def heads_output(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = session.run([o_input], {session.get_inputs()[0].name: x})[0]
        return out.reshape(6, attn.num_heads, attn.v_head_dim)

    base = heads_output(proto)
    for kv_head, query_heads in enumerate(attn.kv_groups):
        changed = onnx.ModelProto()
        changed.CopyFrom(proto)
        init = next(t for t in changed.graph.initializer if t.name == attn.v.weight)
        weight = numpy_helper.to_array(init).copy()
        cols = slice(kv_head * attn.v_head_dim, (kv_head + 1) * attn.v_head_dim)
        index = [slice(None)] * 2
        index[attn.v.out_axis] = cols
        weight[tuple(index)] = 0.0
        init.CopyFrom(numpy_helper.from_array(weight, attn.v.weight))
        diff = np.abs(heads_output(changed) - base).max(axis=(0, 2))
        assert sorted(np.nonzero(diff > 1e-6)[0].tolist()) == query_heads


def test_geglu(geglu: Analysis):
    (ffn,) = geglu.ffns
    assert (ffn.kind, ffn.activation, ffn.intermediate) == ("gated", "gelu_tanh", 40)
    assert [p.label for p in ffn.producers] == ["gate", "up"]
    assert geglu.attentions == [] and geglu.left_as_is == []


def test_plain_ffn_with_biases(plain_ffn: Analysis):
    (ffn,) = plain_ffn.ffns
    assert (ffn.kind, ffn.activation, ffn.hidden, ffn.intermediate) == ("plain", "gelu", 16, 48)
    (up,) = ffn.producers
    assert up.bias == "fc1.bias" and up.bias_node and up.bias_node != up.node
    assert ffn.consumer.bias == "fc2.bias"
    assert plain_ffn.left_as_is == []


def test_erf_gelu_gemm_without_value_info():
    proto = erf_gelu_gemm_model()
    a = analyse(proto)  # a ModelProto is accepted too
    (ffn,) = a.ffns
    assert (ffn.kind, ffn.activation, ffn.hidden, ffn.intermediate) == ("plain", "gelu", 8, 24)
    up = ffn.producers[0]
    assert (up.node, up.weight, up.out_axis, up.in_axis, up.bias, up.bias_node) == ("fc1", "w1", 0, 1, "b1", "fc1")
    down = ffn.consumer
    assert (down.node, down.out_axis, down.bias, down.bias_node) == ("fc2", 1, "b2", "fc2_bias")
    assert ffn.nodes == ["gelu_div", "gelu_erf", "gelu_add", "gelu_mul", "gelu_half"]
    assert [r.macs for r in a.layers] == [24 * 8, 24 * 8]


def test_conv_chain_with_batchnorm_depthwise_residual_and_concat():
    a = analyse(conv_model())
    groups = {g.conv: g for g in a.conv_groups}
    assert list(groups) == ["conv_a", "conv_dw", "conv_b", "conv_c", "conv_d"]
    conv_a, dw, conv_b, conv_c, conv_d = groups.values()
    assert (conv_a.batchnorm, conv_a.activation, conv_a.bias, conv_a.out_channels) == ("bn_a", "relu", "ba", 8)
    assert (dw.depthwise, dw.activation, dw.channel_source, dw.group) == (True, "relu6", conv_a.name, 8)
    assert not any(g.depthwise for g in (conv_a, conv_b, conv_c, conv_d))
    # conv_a's channels are read by the depthwise, by conv_b through it, and by the concat.
    assert conv_a.consumers == ["conv_dw", "conv_b", "concat", "conv_d"]
    assert conv_c.consumers == ["concat", "conv_d"]
    assert conv_d.consumers == ["fc"] and conv_d.out_channels == 6
    assert all(g.prunable for g in a.conv_groups)

    ties = {t.kind: t for t in a.ties}
    assert len(a.ties) == 3
    assert ties["depthwise"].members == [conv_a.name, dw.name] and ties["depthwise"].node == "conv_dw"
    assert ties["residual-add"].node == "residual"
    assert ties["residual-add"].members == [conv_a.name, conv_b.name]  # dw is tied to conv_a already
    assert ties["concat"].node == "concat" and ties["concat"].members == [conv_a.name, conv_c.name]

    rows = {r.name: r for r in a.layers}
    assert rows["conv_dw"].kind == "depthwise-conv" and rows["bn_a"].kind == "norm"
    assert rows["conv_a"].macs == 8 * 3 * 3 * 3 * 16 * 16
    assert rows["fc"].macs == 60 and a.totals["macs_per"] == "image"
    assert a.ffns == [] and a.attentions == []
    assert a.left_as_is == []


@pytest.mark.parametrize("optimize", [True, False])
def test_torch_conv_bn_export(optimize):
    """optimize=True folds BN into the conv; optimize=False keeps an explicit BatchNormalization
    and gives the bias-less conv a computed zero bias, which blocks it and its tied groups."""
    program = torch.onnx.export(ConvBnBlock().eval(), (torch.randn(1, 3, 8, 8),), dynamo=True,
                                opset_version=21, optimize=optimize, verbose=False)
    a = analyse(program.model)
    c1, dw, c2, c3, head = a.conv_groups
    assert [g.depthwise for g in a.conv_groups] == [False, True, False, False, False]
    assert (dw.channel_source, dw.activation) == (c1.name, "relu6") and c1.activation == "relu"
    assert head.consumers == [next(r.name for r in a.layers if r.kind == "linear")]
    assert sorted(t.kind for t in a.ties) == ["concat", "depthwise", "residual-add"]
    assert c3.prunable and head.prunable
    if optimize:
        assert c1.batchnorm is None and all(g.prunable for g in a.conv_groups) and a.left_as_is == []
    else:
        assert c1.batchnorm and c1.bias is None
        assert not (c1.prunable or dw.prunable or c2.prunable)  # tied to the computed bias
        assert "is computed, not an initializer" in a.left_as_is[0]


def test_unknown_patterns_are_left_as_is():
    a = analyse(unknown_patterns_model())
    assert a.ffns == [] and a.conv_groups == [] and a.attentions == []
    text = "\n".join(a.left_as_is)
    assert "before leak_down" in text and "also read by ReduceSum side_read" in text
    assert "before scaled_down" in text and "per-channel constant channel_scale" in text
    assert "grouped_conv" in text and "group=2" in text
    # Every weighted linear that is in no group is listed too.
    for node in ("leak_up", "leak_down", "scaled_up", "scaled_down"):
        assert f"linear {node} " in text


def test_graph_output_channels_block_the_group():
    model = conv_model()
    model.graph.output.append(_tensor("c", 1, 4, 16, 16))  # conv_c's channels become a model output
    a = analyse(model)
    conv_c = next(g for g in a.conv_groups if g.conv == "conv_c")
    assert not conv_c.prunable
    assert any("conv_c" in line and "graph output c" in line for line in a.left_as_is)


def test_report_json_and_table_are_stable(decoder_block: Analysis):
    first = json.dumps(decoder_block.to_json(), sort_keys=True)
    assert first == json.dumps(decoder_block.to_json(), sort_keys=True)
    data = json.loads(first)
    assert data["summary"]["attention"] == 1 and data["attentions"][0]["kv_groups"] == [[0, 1], [2, 3]]
    assert data["ffns"][0]["producers"][0]["weight"]

    out = io.StringIO()
    print_table(decoder_block, Console(file=out, width=160, color_system=None))
    text = out.getvalue()
    assert "Layers" in text and "q_proj" in text and "4q/2kv" in text


def _unnamed(proto: onnx.ModelProto) -> onnx.ModelProto:
    for node in proto.graph.node:
        node.name = ""
    return proto


@pytest.mark.parametrize("build", [conv_model, erf_gelu_gemm_model])
def test_unnamed_nodes_are_named_at_load_and_analysed_like_named_ones(tmp_path, build):
    """Exporters may leave node names empty (legal ONNX). onnx_io.load names them, so the
    analysis finds the same groups; handed an unnamed graph directly, it explains and never crashes."""
    path = tmp_path / "unnamed.onnx"
    onnx.save(_unnamed(build()), path)
    named, loaded = analyse(build()), analyse(onnx_io.load(path))
    assert (len(loaded.ffns), len(loaded.conv_groups), len(loaded.ties)) == (
        len(named.ffns), len(named.conv_groups), len(named.ties))
    assert [g.prunable for g in loaded.conv_groups] == [g.prunable for g in named.conv_groups]
    assert [(f.hidden, f.intermediate, f.activation) for f in loaded.ffns] == [
        (f.hidden, f.intermediate, f.activation) for f in named.ffns]
    direct = analyse(_unnamed(build()))
    assert direct.ffns == [] and direct.conv_groups == []
    assert any("have no name" in line for line in direct.left_as_is)


def test_analysis_does_not_modify_model():
    proto = erf_gelu_gemm_model()
    before = proto.SerializeToString()
    analyse(proto)
    assert proto.SerializeToString() == before


def test_group_classes_are_exported():
    assert {LinearRef, FfnGroup, AttentionGroup, ConvChannelGroup, ChannelTie}


# --------------------------------------------------------------------------- real models
def _timed(path):
    model = onnx_io.load(path)
    start = time.perf_counter()
    analysis = analyse(model)
    return analysis, time.perf_counter() - start


def test_smollm2(smollm2_onnx):
    a, seconds = _timed(smollm2_onnx)
    assert seconds < 10
    assert len(a.ffns) == 30 and len(a.attentions) == 30
    assert all(f.kind == "gated" and f.activation == "silu" for f in a.ffns)
    assert {(f.hidden, f.intermediate) for f in a.ffns} == {(576, 1536)}
    assert {(x.num_heads, x.num_kv_heads, x.head_dim) for x in a.attentions} == {(9, 3, 64)}
    assert all(x.kv_groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and x.rope for x in a.attentions)
    assert [x.layer_label.rsplit(".", 2)[-2] for x in a.attentions] == [str(i) for i in range(30)]
    (stream,) = [t for t in a.ties if t.kind == "residual-stream"]
    assert len(stream.nodes) == 60
    # The tied lm_head is the one linear outside any group.
    assert len(a.left_as_is) == 1 and "shared with" in a.left_as_is[0]
    assert 134_000_000 < a.totals["params"] < 135_000_000


def test_minilm(minilm_onnx):
    a, seconds = _timed(minilm_onnx)
    assert seconds < 5
    assert len(a.ffns) == 6 and len(a.attentions) == 6
    assert all(f.kind == "plain" and f.activation == "gelu" and f.intermediate == 1536 for f in a.ffns)
    assert all(f.producers[0].bias and f.consumer.bias for f in a.ffns)
    assert {(x.num_heads, x.num_kv_heads, x.head_dim) for x in a.attentions} == {(12, 12, 32)}
    assert all(x.q.bias and x.o.bias for x in a.attentions)
    assert a.left_as_is == []


def test_effnet_lite0(effnet_onnx):
    a, seconds = _timed(effnet_onnx)
    assert seconds < 5
    assert len(a.conv_groups) == 49
    depthwise = [g for g in a.conv_groups if g.depthwise]
    assert len(depthwise) == 16 and all(g.channel_source for g in depthwise)
    assert all(g.prunable for g in a.conv_groups)
    kinds = [t.kind for t in a.ties]
    assert kinds.count("residual-add") == 9 and kinds.count("depthwise") == 16
    assert a.conv_groups[-1].consumers == [next(r.name for r in a.layers if r.kind == "linear")]
    assert a.ffns == [] and a.attentions == [] and a.left_as_is == []
    assert a.totals["macs_per"] == "image" and 300e6 < a.totals["macs"] < 450e6
