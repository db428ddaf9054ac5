"""`fold`: data-free structural folding (Model Folding, arXiv 2502.10216).

Per layer, channels that learned similar weights are clustered (k-means) and merged:
producer rows become cluster means, consumer columns cluster sums. FFN channels,
whole attention heads and conv/BN channels (tied sets jointly) shrink for real. The
pruning baselines (`method=magnitude|random`) run through the same code path with
selection maps instead of cluster maps, so comparisons differ only in the method.

Two ways to merge (`merge`): `mean` is the paper's (k-means, cluster means); `anchor`
keeps the most important channels as they are and folds every other channel into the
kept channel it is most similar to, through the consumer only (passes/fold/fold_math.py).
`auto` (default) anchors FFNs, where SmolLM2's channels are nearly orthogonal and a
cluster mean blurs the channel that mattered, and conv sets with BatchNorm, whose
statistics say which channels carry signal; it uses means elsewhere.

No data is read by default: the per-layer budget, the clustering and the repair (Fold-AR, or
an analytic BatchNorm statistics re-estimate) all come from the weights. `repair=lsq` is the
opt-in exception: it re-fits each shrunk FFN's down projection on calibration activations
(passes/common/lsq_repair.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir
import pydantic

from edgefold import progress
from edgefold.errors import EdgefoldError
from edgefold.passes.base import GraphPass, PassConfig, PassContext, PassOutcome
from edgefold.passes.fold import bn_repair, conv_channels, ffn_fold, head_channels
from edgefold.passes.common.ffn_channels import remap_ffn, selection_maps
from edgefold.passes.common.channel_allocation import (
    LayerBudget,
    allocate,
    feasible_cap,
    merge_costs_from_tree,
    sensitivities,
)
from edgefold.passes.common.ffn_importance import FfnMatrices, score_channels, standardise
from edgefold.passes.fold.fold_math import (
    anchor_assignment,
    anchor_maps,
    fold_ar_scale,
    fold_maps,
    kept_channels,
    magnitude_keep,
    random_keep,
)
from edgefold.passes.fold.kmeans import canonical_labels, kmeans_labels, ward_labels, ward_tree
from edgefold.passes.common.lsq_repair import DEFAULT_DAMPING, repair_consumer
from edgefold.passes.common.reporting import nothing_removed, warn_if_rounded
from edgefold.passes.registry import register_pass

Structure = Literal["ffn", "attention", "conv"]

# Per-layer caps of the auto allocation, measured: on SmolLM2 FFNs 0.45 against 0.75 gives
# perplexity 31.8 vs 33.4 at 10% (anchored fold, 2048 tokens); on EfficientNet's conv sets
# 0.45 against 0.75 drops top-1 agreement at 20% from 0.50 to 0.40 (fold) and 0.53 to 0.19
# (magnitude). A cap below the global ratio is raised to ratio + 0.05.
_DEFAULT_LAYER_CAP = {"ffn": 0.45, "conv": 0.75}


class FoldConfig(PassConfig):
    """Options of `fold`: how much to remove, from which structures, and how channels are chosen and merged."""

    RENAMED: ClassVar[dict[str, str]] = {"ratios": "layer_ratios"}

    ratio: float = pydantic.Field(0.2, ge=0.0, lt=1.0, description="fraction of each folded structure's parameters removed")
    layer_ratios: dict[str, float] = pydantic.Field(
        default_factory=dict, description="per-layer ratios by group name (ffn.3, conv.12, attn.0) or layer label; "
                                          "the other layers follow `allocation`")
    allocation: Literal["auto", "uniform"] = pydantic.Field(
        "auto", description="auto: per-layer ratios from a data-free sensitivity of each layer; uniform: `ratio` everywhere")
    structures: list[Structure] = pydantic.Field(
        default_factory=lambda: ["ffn", "conv"], description="what to fold: ffn channels, attention kv groups, conv/BN channels")
    method: Literal["fold", "magnitude", "random"] = pydantic.Field(
        "fold", description="fold: merge channels (Model Folding); magnitude/random: prune baselines on the same widths")
    repair: Literal["auto", "none", "fold-ar", "bn-stats", "lsq"] = pydantic.Field(
        "auto", description="repair after merging: fold-ar (data-free rescale), bn-stats (BatchNorm statistics), "
                            "auto picks per structure; lsq (uses data): re-fit each FFN's down projection and a bias "
                            "in closed form on calibration activations (attention and conv sets get auto's choice)")
    repair_damping: float = pydantic.Field(
        DEFAULT_DAMPING, ge=0.0, description="repair=lsq: pull toward the data-free fold, relative to the mean activation "
                                         "energy (0: a free least-squares fit)")
    calibration_samples: int = pydantic.Field(32, ge=1, description="repair=lsq: calibration documents/batches run")
    calibration_text: str | None = pydantic.Field(
        None, description="repair=lsq reads this UTF-8 file (one document per line) instead of the Lee background corpus")
    seed: int | None = pydantic.Field(None, description="overrides the build seed (k-means init, random baseline)")
    channel_multiple: int | None = pydantic.Field(
        None, ge=1, description="kept widths are multiples of this (default: the profile's, else 1)")
    max_layer_ratio: float | None = pydantic.Field(
        None, gt=0.0, le=1.0, description="cap on one layer's ratio under auto allocation (default: 0.45 for FFNs, "
                                          "0.75 for conv sets)")
    sensitivity_power: float = pydantic.Field(
        6.0, ge=0.0, description="how strongly auto allocation spares sensitive layers (share ~ sensitivity^-power)")
    outlier_threshold: float = pydantic.Field(3.0, ge=0.0, description="never merge channels this many x the median norm (0: off)")
    attention_unit: Literal["kv-group", "query-head"] = pydantic.Field(
        "kv-group", description="fold whole kv groups (a kv head and its query heads) or single query heads")
    merge: Literal["auto", "mean", "anchor"] = pydantic.Field(
        "auto", description="mean: k-means cluster means (the paper); anchor: the most important channels stay, "
                            "the others fold into their most similar one (FFN and conv; heads always use mean); "
                            "auto: anchor for FFNs and conv sets with BatchNorm, mean elsewhere or with fold-ar")

    @pydantic.field_validator("layer_ratios")
    @classmethod
    def _ratios_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for key, ratio in value.items():
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"ratio for {key!r} must be in [0, 1), got {ratio}")
        return value

    @pydantic.model_validator(mode="after")
    def _anchor_without_fold_ar(self):
        if self.merge == "anchor" and self.repair == "fold-ar":
            raise ValueError("repair=fold-ar corrects cluster means; it does not apply to merge=anchor")
        if self.repair == "lsq" and self.merge == "mean" and "ffn" in self.structures and self.method == "fold":
            raise ValueError("repair=lsq re-fits the down projection on the channels that stay; merge=mean replaces "
                             "them with cluster means: use merge=anchor (or auto)")
        if self.calibration_text is not None:
            if self.repair != "lsq":
                raise ValueError("calibration_text is read only by repair=lsq")
            from edgefold.passes.common.calibration import require_calibration_text

            require_calibration_text(self.calibration_text)
        return self

    def input_files(self) -> list[str]:
        """The calibration text, when one is given."""
        return [self.calibration_text] if self.calibration_text is not None else []

    @pydantic.field_validator("structures")
    @classmethod
    def _structures_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one structure (ffn, attention, conv)")
        return sorted(set(value), key=value.index)


@dataclass(frozen=True)
class FfnSource:
    """An FFN group and the producer rows its plan was made from."""

    group: Any  # analysis FfnGroup
    rows: list[np.ndarray]  # per producer, as stored (with a bias column)
    scaled_rows: np.ndarray  # all producers side by side, the input norm's gain folded in
    consumer_columns: np.ndarray  # the down projection before folding, [intermediate, out]


@dataclass(frozen=True)
class HeadSource:
    """An attention group, folded by query head ("q") or by whole kv group ("kv")."""

    group: Any  # analysis AttentionGroup
    unit: Literal["q", "kv"]


@dataclass(frozen=True)
class ConvSource:
    """A conv channel set and the parameters of each of its tensors."""

    set: Any  # conv_channels.ChannelSet
    tensor_params: dict[str, int]

    @property
    def has_batchnorm(self) -> bool:
        """Whether any member of the set is followed by a BatchNorm."""
        return any(member.batchnorm for member in self.set.members)


@dataclass(frozen=True)
class Kept:
    """Pruning baselines: these channels stay, the rest go."""

    channels: np.ndarray


@dataclass(frozen=True)
class Clustered:
    """Folding: one cluster label per channel; each cluster becomes one channel."""

    labels: np.ndarray


@dataclass(frozen=True)
class Anchored:
    """Folding onto anchors: labels per channel, and the channel that stays for each cluster."""

    labels: np.ndarray
    anchors: np.ndarray


@dataclass
class _Plan:
    """One foldable group: what to cluster, how big it is, and what it keeps."""

    structure: str  # ffn, attention or conv (the names of FoldConfig.structures)
    name: str
    label: str
    width: int
    params_per_channel: int
    features: np.ndarray
    protected: np.ndarray  # bool per channel: never merged
    scores: np.ndarray  # magnitude per channel (pruning baseline)
    sensitivity_score: float = 1.0
    importance: np.ndarray | None = None  # data-free importance for picking anchors (merge=anchor)
    tree: np.ndarray | None = None
    keep: int = 0
    source: FfnSource | HeadSource | ConvSource | None = None

    @property
    def free(self) -> np.ndarray:
        return np.flatnonzero(~self.protected)


@register_pass
class FoldPass(GraphPass):
    """`fold`: data-free structural folding (k-means merge) of FFN channels, attention heads and conv/BN channels."""

    name = "fold"
    Config = FoldConfig
    summary = "data-free structural folding (k-means merge) of FFN channels, attention heads and conv/BN channels"

    def run(self, model: ir.Model, context: PassContext) -> PassOutcome:
        """Fold (or, for the baselines, prune) FFN channels, attention heads and conv channels in place to about
        `ratio`; stats give each group's width before and after and the ratio achieved per structure."""
        cfg = self.config
        analysis = context.analysis
        if analysis is None:
            from edgefold.analysis import analyse

            analysis = analyse(model)
        seed = cfg.seed if cfg.seed is not None else context.seed
        multiple = cfg.channel_multiple or getattr(context.profile, "channel_multiple", None) or 1
        plans = self._plans(model, analysis, multiple)
        unknown = set(cfg.layer_ratios) - {p.name for p in plans} - {p.label for p in plans}
        if unknown:
            raise EdgefoldError(f"fold: ratios name no foldable group: {', '.join(sorted(unknown))}")
        with progress.step(f"fold: allocating {len(plans)} groups ({cfg.allocation})"):
            self._allocate(plans, multiple)
        rng = np.random.default_rng(seed)
        stats: dict[str, Any] = {"method": cfg.method, "allocation": cfg.allocation, "seed": seed,
                                 "channel_multiple": multiple, "groups": {}}
        moments = self._measure_for_lsq(model, plans, context, stats)
        for plan in progress.track(plans, "fold: merging"):
            stats["groups"][plan.name] = [plan.width, plan.keep]
            if plan.keep >= plan.width:
                continue
            keep_or_labels = self._assign(plan, rng, seed)
            self._apply(model, analysis, plan, keep_or_labels)
            if plan.name in moments:
                stats["lsq_error_ratio"][plan.name] = self._repair_lsq(model, plan, keep_or_labels, moments[plan.name])
        self._report(plans, stats, multiple)
        return PassOutcome(model, stats)

    def _measure_for_lsq(self, model: ir.Model, plans: list[_Plan], context: PassContext,
                         stats: dict[str, Any]) -> dict[str, np.ndarray]:
        """repair=lsq: E[[h, 1][h, 1]^T] of the intermediate of every FFN that will shrink, from
        one calibration run of the pass's input model, by plan name; the calibration goes in stats."""
        cfg = self.config
        if cfg.repair != "lsq":
            return {}
        stats.update(repair="lsq", repair_damping=cfg.repair_damping, lsq_error_ratio={})
        targets = [p for p in plans if p.structure == "ffn" and p.keep < p.width]
        if not targets:
            return {}
        from edgefold.passes.common.calibration import input_moments
        from edgefold.passes.common.initializers import node_by_name

        nodes = node_by_name(model)
        names = {p.name: nodes[p.source.group.consumer.node].inputs[0].name for p in targets}
        with progress.step(f"fold: measuring {len(names)} FFN intermediates for repair=lsq"):
            measured, run = input_moments(context.model_path, list(names.values()), cfg.calibration_samples, "fold",
                                          "use another repair (calibration-free)", text_file=cfg.calibration_text)
        stats.update(run.stats())
        return {plan: measured[name] for plan, name in names.items()}

    def _repair_lsq(self, model: ir.Model, plan: _Plan, assignment: Kept | Clustered | Anchored,
                    moments: np.ndarray) -> float:
        """Re-fit the FFN's down projection on the channels that stayed (in the new weight's row order)."""
        if isinstance(assignment, Anchored):
            kept = assignment.anchors
        elif isinstance(assignment, Kept):
            kept = np.sort(assignment.channels)
        else:  # the config validator refuses merge=mean with lsq; auto anchors FFNs
            raise EdgefoldError(f"fold: repair=lsq cannot re-fit {plan.name}: its channels were replaced by means")
        original = np.asarray(plan.source.consumer_columns)
        return repair_consumer(model, plan.source.group.consumer, original, kept, moments, self.config.repair_damping)

    def _report(self, plans: list[_Plan], stats: dict[str, Any], multiple: int) -> None:
        """Channels removed, and the parameter ratio achieved per structure against `ratio`."""
        cfg = self.config
        removed = sum(p.width - p.keep for p in plans)
        explicit = {p.name for p in plans if p.name in cfg.layer_ratios or p.label in cfg.layer_ratios}
        achieved: dict[str, float] = {}
        for structure in cfg.structures:
            members = [p for p in plans if p.structure == structure]
            if not members:
                continue
            # The allocator's own accounting: conv sets share tensors, counted once.
            total = _structure_params(members) if structure == "conv" else sum(p.width * p.params_per_channel
                                                                                for p in members)
            ratio = sum((p.width - p.keep) * p.params_per_channel for p in members) / max(total, 1)
            achieved[structure] = round(ratio, 6)
            if removed and not explicit & {p.name for p in members}:
                warn_if_rounded("fold", cfg.ratio, ratio, f"the {structure} parameters")
        stats["removed"] = removed
        stats["requested_ratio"] = cfg.ratio
        stats["achieved_ratio"] = achieved
        if removed == 0:
            widths = ", ".join(sorted({str(p.width) for p in plans}, key=int))
            nothing_removed(stats, "fold", f"every group keeps all its channels (widths {widths}, ratio {cfg.ratio:g}, "
                                           f"channel multiple {multiple})")

    # --- planning ----------------------------------------------------------------------
    def _plans(self, model: ir.Model, analysis, multiple: int) -> list[_Plan]:
        cfg = self.config
        plans: list[_Plan] = []
        if "ffn" in cfg.structures:
            plans += [self._ffn_plan(model, group) for group in analysis.ffns]
        if "attention" in cfg.structures:
            plans += [p for p in (self._attention_plan(model, g) for g in analysis.attentions) if p is not None]
        if "conv" in cfg.structures:
            for cset in conv_channels.channel_sets(analysis):
                if cset.reason is None and cset.width > 1:
                    plans.append(self._conv_plan(model, cset))
        if not plans:
            raise EdgefoldError(f"fold: the model has no foldable {'/'.join(cfg.structures)} groups")
        return plans

    def _ffn_plan(self, model: ir.Model, group) -> _Plan:
        rows = ffn_fold.producer_rows(model, group)
        columns = ffn_fold.consumer_columns(model, group)
        per_channel = sum(r.shape[1] for r in rows) + columns.shape[1]
        scaled = ffn_fold.scaled_producer_rows(model, group, rows)
        matrices = FfnMatrices(tuple(rows), tuple(scaled), rows[-1], columns)
        return _Plan("ffn", group.name, group.layer_label, group.intermediate, per_channel,
                     features=ffn_fold.channel_features(rows),
                     protected=ffn_fold.outlier_channels(rows, self.config.outlier_threshold),
                     scores=score_channels("norm-product", matrices),
                     sensitivity_score=ffn_fold.sensitivity_score(model, group, rows),
                     importance=np.exp(standardise(score_channels("concentration", matrices))),
                     source=FfnSource(group, rows, np.concatenate(scaled, axis=1), columns))

    def _attention_plan(self, model: ir.Model, group) -> _Plan | None:
        unit = "q" if self.config.attention_unit == "query-head" and group.num_heads > group.num_kv_heads else "kv"
        width = group.num_heads if unit == "q" else group.num_kv_heads
        if width < 2 and unit == "kv":
            return None
        if group.kv_repeat == "tile" and group.num_kv_heads < group.num_heads:
            return None  # tiled kv heads interleave differently; left as is
        d, dv = group.head_dim, group.v_head_dim or group.head_dim
        heads_per_unit = 1 if unit == "q" else group.num_heads // group.num_kv_heads
        per_unit = heads_per_unit * (d * group.q.in_features + dv * group.o.out_features)
        if unit == "kv":
            per_unit += (d + dv) * group.k.in_features
        raw = head_channels.head_features_raw(model, group, unit)
        return _Plan("attention", group.name, group.layer_label, width, per_unit,
                     features=head_channels.head_features(model, group, unit),
                     protected=np.zeros(width, dtype=bool), scores=np.linalg.norm(raw, axis=1),
                     source=HeadSource(group, unit))

    def _conv_plan(self, model: ir.Model, cset) -> _Plan:
        features = conv_channels.set_features(model, cset)
        norms = conv_channels.producer_norms(model, cset)
        return _Plan("conv", cset.name, cset.label, cset.width, _conv_params_per_channel(model, cset),
                     features=features, protected=np.zeros(cset.width, dtype=bool), scores=norms,
                     importance=_conv_importance(model, cset, norms),
                     source=ConvSource(cset, _conv_tensor_params(model, cset)))

    # --- allocation --------------------------------------------------------------------
    def _allocate(self, plans: list[_Plan], multiple: int) -> None:
        cfg = self.config
        explicit = {}
        for plan in plans:
            ratio = cfg.layer_ratios.get(plan.name, cfg.layer_ratios.get(plan.label))
            if ratio is not None:
                explicit[plan.name] = ratio
        for structure in cfg.structures:
            group_plans = [p for p in plans if p.structure == structure]
            step = 1 if structure == "attention" else multiple
            free = [p for p in group_plans if p.name not in explicit]
            for plan in group_plans:
                if plan.name in explicit:
                    plan.keep = self._kept(plan, explicit[plan.name], step)
            if cfg.allocation == "uniform" or structure == "attention" or cfg.ratio == 0:
                for plan in free:
                    plan.keep = self._kept(plan, cfg.ratio, step)
                continue
            for plan in free:
                plan.tree = ward_tree(plan.features[plan.free]) if len(plan.free) > 1 else None
            scores = {p.name: p.sensitivity_score for p in free}
            weights = sensitivities(scores, cfg.sensitivity_power) if structure == "ffn" else {p.name: 1.0 for p in free}
            budgets = [LayerBudget(p.name, p.width, p.params_per_channel,
                                   merge_costs_from_tree(p.tree) if p.tree is not None else np.zeros(0),
                                   weights[p.name], min_keep=int(p.protected.sum()) + 1) for p in free]
            total = _structure_params(free) if structure == "conv" else None
            cap = cfg.max_layer_ratio or _DEFAULT_LAYER_CAP.get(structure, 0.75)
            kept = allocate(budgets, cfg.ratio, max_ratio=feasible_cap(cap, cfg.ratio),
                            multiple=step, total_params=total)
            for plan in free:
                plan.keep = kept[plan.name]

    def _kept(self, plan: _Plan, ratio: float, step: int) -> int:
        k = kept_channels(plan.width, ratio, step)
        return max(k, int(plan.protected.sum()) + (1 if plan.protected.sum() < plan.width else 0), 1)

    # --- assignment --------------------------------------------------------------------
    def _assign(self, plan: _Plan, rng: np.random.Generator, seed: int):
        """Cluster labels (fold) or kept channel indices (baselines)."""
        method = self.config.method
        if isinstance(plan.source, HeadSource) and plan.source.unit == "q":
            return self._assign_within_groups(plan, rng, seed)
        if method == "magnitude":
            return Kept(magnitude_keep(plan.scores, plan.keep))
        if method == "random":
            return Kept(random_keep(plan.width, plan.keep, rng))
        if self._merge_for(plan) == "anchor":
            # FFN similarity in the space beta is computed in (rows with the norm scale folded in).
            space = plan.source.scaled_rows if isinstance(plan.source, FfnSource) else plan.features
            return Anchored(*anchor_assignment(plan.importance, space, plan.keep, plan.protected))
        return Clustered(self._cluster(plan, seed))

    def _merge_for(self, plan: _Plan) -> str:
        """`auto`: anchored where measured better — FFNs (SmolLM2, 8192 tokens: 32.38 vs 41.55
        perplexity at 10%, 46.31 vs 116.4 at 20%) and conv sets with BatchNorm, whose BN
        statistics give the importance (EfficientNet-Lite0 top-1 agreement 0.75/0.56/0.15 vs
        0.64/0.50/0.29 at 10/20/30%, with a lower KL at every ratio). Cluster means elsewhere,
        and whenever Fold-AR is asked for (it corrects averaging, which anchors do not do)."""
        merge = self.config.merge
        if merge == "auto":
            bn_set = isinstance(plan.source, ConvSource) and plan.source.has_batchnorm
            anchored = (plan.structure == "ffn" or bn_set) and self.config.repair != "fold-ar"
            merge = "anchor" if anchored else "mean"
        return merge if plan.importance is not None else "mean"

    def _cluster(self, plan: _Plan, seed: int) -> np.ndarray:
        free, protected = plan.free, np.flatnonzero(plan.protected)
        k_free = plan.keep - len(protected)
        x = plan.features[free]
        init = ward_labels(plan.tree, k_free) if plan.tree is not None and k_free > 1 else None
        sub = kmeans_labels(x, k_free, seed=seed, init_labels=init) if k_free > 1 else np.zeros(len(free), dtype=np.int64)
        labels = np.empty(plan.width, dtype=np.int64)
        labels[free] = sub
        labels[protected] = k_free + np.arange(len(protected))
        return canonical_labels(labels)

    def _assign_within_groups(self, plan: _Plan, rng, seed: int):
        """Query heads folded inside each kv group, the same number kept per group."""
        group = plan.source.group
        per_group = group.num_heads // group.num_kv_heads
        keep_each = max(1, round(plan.keep / group.num_kv_heads))
        plan.keep = keep_each * group.num_kv_heads
        labels = np.empty(plan.width, dtype=np.int64)
        kept: list[int] = []
        for j, heads in enumerate(group.kv_groups):
            heads = np.asarray(heads)
            if self.config.method == "magnitude":
                kept += list(heads[magnitude_keep(plan.scores[heads], keep_each)])
            elif self.config.method == "random":
                kept += list(heads[random_keep(per_group, keep_each, rng)])
            else:
                sub = kmeans_labels(plan.features[heads], keep_each, seed=seed)
                labels[heads] = j * keep_each + sub
        if self.config.method != "fold":
            return Kept(np.asarray(kept))
        return Clustered(labels)

    # --- surgery -----------------------------------------------------------------------
    def _apply(self, model: ir.Model, analysis, plan: _Plan, assignment: Kept | Clustered | Anchored) -> None:
        if isinstance(assignment, Anchored):
            self._apply_anchored(model, plan, assignment.labels, assignment.anchors)
            return
        if isinstance(assignment, Kept):
            producer, consumer = _selection(assignment.channels, plan)
            labels = None
        else:
            labels = assignment.labels
            producer, consumer = fold_maps(labels)
        repair = self._repair_for(plan)
        if isinstance(plan.source, FfnSource):
            scale = None
            if labels is not None and repair == "fold-ar":
                scale = fold_ar_scale(labels, np.concatenate(plan.source.rows, axis=1))
            remap_ffn(model, plan.source.group, producer, consumer, producer_scale=scale)
        elif isinstance(plan.source, HeadSource):
            self._apply_heads(model, plan, producer, consumer)
        else:
            self._apply_conv(model, plan, labels, producer, consumer, repair)

    def _apply_anchored(self, model: ir.Model, plan: _Plan, labels: np.ndarray, anchors: np.ndarray) -> None:
        """Anchors keep their rows; members fold into the consumer by regression on their anchor.

        FFN: beta from the producer rows with the norm scale folded in. Conv with BatchNorm:
        the analytic statistics fold with the anchors as the producer (its regression
        coefficients and mean shifts use what the BNs know); without BN, beta from the
        set's features.
        """
        if isinstance(plan.source, FfnSource):
            producer, consumer = anchor_maps(labels, anchors, plan.source.scaled_rows)
            remap_ffn(model, plan.source.group, producer, consumer)
            return
        producer, consumer = anchor_maps(labels, anchors, plan.features)
        if self._repair_for(plan) == "bn-stats":
            self._apply_conv(model, plan, labels, producer, consumer, "bn-stats")
        else:
            self._apply_conv(model, plan, None, producer, consumer, "none")

    def _repair_for(self, plan: _Plan) -> str:
        repair = self.config.repair
        if self.config.method != "fold":
            return "none"
        if repair == "lsq":  # FFNs are re-fitted after the surgery (_repair_lsq); the rest as auto
            repair = "auto"
        if repair == "auto":
            if isinstance(plan.source, ConvSource) and plan.source.has_batchnorm:
                return "bn-stats"
            return "none"
        if repair == "bn-stats" and plan.structure != "conv":
            return "none"  # statistics repair needs BatchNorm; FFNs and heads have none
        return repair

    def _apply_heads(self, model: ir.Model, plan: _Plan, producer: np.ndarray, consumer: np.ndarray) -> None:
        group = plan.source.group
        if plan.source.unit == "q":
            kv_map = np.eye(group.num_kv_heads)
            head_channels.remap_heads(model, group, producer, consumer, kv_map)
            return
        # Whole kv groups: query head r of group j maps with its group.
        per_group = group.num_heads // group.num_kv_heads
        order = [h for heads in group.kv_groups for h in heads]  # query heads in kv-group order
        q_map = np.zeros((producer.shape[0] * per_group, group.num_heads))
        q_consumer = np.zeros((group.num_heads, producer.shape[0] * per_group))
        for new_j in range(producer.shape[0]):
            for old_j in range(group.num_kv_heads):
                for r in range(per_group):
                    old_h = order[old_j * per_group + r]
                    q_map[new_j * per_group + r, old_h] = producer[new_j, old_j]
                    q_consumer[old_h, new_j * per_group + r] = consumer[old_j, new_j]
        head_channels.remap_heads(model, group, q_map, q_consumer, producer)

    def _apply_conv(self, model: ir.Model, plan: _Plan, labels, producer, consumer, repair: str) -> None:
        cset = plan.source.set
        scale = maps = shifts = None
        if labels is not None and repair == "fold-ar":
            scale = fold_ar_scale(labels, plan.features)
        if labels is not None and repair == "bn-stats":
            anchored = self._merge_for(plan) == "anchor" and self.config.method == "fold"
            folded = bn_repair.statistics_fold(model, cset, labels, plan.features,
                                               producer=producer if anchored else None)
            producer, maps, shifts = folded.producer_map, folded.consumer_maps, folded.reader_shifts
        conv_channels.remap_channel_set(model, cset, producer, consumer, channel_scale=scale,
                                        reader_maps=maps, reader_shifts=shifts)


