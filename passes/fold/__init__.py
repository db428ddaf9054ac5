"""The `fold` pass (Model Folding, data-free): read top to bottom in this order.

- `fold.py`: the pass: options (`FoldConfig`), which groups it folds, and the per-layer plan.
- `fold_math.py`: clustering a layer's channels and merging each cluster into one.
- `kmeans.py`: k-means and Ward clustering behind `fold_math`.
- `ffn_fold.py`: what folding reads from an FFN's weights (channel features, norm gains).
- `head_channels.py`: whole-head surgery for attention blocks (MHA and GQA).
- `conv_channels.py`: output-channel surgery for conv/BN chains and their readers.
- `bn_repair.py`: data-free BatchNorm statistics repair after conv channels are folded.

Shared with other passes (in `passes/common/`): the channel budget (`channel_allocation`),
FFN importance (`ffn_importance`), FFN surgery (`ffn_channels`); with `slice`: the
least-squares consumer re-fit of `repair=lsq` (`lsq_repair`) and its calibration (`calibration`).
"""

from edgefold.passes.fold.fold import FoldConfig, FoldPass

__all__ = ["FoldConfig", "FoldPass"]
