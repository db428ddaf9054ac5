"""`dip`: dynamic input pruning of MLPs (DIP, arXiv 2412.01380).

Per token, only the K_in largest-|x| input channels feed the MLP's producers (gate and
up: on a phone those are the only weight columns read from memory), and only the
K_mid largest-|GLU(x)| intermediate channels feed the down projection. No predictor,
no weight change: the mask is computed from the activation itself, in the graph, with
standard ONNX ops, so onnxruntime measures the real quality:

    a = Abs(x); v, _ = TopK(a, K); t = ReduceMin(v, axes=-1, keepdims=1)
    x' = Where(GreaterOrEqual(a, t), x, 0)

The cache-aware variant (DIP-CA) needs the DRAM cache state, which a graph does not
have; `edgefold simulate` applies it on the real activations instead (METHODS.md s.3).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pydantic

from edgefold.errors import EdgefoldError
from edgefold.passes.base import GraphPass, PassConfig, PassContext, PassOutcome
from edgefold.passes.common.initializers import node_by_name
from edgefold.passes.common.reporting import nothing_removed, warn_if_rounded
from edgefold.passes.registry import register_pass


def keep_count(width: int, sparsity: float) -> int:
    """K: channels kept out of `width` at `sparsity` (fraction dropped), at least 1."""
    if not 0.0 <= sparsity < 1.0:
        raise EdgefoldError(f"sparsity must be in [0, 1); got {sparsity}")
    return max(1, min(width, int(round((1.0 - sparsity) * width))))


class DipConfig(PassConfig):
    """Options of `dip`: the fraction of MLP channels masked per token, overall or per side (input, intermediate)."""

    sparsity: float = pydantic.Field(default=0.5, ge=0.0, lt=1.0,
                                     description="fraction of MLP channels dropped per token")
    input_sparsity: float | None = pydantic.Field(default=None, ge=0.0, lt=1.0,
                                                  description="override for the MLP input (gate/up columns)")
    intermediate_sparsity: float | None = pydantic.Field(default=None, ge=0.0, lt=1.0,
                                                         description="override for the intermediate (down columns)")


@register_pass
class DipPass(GraphPass):
    """`dip`: per-token top-K |x| masks on every MLP's inputs and intermediate channels; weights unchanged."""

    name = "dip"
    Config = DipConfig
    summary = "dynamic input pruning: per-token top-K |x| masks on MLP inputs and intermediates"

    def run(self, model: ir.Model, context: PassContext) -> PassOutcome:
        """Insert the top-K masks in front of every MLP's producers and down projection;
        stats give K per side and the fraction of MLP weights a token still reads."""
        analysis = context.analysis
        if analysis is None:
            from edgefold.analysis import analyse

            analysis = analyse(model)
        groups = list(analysis.ffns)
        if not groups:
            raise EdgefoldError("dip: the model has no MLP blocks (gated or plain FFNs) to prune")
        cfg = self.config
        s_in = cfg.sparsity if cfg.input_sparsity is None else cfg.input_sparsity
        s_mid = cfg.sparsity if cfg.intermediate_sparsity is None else cfg.intermediate_sparsity

        nodes = node_by_name(model)
        order = {id(node): index for index, node in enumerate(model.graph)}
        masked = read_fraction = 0.0
        rewritten = dropped = 0
        kept_in = kept_mid = 0
        for group in groups:
            k_in = keep_count(group.hidden, s_in)
            k_mid = keep_count(group.intermediate, s_mid)
            producers = [nodes[p.node] for p in group.producers]
            consumer = nodes[group.consumer.node]
            if k_in < group.hidden:
                _mask_inputs(model, producers, k_in, f"dip.{group.name}.in", order)
                masked += 1
            if k_mid < group.intermediate:
                _mask_inputs(model, [consumer], k_mid, f"dip.{group.name}.mid", order)
                masked += 1
            rewritten += int(k_in < group.hidden or k_mid < group.intermediate)
            dropped += group.hidden - k_in + group.intermediate - k_mid
            kept_in, kept_mid = kept_in + k_in, kept_mid + k_mid
            # Weight bytes a token reads from this MLP, relative to dense: producers read
            # K_in of their input columns, the consumer K_mid of its input columns.
            n_prod = len(group.producers)
            dense = (n_prod + 1) * group.hidden * group.intermediate
            read_fraction += (n_prod * k_in * group.intermediate + k_mid * group.hidden) / dense
        first = groups[0]
        # Per token: K is a whole number of channels, so the sparsity achieved is rounded.
        achieved_in = 1 - kept_in / sum(g.hidden for g in groups)
        achieved_mid = 1 - kept_mid / sum(g.intermediate for g in groups)
        stats = {
            "mlps": len(groups),
            "mlps_rewritten": rewritten,
            "masks_inserted": int(masked),
            "input_keep": keep_count(first.hidden, s_in),
            "input_width": first.hidden,
            "intermediate_keep": keep_count(first.intermediate, s_mid),
            "intermediate_width": first.intermediate,
            "mlp_weight_fraction_read": round(read_fraction / len(groups), 6),
            "removed": int(dropped),  # channels masked out per token, all MLPs together
            "input_sparsity": {"requested": s_in, "achieved": round(achieved_in, 6)},
            "intermediate_sparsity": {"requested": s_mid, "achieved": round(achieved_mid, 6)},
        }
        if not masked:
            widths = ", ".join(f"{g.hidden}/{g.intermediate}" for g in groups[:4]) + (", ..." if len(groups) > 4 else "")
            nothing_removed(stats, "dip", f"no mask inserted: sparsity {s_in:g}/{s_mid:g} keeps every channel of "
                                          f"MLPs of widths {widths} (input/intermediate)")
        else:
            why = "K is a whole number of channels, at least one"
            warn_if_rounded("dip", s_in, achieved_in, "the MLP input channels per token", why)
            warn_if_rounded("dip", s_mid, achieved_mid, "the MLP intermediate channels per token", why)
        return PassOutcome(model, stats)