def _conv_importance(model: ir.Model, cset, norms: np.ndarray) -> np.ndarray:
    """Anchor importance of a conv set's channels: the output's second moment from the BN
    statistics when the set has BN (EfficientNet-Lite0 at 10/20/30%: top-1 agreement
    0.75/0.56/0.15 against 0.71/0.47/0.10 with the squared filter norm), else that norm."""
    moment = bn_repair.set_second_moment(model, cset)
    if moment is not None:
        return moment + 1e-12 * max(float(moment.max()), 1e-30)
    return norms ** 2 + 1e-30


def _selection(keep: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    return selection_maps(np.sort(keep), plan.width)


def _structure_params(plans: list[_Plan]) -> int:
    """Parameters the plans' tensors hold, each tensor counted once (a conv reading one
    set is a member of the next, so per-channel sums would count it twice)."""
    sizes: dict[str, int] = {}
    for plan in plans:
        if isinstance(plan.source, ConvSource):
            sizes.update(plan.source.tensor_params)
    return sum(sizes.values())


def _conv_tensor_params(model: ir.Model, cset) -> dict[str, int]:
    from edgefold.passes.common.initializers import node_by_name

    nodes = node_by_name(model)
    names = [m.weight for m in cset.members] + [m.bias for m in cset.members if m.bias]
    for member in cset.members:
        if member.batchnorm:
            names += [v.name for v in nodes[member.batchnorm].inputs[1:5]]
    names += [conv_channels.reader_weight(nodes[c])[0].name for c in cset.consumers]
    return {n: int(np.prod([int(d) for d in model.graph.initializers[n].shape])) for n in names}


def _conv_params_per_channel(model: ir.Model, cset) -> int:
    """Parameters one channel of the set costs: member filters, biases and BN params,
    plus one input slice of every reader."""
    from edgefold.passes.common.initializers import node_by_name

    nodes = node_by_name(model)
    total = 0
    for member in cset.members:
        shape = model.graph.initializers[member.weight].shape
        total += int(np.prod([int(d) for d in shape[1:]]))
        total += 1 if member.bias else 0
        total += 4 if member.batchnorm else 0
    for name in cset.consumers:
        weight, axis = conv_channels.reader_weight(nodes[name])
        shape = [int(d) for d in weight.shape]
        total += int(np.prod(shape)) // shape[axis]
    return total
