"""Mobile DRAM/flash simulation of dynamic MLP sparsity (DIP, DIP-CA; METHODS.md s.3).

`simulate(model, profiles, ...)` replays real Wikipedia text through the model with
per-token MLP masks (dense, DIP, cache-aware DIP-CA), keeps a DRAM cache of MLP weight
columns (LRU or LFU) under the profile's weight budget, and reports per token the
cache hit rate, bytes from flash and DRAM, and tokens/s from the profile's bandwidths,
along with the perplexity the masked model really gets.

    from edgefold.simulate import simulate, default_methods
    result = simulate("smollm2-135m", ["mobile-arm64"], cache_fraction=0.5)
"""

from edgefold.simulate.cache import POLICIES, ColumnCache
from edgefold.simulate.engine import Counts, Method, MethodRun, run_method
from edgefold.simulate.layout import TokenBytes, WeightLayout, token_bytes, weight_layout
from edgefold.passes.dip import keep_count
from edgefold.simulate.masking import cache_aware_scores, topk_mask
from edgefold.simulate.run import SimulationResult, default_methods, simulate

__all__ = [
    "POLICIES",
    "ColumnCache",
    "Counts",
    "Method",
    "MethodRun",
    "SimulationResult",
    "TokenBytes",
    "WeightLayout",
    "cache_aware_scores",
    "default_methods",
    "keep_count",
    "run_method",
    "simulate",
    "token_bytes",
    "topk_mask",
    "weight_layout",
]
