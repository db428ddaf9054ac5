"""Data-free BatchNorm statistics repair after folding conv channels.

Averaging N partly correlated channels shrinks their variance (the "variance
collapse" of the method notes), and readers of merged channels see inputs whose
statistics moved. Instead of re-estimating BN statistics on synthetic images
(Fold-DIR), we re-estimate them analytically from what the BN layers already store:

- merged channel c = weighted mean of members' pre-BN outputs z_i. Its mean is exact
  by linearity; its variance is sum_ij P_ci P_cj a_i a_j rho_ij sigma_i sigma_j / a_c^2
  with rho_ij the cosine of the members' effective filters. The BN then normalises
  with that variance, so the merged channel leaves BN with the members' mean spread
  (gamma), as REPAIR would after measuring it.
- a conv reading the set: each input channel's post-activation mean/variance follow
  from its BN (y ~ N(beta, gamma^2) pushed through the activation by Gauss-Hermite
  quadrature); the reader's running mean moves by the change of sum_c W_oc E[x_c] and
  its running variance scales by the modelled variance after / before.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from dataclasses import dataclass

from edgefold.passes.fold.conv_channels import ChannelSet, batchnorm_params, reader_weight
from edgefold.passes.fold.fold_math import assignment, fold_maps
from edgefold.passes.common.initializers import array, node_by_name

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(48)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def activation_moments(mean: np.ndarray, std: np.ndarray, kind: str | None, bounds=(None, None)):
    """Mean and variance of act(y), y ~ N(mean, std^2), per channel."""
    y = mean[:, None] + std[:, None] * _NODES[None, :]
    f = _apply(y, kind, bounds)
    m = f @ _WEIGHTS
    v = (f * f) @ _WEIGHTS - m * m
    return m, np.maximum(v, 0.0)


def _apply(y: np.ndarray, kind: str | None, bounds) -> np.ndarray:
    if kind in (None, "identity"):
        return y
    if kind == "relu":
        return np.maximum(y, 0.0)
    if kind in ("relu6", "clip"):
        low, high = bounds
        low = 0.0 if kind == "relu6" else (-np.inf if low is None else low)
        high = 6.0 if kind == "relu6" else (np.inf if high is None else high)
        return np.clip(y, low, high)
    if kind == "silu":
        return y / (1.0 + np.exp(-y))
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if kind == "hardswish":
        return y * np.clip(y + 3.0, 0.0, 6.0) / 6.0
    if kind == "tanh":
        return np.tanh(y)
    if kind == "gelu":
        return 0.5 * y * (1.0 + np.tanh(0.7978845608 * (y + 0.044715 * y ** 3)))
    return y


def _cosine(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norms > 0, norms, 1.0)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def _clip_bounds(model: ir.Model, node_name: str | None):
    if not node_name:
        return (None, None)
    node = node_by_name(model).get(node_name)
    if node is None or node.op_type != "Clip":
        return (None, None)
    out = []
    for value in node.inputs[1:3]:
        data = None
        if value is not None:
            source = value if value.const_value is not None else None
            producer = value.producer()
            if source is None and producer is not None and producer.inputs and producer.inputs[0] is not None:
                source = producer.inputs[0] if producer.inputs[0].const_value is not None else None
            if source is not None:
                data = float(source.const_value.numpy().reshape(-1)[0])
        out.append(data)
    return tuple(out) + (None,) * (2 - len(out))


def channel_stats(model: ir.Model, member, gamma=None, beta=None):
    """Post-activation mean/variance of a member's output channels."""
    nodes = node_by_name(model)
    if member.batchnorm:
        bn = batchnorm_params(model, nodes[member.batchnorm])
        gamma = bn.gamma if gamma is None else gamma
        beta = bn.beta if beta is None else beta
    else:
        width = member.out_channels
        gamma = np.ones(width) if gamma is None else gamma
        beta = np.zeros(width) if beta is None else beta
    return activation_moments(beta, np.abs(gamma), member.activation, _clip_bounds(model, member.activation_node))


def set_second_moment(model: ir.Model, cset: ChannelSet) -> np.ndarray | None:
    """E[x^2] per channel of the set's value (its members' outputs summed, as residual adds
    do), from the BatchNorm statistics pushed through the activations; None without BN.

    A data-free importance: it sees dead channels (beta far below zero before a ReLU) and
    channels whose BN gain is small, which the filter norm misses.
    """
    if not any(member.batchnorm for member in cset.members):
        return None
    mean = np.zeros(cset.width)
    var = np.zeros(cset.width)
    for member in cset.members:
        m, v = channel_stats(model, member)
        mean, var = mean + m, var + v
    return var + mean * mean


