"""Seeded small ONNX graphs for the reliability suite: plain MLPs, gated MLPs (SwiGLU),
conv+BN+residual nets, with odd widths and optionally no node names.

`fuzz_specs(count, seed)` draws the specs, `build(spec)` turns one into an
`onnx.ModelProto`. Both are pure functions of their arguments: the same spec gives
the same bytes on every run, so a failing case is reproduced by its name alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
KINDS = ("mlp", "swiglu", "conv")
# Mostly odd and prime widths (no channel multiple fits them), beside a few multiples of 8.
WIDTHS = (3, 5, 7, 9, 11, 13, 16, 17, 24, 31)


@dataclass(frozen=True)
class GraphSpec:
    kind: str  # mlp | swiglu | conv
    seed: int
    width: int  # hidden size (MLPs) or channels (conv)
    inner: int  # FFN intermediate width (MLPs; unused for conv)
    layers: int
    named: bool = True  # False: every node's name is empty (legal ONNX)
    norm: bool = False  # MLPs: LayerNormalization before each FFN
    bias: bool = False  # MLPs: biases on the linears
    gemm: bool = False  # plain MLP as Gemm on 2-D input instead of MatMul on 3-D
    depthwise: bool = False  # conv: a depthwise conv + BN inside each residual block

    @property
    def name(self) -> str:
        flags = "".join(tag for on, tag in ((not self.named, "-unnamed"), (self.norm, "-norm"), (self.bias, "-bias"),
                                            (self.gemm, "-gemm"), (self.depthwise, "-dw")) if on)
        size = f"c{self.width}" if self.kind == "conv" else f"h{self.width}i{self.inner}"
        return f"{self.kind}-{size}-l{self.layers}-s{self.seed}{flags}"

    def renamed(self, named: bool) -> "GraphSpec":
        return replace(self, named=named)


def fuzz_specs(count: int, seed: int = 0) -> list[GraphSpec]:
    """`count` specs cycling through the kinds; every fourth one has unnamed nodes."""
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        width = int(rng.choice(WIDTHS))
        inner = int(rng.choice(WIDTHS)) if kind != "conv" else 0
        specs.append(GraphSpec(
            kind=kind, seed=int(rng.integers(0, 2**31)), width=width, inner=inner,
            layers=int(rng.integers(1, 3)), named=index % 4 != 3,
            norm=kind != "conv" and bool(rng.integers(0, 2)),
            bias=kind == "mlp" and bool(rng.integers(0, 2)),
            gemm=kind == "mlp" and bool(rng.integers(0, 3) == 0),
            depthwise=kind == "conv" and bool(rng.integers(0, 2)),
        ))
    return specs


def build(spec: GraphSpec) -> onnx.ModelProto:
    builder = _Builder(spec)
    {"mlp": _mlp, "swiglu": _swiglu, "conv": _conv}[spec.kind](builder, spec)
    return builder.model()


def write(spec: GraphSpec, folder) -> Path:
    """Save `spec`'s graph as folder/<name>.onnx (weights inline: the graphs are tiny)."""
    path = Path(folder) / f"{spec.name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(spec), path)
    return path


class _Builder:
    def __init__(self, spec: GraphSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def weight(self, name: str, shape, fan_in: int, scale: float = 1.0) -> str:
        data = self.rng.standard_normal(shape) * (scale / np.sqrt(fan_in))
        self.inits.append(numpy_helper.from_array(data.astype(np.float32), name))
        return name

    def const(self, name: str, data) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(data, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        name = output.replace(":", ".") if self.spec.named else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.spec.name.replace("-", "_"), self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fuzz")
        model.ir_version = 10
        onnx.checker.check_model(model, full_check=True)
        return model


def _mlp_input(b: _Builder, spec: GraphSpec) -> tuple[str, list]:
    dims = ["batch", spec.width] if spec.gemm else ["batch", "seq", spec.width]
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, dims))
    return "x", dims


def _norm(b: _Builder, p: str, x: str, width: int) -> str:
    scale = b.const(f"{p}.norm.scale", 1.0 + 0.1 * b.rng.standard_normal(width))
    shift = b.const(f"{p}.norm.bias", 0.1 * b.rng.standard_normal(width))
    return b.node("LayerNormalization", [x, scale, shift], f"{p}.norm", axis=-1)


