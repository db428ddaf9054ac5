"""The `slice` pass (PruneNet-style FFN channel slicing): read top to bottom in this order.

- `slice.py`: the pass: options (`SliceConfig`), FFN views, scores, budgets, the rewrite.
- `prune_policy.py`: the learned channel-scoring policy and its training.
- `spectrum.py`: the spectral distance the policy is trained against.

Shared with `fold` (in `passes/common/`): the channel budget (`channel_allocation`), FFN
importance (`ffn_importance`), FFN surgery (`ffn_channels`) and the norm-scale fold
(`norm_scale`), the least-squares re-fit of `repair=lsq` (`lsq_repair`); with `quantize`:
calibration samples (`calibration`).
"""

from edgefold.passes.slice.slice import SliceConfig, SlicePass

__all__ = ["SliceConfig", "SlicePass"]