@dataclass
class StatisticsFold:
    """Maps for one channel set, informed by the BN statistics."""

    producer_map: np.ndarray  # k x n: members weighted by their output spread
    consumer_maps: dict[str, np.ndarray]  # per reader: n x k regression coefficients
    reader_shifts: dict[str, np.ndarray]  # per reader: what its pre-activation output lost


def statistics_fold(model: ir.Model, cset: ChannelSet, labels: np.ndarray, features: np.ndarray,
                    producer: np.ndarray | None = None) -> StatisticsFold:
    """Fold a set using what its BatchNorms know about each channel's output.

    Each channel's output x_j has a mean m_j and spread s_j (from its BN, through its
    activation). The merged channel is the s-weighted mean of its members (a dead
    channel adds nothing), and a reader replaces x_j by its regression on the merged
    channel, x_j ~ m_j + alpha_j (x_c - m_c) with alpha_j = rho_jc s_j / s_c: the
    reader's columns are summed with weights alpha_j, and the constant part it loses,
    sum_j W_j (m_j - alpha_j m_c), is given back through its BN mean or bias.
    Exact duplicates get alpha = 1 and no shift, i.e. plain folding. A given `producer`
    (k x n; an anchored fold passes the anchors' selection) replaces the weighted mean.
    """
    nodes = node_by_name(model)
    stats = {member.name: channel_stats(model, member) for member in cset.members}
    readers = [nodes[name] for name in cset.consumers]
    inputs = {r.name: _reader_input_stats(cset, stats, r, nodes) for r in readers}
    mean_all, var_all = inputs[readers[0].name] if readers else stats[cset.members[-1].name]
    spread = np.sqrt(var_all)
    weights = spread + 1e-6 * (spread.max() if spread.size else 1.0) + 1e-12
    if producer is None:
        producer = fold_maps(labels, weights)[0]
    rho = _cosine(features)
    centroid = producer @ features
    rho_to_centroid = np.clip(np.einsum("nd,nd->n", _unit(features), _unit(centroid[labels])), -1.0, 1.0)
    consumer_maps, shifts = {}, {}
    for reader in readers:
        mean_in, var_in = inputs[reader.name]
        s = np.sqrt(var_in)
        weighted = producer * s[None, :]
        merged_std = np.sqrt(np.maximum(np.einsum("ki,ij,kj->k", weighted, rho, weighted), 0.0))
        merged_mean = producer @ mean_in
        alpha = np.where(merged_std[labels] > 0, rho_to_centroid * s / np.where(merged_std[labels] > 0,
                                                                                 merged_std[labels], 1.0), 0.0)
        singles = np.bincount(labels)[labels] == 1
        alpha = np.where(singles, 1.0, alpha)
        consumer = assignment(labels) * alpha[:, None]
        consumer_maps[reader.name] = consumer
        weight, axis = reader_weight(reader)
        w = np.moveaxis(array(model, weight.name).astype(np.float64), axis, -1)  # [..., in]
        dc = w.reshape(-1, w.shape[-1]) if w.ndim == 2 else w.sum(axis=tuple(range(1, w.ndim - 1))).reshape(w.shape[0], -1)
        lost = np.where(singles, 0.0, mean_in - alpha * merged_mean[labels])
        shifts[reader.name] = dc @ lost
    return StatisticsFold(producer, consumer_maps, shifts)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _reader_input_stats(cset, stats, reader, nodes):
    """Stats of the channel values `reader` reads: the member output it reaches going
    back through per-channel ops, summed over residual adds."""
    by_output = {m.output: m for m in cset.members}
    mean = np.zeros(cset.width)
    var = np.zeros(cset.width)
    found = False
    stack, seen = [reader.inputs[0]], set()
    while stack:
        value = stack.pop()
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        if value.name in by_output:
            m, v = stats[by_output[value.name].name]
            mean, var, found = mean + m, var + v, True
            continue
        producer = value.producer()
        if producer is None or producer.op_type in ("Conv", "Gemm", "MatMul"):
            continue
        stack.extend(producer.inputs[:2] if producer.op_type == "Add" else producer.inputs[:1])
    if not found:  # not traceable: the last member's output is the best guess
        return stats[cset.members[-1].name]
    return mean, var
