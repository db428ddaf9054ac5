"""Least-squares repair of a layer whose input channels were removed (`repair=lsq`).

After a structural pass keeps only some input channels of a linear layer (the FFN's down
projection after slicing or anchor folding), the layer is re-fitted in closed form so that
on calibration activations h its output stays as close as possible to the original one:

    minimise  E_t || h_t W - (h_t[kept] W' + b) ||^2  +  lam || W' - W0 ||^2

over the new weight W' (kept x out) and a new bias b (out). W is the original weight,
W0 what the pass wrote (its own data-free estimate); lam = damping x the mean diagonal
of E[h h^T]. Everything needed is the augmented second moment M = E[[h, 1] [h, 1]^T] of
the original layer's input (`calibration.input_moments`), so the fit costs one
calibration run and one (kept + 1)-square solve per layer.

Why the bias: the removed channels' mean contribution E[h_removed] W_removed is most of
what a linear re-fit can recover (FLAP's bias compensation is the special case of a
large damping); on SmolLM2 at 20% sliced it alone takes perplexity from 38.2 to 35.1.
Why the damping toward W0: the kept channels are only weakly correlated with the removed
ones, and a free re-fit on a few thousand tokens of one corpus overfits that corpus.
With nothing removed (kept = every channel, W0 = W) the unique solution is W' = W, b = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgefold.passes.common.initializers import array, fresh_name, node_by_name, replace_initializer


# The default `repair_damping` of slice and fold: on SmolLM2 at 20% sliced (2,048 tokens) lam 0.01 /
# 0.1 / 1 / 3 gave perplexity 37.13 / 35.13 / 33.98 / 34.04 (docs/slice.md).
DEFAULT_DAMPING = 1.0


@dataclass(frozen=True)
class Refit:
    """A re-fitted layer: its new weight rows (kept x out) and the bias to add to its output."""

    weight: np.ndarray
    bias: np.ndarray


def refit_consumer(original: np.ndarray, kept: np.ndarray, start: np.ndarray, moments: np.ndarray,
                   damping: float) -> Refit:
    """The least-squares re-fit of one layer (module docstring).

    `original` is the weight before the pass as (in x out), `kept` the indices of the input
    channels that remain (in the order of the new weight's rows), `start` the pass's own new
    weight (kept x out), `moments` the (in + 1)-square E[[h, 1][h, 1]^T] of the layer's input.
    """
    original = np.asarray(original, dtype=np.float64)
    start = np.asarray(start, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.int64)
    width = original.shape[0]
    if moments.shape != (width + 1, width + 1):
        raise ValueError(f"moments are {moments.shape}, expected {(width + 1, width + 1)} for {width} input channels")
    if start.shape != (len(kept), original.shape[1]):
        raise ValueError(f"start weight is {start.shape}, expected {(len(kept), original.shape[1])}")
    rows = np.append(kept, width)  # the kept channels, then the constant 1 (the bias)
    gram = moments[np.ix_(rows, rows)]
    lam = damping * float(np.mean(np.diag(moments)[:width]))
    penalty = np.zeros(len(rows))
    penalty[:-1] = lam  # the bias is not pulled toward anything
    target = moments[rows, :width] @ original
    target[:-1] += lam * start
    solution = np.linalg.solve(gram + np.diag(penalty), target)
    return Refit(solution[:-1], solution[-1])


def output_error(original: np.ndarray, kept: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                 moments: np.ndarray) -> float:
    """E_t || h_t W - (h_t[kept] W' + b) ||^2 from the moments alone (no activations kept)."""
    original = np.asarray(original, dtype=np.float64)
    width = original.shape[0]
    difference = np.zeros((width + 1, original.shape[1]))
    difference[:width] = original
    difference[np.asarray(kept, dtype=np.int64)] -= weight
    if bias is not None:
        difference[width] -= bias
    return float(np.sum(difference * (moments @ difference)))


def repair_consumer(model: ir.Model, consumer, original: np.ndarray, kept: np.ndarray, moments: np.ndarray,
                    damping: float) -> float:
    """Re-fit `consumer` (an analysis LinearRef whose input channels are now `kept`, sorted) in
    place against its weight before the pass, `original` (in x out); returns the calibration
    output error after the re-fit relative to before it (below 1: the repair helped there)."""
    start = np.moveaxis(array(model, consumer.weight).astype(np.float64), consumer.in_axis, 0)
    refit = refit_consumer(original, kept, start, moments, damping)
    before = output_error(original, kept, start, None, moments)
    after = output_error(original, kept, refit.weight, refit.bias, moments)
    write_refit(model, consumer, refit, node_by_name(model))
    return round(after / before, 6) if before > 0 else 1.0


def write_refit(model: ir.Model, consumer, refit: Refit, nodes: dict[str, ir.Node]) -> None:
    """Store a re-fit into the graph: the consumer's weight (`consumer` is an analysis
    LinearRef), and the bias, added to an existing bias initializer or as a new Add."""
    weight = np.moveaxis(refit.weight, 0, consumer.in_axis).astype(np.float32)
    readers = [nodes[consumer.transpose]] if consumer.transpose else [nodes[consumer.node]]
    replace_initializer(model, consumer.weight, weight, readers=readers)
    bias = refit.bias.astype(np.float32)
    if consumer.bias:
        holder = nodes[consumer.bias_node] if consumer.bias_node else nodes[consumer.node]
        replace_initializer(model, consumer.bias, array(model, consumer.bias) + bias, readers=[holder])
        return
    _add_bias(model, nodes[consumer.node], bias)


def _add_bias(model: ir.Model, node: ir.Node, bias: np.ndarray) -> None:
    """Insert `y + bias` after `node`'s output and move every reader (and a graph output) onto it."""
    output = node.outputs[0]
    name = fresh_name(model, f"{node.name}.lsq_bias")
    constant = ir.Value(name=name, shape=ir.Shape(bias.shape), type=ir.TensorType(ir.DataType.FLOAT),
                        const_value=ir.Tensor(bias, name=name))
    model.graph.register_initializer(constant)
    add = ir.Node("", "Add", [output, constant], name=f"{node.name}.lsq_bias_add")
    add.outputs[0].name = f"{output.name}.lsq_biased"
    add.outputs[0].shape = output.shape
    add.outputs[0].type = output.type
    ir.convenience.replace_all_uses_with(output, add.outputs[0], replace_graph_outputs=True)
    add.replace_input_with(0, output)  # replace_all_uses_with also moved the Add's own input
    model.graph.insert_after(node, add)