def _mask_inputs(model: ir.Model, readers: list[ir.Node], k: int, prefix: str, order: dict[int, int]) -> None:
    """Insert the top-K mask on input 0 of `readers` (they must share that input)."""
    x = readers[0].inputs[0]
    if any(node.inputs[0] is not x for node in readers):
        for node in readers:  # producers reading different tensors: mask each on its own
            _mask_inputs(model, [node], k, f"{prefix}.{node.name}", order)
        return
    dtype = x.dtype if x.dtype is not None else ir.DataType.FLOAT
    graph = model.graph
    k_const = _constant(graph, f"{prefix}.k", np.array([k], dtype=np.int64))
    axes = _constant(graph, f"{prefix}.axes", np.array([-1], dtype=np.int64))
    zero = _constant(graph, f"{prefix}.zero", np.array(0, dtype=dtype.numpy()))

    absolute = ir.node("Abs", [x], name=f"{prefix}.abs")
    topk = ir.node("TopK", [absolute.outputs[0], k_const], {"axis": -1, "largest": 1, "sorted": 1},
                   num_outputs=2, name=f"{prefix}.topk")
    kth = ir.node("ReduceMin", [topk.outputs[0], axes], {"keepdims": 1}, name=f"{prefix}.kth")
    keep = ir.node("GreaterOrEqual", [absolute.outputs[0], kth.outputs[0]], name=f"{prefix}.keep")
    where = ir.node("Where", [keep.outputs[0], x, zero], name=f"{prefix}.where")
    new_nodes = [absolute, topk, kth, keep, where]
    for node in new_nodes:
        for index, output in enumerate(node.outputs):
            output.name = f"{node.name}" if len(node.outputs) == 1 else f"{node.name}.{index}"
    masked = where.outputs[0]
    masked.type = x.type
    masked.shape = x.shape

    first = min(readers, key=lambda node: order.get(id(node), 0))
    graph.insert_before(first, new_nodes)
    for node in readers:
        node.replace_input_with(0, masked)


def _constant(graph: ir.Graph, name: str, data: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(data.shape), type=ir.TensorType(ir.DataType.from_numpy(data.dtype)),
                     const_value=ir.tensor(data, name=name))
    graph.register_initializer(value)
    return value