def _linear(b: _Builder, p: str, x: str, n_in: int, n_out: int, *, bias: bool, gemm: bool) -> str:
    if gemm:
        trans = int(b.rng.integers(0, 2))
        shape = (n_out, n_in) if trans else (n_in, n_out)
        w = b.weight(f"{p}.weight", shape, n_in)
        inputs = [x, w] + ([b.weight(f"{p}.bias", (n_out,), 4)] if bias else [])
        return b.node("Gemm", inputs, f"{p}.out", transB=trans)
    y = b.node("MatMul", [x, b.weight(f"{p}.weight", (n_in, n_out), n_in)], f"{p}.mm")
    return b.node("Add", [y, b.weight(f"{p}.bias", (n_out,), 4)], f"{p}.out") if bias else y


def _mlp(b: _Builder, spec: GraphSpec) -> None:
    x, dims = _mlp_input(b, spec)
    for layer in range(spec.layers):
        p = f"l{layer}"
        h = _norm(b, p, x, spec.width) if spec.norm else x
        up = _linear(b, f"{p}.up", h, spec.width, spec.inner, bias=spec.bias, gemm=spec.gemm)
        act = b.node("Relu" if layer % 2 == 0 else "Gelu", [up], f"{p}.act")
        down = _linear(b, f"{p}.down", act, spec.inner, spec.width, bias=spec.bias, gemm=spec.gemm)
        x = b.node("Add", [x, down], f"{p}.residual")
    b.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, dims))


def _swiglu(b: _Builder, spec: GraphSpec) -> None:
    x, dims = _mlp_input(b, spec)
    for layer in range(spec.layers):
        p = f"l{layer}"
        h = _norm(b, p, x, spec.width) if spec.norm else x
        gate = b.node("MatMul", [h, b.weight(f"{p}.gate", (spec.width, spec.inner), spec.width)], f"{p}.gate_proj")
        up = b.node("MatMul", [h, b.weight(f"{p}.up", (spec.width, spec.inner), spec.width)], f"{p}.up_proj")
        sig = b.node("Sigmoid", [gate], f"{p}.sigmoid")
        silu = b.node("Mul", [gate, sig], f"{p}.silu")
        glu = b.node("Mul", [silu, up], f"{p}.glu")
        down = b.node("MatMul", [glu, b.weight(f"{p}.down", (spec.inner, spec.width), spec.inner)], f"{p}.down_proj")
        x = b.node("Add", [x, down], f"{p}.residual")
    b.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, dims))


def _batchnorm(b: _Builder, p: str, x: str, channels: int) -> str:
    rng = b.rng
    params = [b.const(f"{p}.{k}", v) for k, v in (
        ("scale", rng.uniform(0.5, 1.5, channels)), ("bias", rng.uniform(-0.5, 0.5, channels)),
        ("mean", rng.uniform(-0.5, 0.5, channels)), ("var", rng.uniform(0.5, 2.0, channels)))]
    return b.node("BatchNormalization", [x, *params], f"{p}.bn", epsilon=1e-5)


def _conv_bn(b: _Builder, p: str, x: str, c_in: int, c_out: int, *, group: int = 1) -> str:
    w = b.weight(f"{p}.weight", (c_out, c_in // group, 3, 3), 9 * c_in // group)
    y = b.node("Conv", [x, w], f"{p}.conv", pads=[1, 1, 1, 1], group=group)
    return _batchnorm(b, p, y, c_out)


def _conv(b: _Builder, spec: GraphSpec) -> None:
    c = spec.width
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8]))
    x = b.node("Relu", [_conv_bn(b, "stem", "x", 3, c)], "stem.relu")
    for layer in range(spec.layers):
        p = f"block{layer}"
        y = b.node("Relu", [_conv_bn(b, f"{p}.a", x, c, c)], f"{p}.a.relu")
        if spec.depthwise:
            y = b.node("Relu", [_conv_bn(b, f"{p}.dw", y, c, c, group=c)], f"{p}.dw.relu")
        y = _conv_bn(b, f"{p}.b", y, c, c)
        x = b.node("Relu", [b.node("Add", [x, y], f"{p}.residual")], f"{p}.relu")
    pooled = b.node("GlobalAveragePool", [x], "pool")
    flat = b.node("Flatten", [pooled], "flatten", axis=1)
    head = b.weight("head.weight", (5, c), c)
    out = b.node("Gemm", [flat, head, b.weight("head.bias", (5,), 4)], "logits", transB=1)
    b.outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 5]))
