"""The entry point: run every detector over one graph and assemble an Analysis.

Detectors only read the graph. Whatever they cannot place in a group is listed in
`left_as_is` with a one-line reason, so nothing prunable is dropped silently.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from edgefold.analysis.attention import find_attentions
from edgefold.analysis.conv import find_conv_groups
from edgefold.analysis.ffn import find_ffns
from edgefold.analysis.graph_index import GraphIndex
from edgefold.analysis.groups import Analysis, AttentionGroup, FfnGroup
from edgefold.analysis.layers import layer_rows, model_kind, totals
from edgefold.analysis.linear import find_linears
from edgefold.analysis.residual import residual_stream
from edgefold.analysis.weights import stored_weights


def analyse(model: ir.Model | onnx.ModelProto | str | os.PathLike) -> Analysis:
    """Find prunable groups and per-layer costs in an ONNX model.

    Accepts an `onnx_ir.Model` (the normal case), an `onnx.ModelProto`, or a path
    (loaded lazily through `edgefold.onnx_io.load`). The model is not modified.
    """
    model = _as_ir(model)
    ix = GraphIndex(model)
    linears = find_linears(ix)
    notes: list[str] = []

    attentions, attention_notes = find_attentions(ix, linears)
    ffns, ffn_notes = find_ffns(ix, linears)
    ffns = _drop_overlaps(ffns, attentions, ffn_notes)
    conv_groups, conv_ties, conv_notes, conv_linears = find_conv_groups(ix, linears)
    notes += attention_notes + ffn_notes + conv_notes

    ties = list(conv_ties)
    stream = residual_stream(ix, ffns, attentions)
    if stream is not None:
        ties.append(stream)

    grouped = {r.node for g in ffns for r in [*g.producers, g.consumer]}
    grouped |= {r.node for a in attentions for r in (a.q, a.k, a.v, a.o)}
    for ref in linears.refs:
        if ref.node in grouped or ref.node in conv_linears:
            continue
        shared = f"; weight {ref.weight} shared with {', '.join(ref.weight_shared_with)}" if ref.weight_shared_with else ""
        size = f"{ref.in_features}->{ref.out_features}"
        notes.append(f"linear {ref.node} ({ref.label}) {size}: left as is — not in any prunable group{shared}")
    notes += _unrecognised_weights(ix, {r.node for r in linears.refs})
    notes += _opaque_parts(model, ix)

    kind = model_kind(ix)
    rows, covered = layer_rows(ix, linears, kind)
    return Analysis(
        ffns=ffns,
        attentions=attentions,
        conv_groups=conv_groups,
        ties=ties,
        layers=rows,
        left_as_is=notes,
        totals=totals(ix, rows, kind, covered),
        weights=stored_weights(model),
    )


def _as_ir(model) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.from_proto(model)
    if isinstance(model, (str, os.PathLike)):
        from edgefold import onnx_io

        return onnx_io.load(Path(model))
    raise TypeError(f"analyse() needs an onnx_ir.Model, onnx.ModelProto or path, not {type(model).__name__}")


def _drop_overlaps(ffns: list[FfnGroup], attentions: list[AttentionGroup], notes: list[str]) -> list[FfnGroup]:
    """A linear belongs to one group; attention wins (its structure is stricter)."""
    taken = {r.node for a in attentions for r in (a.q, a.k, a.v, a.o)}
    kept = []
    for ffn in ffns:
        clash = [r.node for r in [*ffn.producers, ffn.consumer] if r.node in taken]
        if clash:
            where = f"FFN candidate before {ffn.consumer.node} ({ffn.layer_label})"
            notes.append(f"{where}: left as is — {clash[0]} is part of an attention block")
            continue
        kept.append(ffn)
    # Renumber so names stay dense and in graph order.
    return [_renamed(f, f"ffn.{i}") for i, f in enumerate(kept)]


def _renamed(ffn: FfnGroup, name: str) -> FfnGroup:
    return ffn if ffn.name == name else dataclasses.replace(ffn, name=name)


def _opaque_parts(model: ir.Model, ix: GraphIndex) -> list[str]:
    notes = []
    custom = sorted({f"{n.domain}::{n.op_type}" for n in ix.nodes if n.domain not in ("", "ai.onnx")})
    if custom:
        notes.append(f"custom-domain ops are opaque to the analysis: {', '.join(custom)}")
    control = [n.name for n in ix.nodes if n.op_type in ("If", "Loop", "Scan")]
    if control:
        shown = ", ".join(control[:3]) + (", ..." if len(control) > 3 else "")
        notes.append(f"subgraphs of {len(control)} control-flow nodes are not analysed ({shown})")
    unnamed = sum(1 for n in ix.nodes if not n.name)
    if unnamed:
        notes.append(f"{unnamed} nodes have no name; groups cannot refer to them, so they are left as is")
    return notes


# Ops that carry weights we may not understand (Conv is covered by conv.py's own notes).
_WEIGHTED_OPS = {
    "MatMul", "Gemm", "ConvTranspose", "Einsum", "LSTM", "GRU", "RNN", "MatMulInteger",
    "ConvInteger", "QLinearMatMul", "QLinearConv", "DequantizeLinear", "MatMulNBits",
}
_MIN_WEIGHT_ELEMENTS = 256


def _unrecognised_weights(ix: GraphIndex, known: set[str]) -> list[str]:
    """Weight-bearing nodes no detector understood, so they are not dropped silently."""
    notes = []
    for node in ix.nodes:
        if node.op_type not in _WEIGHTED_OPS or node.name in known:
            continue
        for value in node.inputs:
            if ix.initializer(value) is not None and (ix.const_numel(value) or 0) >= _MIN_WEIGHT_ELEMENTS:
                what = f"{node.op_type} {node.name} ({ix.label(node)})"
                notes.append(f"{what}: left as is — reads weight {value.name} in a form the analysis does not handle")
                break
    return notes
