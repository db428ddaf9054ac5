"""onnxscript's private APIs edgefold depends on, in one place.

onnxscript 0.7 keeps its constant folder and its BatchNorm-fusion rules in private modules,
and its default rewrite rules in a private name. Everything else reaches them through the
functions here, so an onnxscript upgrade that moves them breaks one file, and the layer
test (tests/test_layers.py) keeps it that way.
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter.rules.common import _fuse_batchnorm

DEFAULT_FOLD_INPUT_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
DEFAULT_FOLD_OUTPUT_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT


def fold_constants_pass(*, input_size_limit: int = DEFAULT_FOLD_INPUT_LIMIT,
                        output_size_limit: int = DEFAULT_FOLD_OUTPUT_LIMIT,
                        should_fold: Callable[[ir.Node], bool | None] | None = None) -> ir.passes.InPlacePass:
    """onnxscript's constant-folding pass (with shape inference) under these size limits."""
    options = {"should_fold": should_fold} if should_fold is not None else {}
    return _constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=input_size_limit,
                                               output_size_limit=output_size_limit, **options)


def default_rewrite_rules(*, fuse_batchnorm: bool) -> list:
    """onnxscript's default rewrite rules, without the BatchNorm-into-Conv fusions unless asked."""
    rules = list(rewriter._DEFAULT_REWRITE_RULES)
    if not fuse_batchnorm:
        bn = _fuse_batchnorm.rules
        bn_rules = set(bn.rules if hasattr(bn, "rules") else bn)
        rules = [rule for rule in rules if rule not in bn_rules]
    return rules
