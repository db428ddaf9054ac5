"""Activation-aware weight scaling before quantization (the idea of AWQ, Lin et al. 2023).

A weight read by MatMul after a norm, y = (x * gamma) W, is unchanged in fp32 when input
channel i of W is multiplied by s_i and gamma_i divided by it. Quantization is not: the
channels that carry most input energy get proportionally finer steps. With s_i =
E[x_i^2]^(alpha/2) measured on calibration samples, their rounding error shrinks where
it matters most. Only norms whose output feeds nothing but quantized MatMuls (q/k/v,
gate/up in a transformer) are rescaled, so nothing else in the graph changes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.initializers import replace_initializer


def scale_norm_inputs(model: ir.Model, sites, alpha: float) -> int:
    """Rescale in place (weights, norm scales and the sites' reader energies); returns how many norms."""
    groups: dict[str, list] = {}
    for site in sites:
        for reader in site.readers:
            if reader.kind != "matmul" or reader.axis != site.layout.in_axis or reader.energy is None:
                continue
            gamma = _norm_scale(reader.activation, site.value.const_value.shape[reader.axis])
            if gamma is not None:
                groups.setdefault(reader.activation.name, []).append((site, reader, gamma))
    scaled = 0
    for members in groups.values():
        activation = members[0][1].activation
        matmuls = {id(use.node) for use in activation.uses()}
        weights = {s.name for s, _, _ in members}
        # every reader of the norm output must be one of these weights' MatMuls, and those
        # weights must be read nowhere else, or rescaling would change something else
        if len(matmuls) != len(members) or any(len(list(s.value.uses())) != 1 for s, _, _ in members):
            continue
        if len(weights) != len(members):
            continue
        energy = np.mean([r.energy for _, r, _ in members], axis=0)
        scale = np.where(energy > 0, energy, 1.0) ** (alpha / 2)
        scale = scale / np.exp(np.mean(np.log(scale)))  # geometric mean 1: magnitudes stay put
        gamma_value, mul = members[0][2]
        gamma = gamma_value.const_value.numpy().astype(np.float64)
        replace_initializer(model, gamma_value.name, (gamma / scale).astype(np.float32), readers=[mul])
        for site, reader, _ in members:
            weight = site.value.const_value.numpy().astype(np.float64)
            view = [1] * weight.ndim
            view[site.layout.in_axis] = -1
            site.value.const_value = ir.Tensor((weight * scale.reshape(view)).astype(np.float32), name=site.name)
            reader.energy = reader.energy / np.square(scale)
        scaled += 1
    return scaled


def _norm_scale(activation: ir.Value | None, width: int):
    """(gamma value, Mul node) when `activation` is Mul(x, gamma) with a 1-D constant gamma."""
    producer = activation.producer() if activation is not None else None
    if producer is None or producer.op_type != "Mul":
        return None
    for operand in producer.inputs:
        if operand is not None and operand.is_initializer() and operand.const_value is not None \
                and tuple(operand.const_value.shape) == (width,):
            return operand, producer
    return None
