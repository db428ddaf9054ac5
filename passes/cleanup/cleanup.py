"""`cleanup`: constant folding, dead-node removal, initializer dedup, CSE.

Built from onnxscript's optimizer pieces rather than hand-written graph walking. The
exporter's own optimizer fuses BatchNormalization into Conv; we keep BN nodes unless
asked, because the fold pass repairs BN statistics and needs them explicit.
"""

from __future__ import annotations

import onnx_ir as ir
import pydantic
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter

from edgefold.onnxscript_private import default_rewrite_rules, fold_constants_pass
from edgefold.passes.base import GraphPass, PassConfig, PassContext, PassOutcome
from edgefold.passes.common.reporting import nothing_removed
from edgefold.passes.registry import register_pass


class CleanupConfig(PassConfig):
    """Options of `cleanup`: whether BatchNorms are fused into their convs, and how many rounds to run."""

    fuse_batchnorm: bool = pydantic.Field(False, description="fold BatchNorm into the conv before it (off: "
                                                             "fold/slice need the BatchNorms)")
    iterations: int = pydantic.Field(2, ge=1, description="rounds of folding and rewriting")


def tidy_graph(model: ir.Model, *, fuse_batchnorm: bool = False, iterations: int = 2) -> ir.Model:
    """Run the cleanup pipeline in place and return the model."""
    sequence = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                fold_constants_pass(),
                rewriter.RewritePass(default_rewrite_rules(fuse_batchnorm=fuse_batchnorm)),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=iterations,
            early_stop=True,
        ),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    sequence(model)
    return model


@register_pass
class CleanupPass(GraphPass):
    """`cleanup`: constant folding, dead-node removal, duplicate initializers, common subexpressions."""

    name = "cleanup"
    Config = CleanupConfig
    summary = "constant folding, dead-node removal, duplicate initializers, common subexpressions"

    def run(self, model: ir.Model, context: PassContext) -> PassOutcome:
        """Tidy the model in place without changing what it computes; stats count the nodes before and after."""
        nodes_before = len(list(model.graph.all_nodes()))
        tidy_graph(model, fuse_batchnorm=self.config.fuse_batchnorm, iterations=self.config.iterations)
        nodes_after = len(list(model.graph.all_nodes()))
        # Negative when inlining model-local functions added more nodes than folding removed.
        stats = {"nodes_before": nodes_before, "nodes_after": nodes_after, "removed": nodes_before - nodes_after}
        if nodes_after == nodes_before:
            nothing_removed(stats, "cleanup", f"all {nodes_before} nodes stay (nothing to fold, deduplicate or drop)")
        return PassOutcome(model, stats)
