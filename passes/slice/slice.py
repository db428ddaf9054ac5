"""`slice`: calibration-free FFN channel slicing (PruneNet, arXiv 2501.15296).

Removes intermediate channels of every FFN: rows of the producers (W_up and W_gate,
same indices), the matching inputs of W_down, and biases, so the intermediate width
really shrinks. By default nothing is run on data: channels are ranked from the weights.

Ranking (`method`):
- `policy` (default): the learned PruneNet policy (passes/slice/prune_policy.py),
  trained once per hidden size with REINFORCE on the KS distance between singular
  value spectra and then reused, plus a structural prior (`prior`, below).
- `magnitude`: the L2 norm of each W_up row (baseline).
- `random`: a seeded random order (baseline).
- `activation`: not calibration-free: each channel's measured output energy,
  sqrt(E[h_j^2]) x |W_down[:, j]|, on `calibration_samples` documents of the Lee
  background corpus (passes/common/calibration.py). A reference for what a data-aware
  ranking reaches, and the option for users who do have text to spare.

Why a prior: on SmolLM2 the KS reward alone ranks channels much like their norm, and
the norm is anti-correlated with importance in the layers that matter (layer 0 and
the last two, where a few low-norm channels feed the massive residual activations).
What does find those channels from the weights alone is coordinate concentration: a
channel whose rows/columns put their energy on a few residual dimensions. The policy
score is `learned logit + prior x concentration` (both standardised per layer).

Per-layer ratios (`allocation`): `uniform`, explicit `ratios=[...]`, or `spectrum`:
each layer is probed by slicing `probe` of its channels with the method's own
ranking and measuring the KS distance of the spectrum of its FFN1 matrix (the norm
scale folded in); layers whose spectrum moves more get a smaller share of the global
budget (share ~ KS^-sharpness), at most `max_ratio` per layer. Kept widths are
rounded to `multiple` channels (the device profile's channel_multiple when there is one).
The cap matters: on SmolLM2 (2048 tokens) 0.45 against 0.6 gives perplexity 45.1 vs 53.6
at 20% and 67.7 vs 85.8 at 30%; the KS probe alone over-spends the flat middle layers.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir
import pydantic

from edgefold import progress
from edgefold.atomic import cache_root
from edgefold.errors import EdgefoldError
from edgefold.passes.base import GraphPass, PassConfig, PassContext, PassOutcome
from edgefold.passes.common.ffn_channels import remap_ffn, selection_maps
from edgefold.passes.common.channel_allocation import feasible_cap
from edgefold.passes.common.ffn_importance import FfnMatrices, score_channels, standardise
from edgefold.passes.common.initializers import array, node_by_name
from edgefold.passes.common.lsq_repair import DEFAULT_DAMPING, repair_consumer
from edgefold.passes.common.norm_scale import input_norm_scale
from edgefold.passes.common.reporting import nothing_removed, warn_if_rounded
from edgefold.passes.registry import register_pass
from edgefold.passes.slice.prune_policy import (
    POLICY_FORMAT,
    LayerMatrix,
    file_digest,
    load_policy,
    save_policy,
    sliced_ks,
    top_rows,
    train_policy,
)

PROBE_RATIO = 0.4


class SliceConfig(PassConfig):
    """Options of `slice`: how many FFN channels go, how they are ranked, and how the ratio is spread over layers."""

    RENAMED: ClassVar[dict[str, str]] = {"ratios": "layer_ratios", "multiple": "channel_multiple",
                                         "max_ratio": "max_layer_ratio"}
    PATH_OPTIONS: ClassVar[tuple[str, ...]] = ("policy", "calibration_text")

    ratio: float = pydantic.Field(0.2, ge=0.0, lt=1.0, description="fraction of all FFN channels removed")
    method: Literal["policy", "magnitude", "random", "activation"] = pydantic.Field(
        "policy", description="policy: the learned spectrum-preserving ranking (no data); magnitude/random: baselines; "
                              "activation: channel energy on calibration text (uses data)")
    allocation: Literal["uniform", "spectrum"] = pydantic.Field(
        "spectrum", description="per-layer ratios: uniform, or from a spectrum probe of each layer's sensitivity")
    layer_ratios: dict[str, float] | None = pydantic.Field(
        None, description="explicit ratio of every FFN by group name (ffn.0 ...) or layer label (overrides ratio and "
                          "allocation)")
    policy: str | None = pydantic.Field(None, description="policy file to use (trained and written there if missing)")
    train_seconds: float = pydantic.Field(300.0, gt=0, description="wall-time cap for training a new policy")
    episodes: int = pydantic.Field(60, ge=1, description="REINFORCE episodes for a new policy")
    prior: float = pydantic.Field(3.0, ge=0.0, description="weight of the concentration prior in the policy score")
    channel_multiple: int | None = pydantic.Field(
        None, ge=1, description="kept widths are multiples of this (default: the profile's, else 8)")
    probe: float = pydantic.Field(PROBE_RATIO, gt=0.0, lt=1.0, description="slice ratio used to probe layer sensitivity")
    sharpness: float = pydantic.Field(8.0, ge=0.0, description="layer share ~ KS^-sharpness under `spectrum` allocation")
    max_layer_ratio: float = pydantic.Field(
        0.45, gt=0.0, lt=1.0, description="cap on one layer's ratio under `spectrum` (raised to ratio + 0.05 when lower)")
    repair: Literal["none", "lsq"] = pydantic.Field(
        "none", description="lsq: re-fit each sliced FFN's down projection (and a new bias) in closed form on "
                            "calibration activations (uses data); none: keep the remaining weights as they are")
    repair_damping: float = pydantic.Field(
        DEFAULT_DAMPING, ge=0.0, description="repair=lsq: pull toward the unrepaired weights, relative to the mean "
                                         "activation energy (0: a free least-squares fit)")
    calibration_samples: int = pydantic.Field(32, ge=1, description="documents run for method=activation and repair=lsq")
    calibration_text: str | None = pydantic.Field(
        None, description="method=activation and repair=lsq read this UTF-8 file (one document per line) instead of "
                          "the Lee background corpus")
    seed: int | None = pydantic.Field(None, description="overrides the build seed")

    @pydantic.model_validator(mode="after")
    def _calibration_text_needs_activation(self):
        if self.calibration_text is not None:
            if self.method != "activation" and self.repair != "lsq":
                raise ValueError("calibration_text is read only by method=activation or repair=lsq")
            from edgefold.passes.common.calibration import require_calibration_text

            require_calibration_text(self.calibration_text)
        return self

    def input_files(self) -> list[str]:
        """The policy file and the calibration text, those that are given."""
        return [path for path in (self.policy, self.calibration_text) if path is not None]

    @pydantic.field_validator("layer_ratios")
    @classmethod
    def _ratios_in_range(cls, ratios):
        if ratios is not None and any(not 0.0 <= r < 1.0 for r in ratios.values()):
            raise ValueError("every ratio must be in [0, 1)")
        return ratios


def _explicit_ratios(layer_ratios: dict[str, float] | None, groups) -> list[float] | None:
    """`layer_ratios` in FFN order; every FFN must be named (by group name or layer label)."""
    if layer_ratios is None:
        return None
    known = {g.name for g in groups} | {g.layer_label for g in groups}
    unknown = sorted(set(layer_ratios) - known)
    if unknown:
        raise EdgefoldError(f"slice: layer_ratios names no FFN {unknown[0]!r} (FFNs: {', '.join(g.name for g in groups)})")
    missing = [g.name for g in groups if g.name not in layer_ratios and g.layer_label not in layer_ratios]
    if missing:
        raise EdgefoldError(f"slice: layer_ratios gives no ratio for {', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}: name every FFN, or use ratio")
    return [layer_ratios.get(g.name, layer_ratios.get(g.layer_label)) for g in groups]


@dataclass
class FfnView:
    """The matrices of one FFN, channels first: what ranking and probing read."""

    index: int
    group: object  # analysis FfnGroup
    ffn1: np.ndarray  # first producer rows [channels, hidden] with the input norm scale folded in
    up: np.ndarray  # W_up rows [channels, hidden] (= ffn1's raw rows for a plain FFN)
    down: np.ndarray  # W_down columns [channels, hidden]
    producers: list[np.ndarray]  # every producer's rows, scale folded in
    raw_producers: list[np.ndarray]  # every producer's rows as stored

    @property
    def matrices(self) -> FfnMatrices:
        """The FFN as the shared channel scorers read it."""
        return FfnMatrices(tuple(self.raw_producers), tuple(self.producers), self.up, self.down)

    @property
    def channels(self) -> int:
        """Number of intermediate channels."""
        return self.ffn1.shape[0]

    @property
    def hidden(self) -> int:
        """Width of the FFN's input (columns of FFN1)."""
        return self.ffn1.shape[1]


def _rows(weight: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0).reshape(weight.shape[axis], -1)


def ffn_views(model: ir.Model, groups) -> list[FfnView]:
    """One `FfnView` per FFN group, in order, read from the model's weights."""
    nodes = node_by_name(model)
    views = []
    for index, group in enumerate(groups):
        scale = input_norm_scale(model, group.producers[0], nodes)
        scale = scale.astype(np.float32) if scale is not None else None
        producers, raw = [], []
        for linear in group.producers:
            rows = _rows(array(model, linear.weight), linear.out_axis)
            raw.append(rows)
            producers.append(rows * scale[None, :] if scale is not None else rows)
        up = _rows(array(model, group.up.weight), group.up.out_axis)
        down = _rows(array(model, group.down.weight), group.down.in_axis)
        views.append(FfnView(index, group, producers[0], up, down, producers, raw))
    return views


# --- ranking -------------------------------------------------------------------------------

def random_scores(view: FfnView, seed: int) -> np.ndarray:
    """Random score per channel (the random baseline), reproducible from `seed` and the FFN's index."""
    return np.random.default_rng([seed, view.index]).random(view.channels)


def intermediate_name(view: FfnView, nodes: dict[str, ir.Node]) -> str:
    """The tensor W_down reads: the FFN's intermediate activation h."""
    node = nodes.get(view.group.down.node)
    if node is None or not node.inputs or node.inputs[0] is None:  # x is input 0 of every analysed linear
        raise EdgefoldError(f"slice: cannot find the intermediate activation of {view.group.name}")
    return node.inputs[0].name


def activation_scores(model: ir.Model, views: list[FfnView], model_path, samples: int,
                      text_file: str | None = None) -> tuple[list[np.ndarray], dict]:
    """sqrt(E[h_j^2]) x |W_down[:, j]| per FFN (how much output energy each channel carries on
    real text), and the calibration's stats (samples run, the user's text digest)."""
    from edgefold.passes.common.calibration import channel_mean_squares

    nodes = node_by_name(model)
    names = [intermediate_name(v, nodes) for v in views]
    measured, run = channel_mean_squares(model_path, names, samples, "slice",
                                          "use method=policy (calibration-free)", axis=-1, text_file=text_file)
    return energy_scores(views, names, measured), run.stats()


def intermediate_moments(model: ir.Model, views: list[FfnView], model_path, samples: int,
                         text_file: str | None = None) -> tuple[list[np.ndarray], dict]:
    """E[[h, 1][h, 1]^T] of every FFN's intermediate h (what `repair=lsq` re-fits against), and the
    calibration's stats."""
    from edgefold.passes.common.calibration import input_moments

    nodes = node_by_name(model)
    names = [intermediate_name(v, nodes) for v in views]
    measured, run = input_moments(model_path, names, samples, "slice", "use repair=none (calibration-free)",
                                  text_file=text_file)
    return [measured[name] for name in names], run.stats()


def energy_scores(views: list[FfnView], names: list[str], measured: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The activation ranking from measured mean squares per channel of each FFN's intermediate."""
    scores = []
    for view, name in zip(views, names):
        energy = measured.get(name)
        if energy is None or energy.shape != (view.channels,):
            raise EdgefoldError(f"slice: measured {name} has shape {getattr(energy, 'shape', None)}, "
                                f"expected ({view.channels},)")
        scores.append(np.sqrt(energy) * np.linalg.norm(view.down.astype(np.float64), axis=1))
    return scores


# --- allocation ----------------------------------------------------------------------------

def water_fill(weights: np.ndarray, widths: np.ndarray, budget: float, cap: float) -> np.ndarray:
    """Ratios r_l ~ weights_l with sum(r_l * widths_l) = budget and r_l <= cap."""
    weights = np.asarray(weights, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    ratios = np.zeros_like(weights)
    free = weights > 0
    if budget > cap * widths[free].sum() + 1e-9:
        raise EdgefoldError(f"slice: cannot remove {budget:.3g} of {widths.sum():.0f} channels with at most {cap:.0%} "
                            f"per layer; raise max_ratio or lower ratio")
    for _ in range(len(weights) + 1):
        remaining = budget - (ratios[~free] * widths[~free]).sum()
        if not free.any():
            break
        ratios[free] = weights[free] * remaining / (weights[free] * widths[free]).sum()
        over = free & (ratios > cap)
        if not over.any():
            break
        ratios[over] = cap
        free &= ~over
    return ratios


def round_kept(width: int, ratio: float, multiple: int) -> int:
    """Channels to keep: (1 - ratio) * width rounded to a multiple (at least one multiple)."""
    if ratio <= 0:
        return width
    kept = int(round(width * (1.0 - ratio) / multiple)) * multiple
    return int(min(width, max(multiple, kept)))


def _ffn1_ks(view: FfnView, keep: np.ndarray) -> float:
    return sliced_ks(LayerMatrix(f"ffn.{view.index}", view.ffn1), keep, rescale=False)


# --- the pass ------------------------------------------------------------------------------

def policy_cache_path(hidden: int, config: SliceConfig, seed: int) -> Path:
    """Where the policy for a hidden size and training recipe lives (shared by models)."""
    recipe = {"format": POLICY_FORMAT, "hidden": hidden, "episodes": config.episodes, "seed": seed}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "policies" / f"slice-h{hidden}-{key}.pt"


@register_pass
class SlicePass(GraphPass):
    """`slice`: remove FFN channels ranked by a learned spectrum-preserving policy (PruneNet) or a baseline."""

    name = "slice"
    Config = SliceConfig
    summary = "remove FFN channels ranked by a learned spectrum-preserving policy (PruneNet), no calibration data"

    def __init__(self, config: SliceConfig | None = None):
        super().__init__(config)
        # Timings and the policy's origin for benchmarks; not in stats (the manifest is deterministic).
        self.timings: dict[str, float] = {}
        self.policy_trained = False

    def run(self, model: ir.Model, context: PassContext) -> PassOutcome:
        """Remove the lowest-ranked FFN channels in place;
        stats give the widths kept per FFN, their spectrum (KS) distances and the ratios achieved."""
        from threadpoolctl import threadpool_limits

        # Single-threaded BLAS: spectra (and so KS values, allocations, widths) bit for bit the same.
        with threadpool_limits(1):
            return self._run(model, context)

    def _run(self, model: ir.Model, context: PassContext) -> PassOutcome:
        config: SliceConfig = self.config  # type: ignore[assignment]
        seed = context.seed if config.seed is None else config.seed
        groups = self._groups(model, context)
        explicit = _explicit_ratios(config.layer_ratios, groups)
        multiple = config.channel_multiple or getattr(context.profile, "channel_multiple", None) or 8
        start = time.perf_counter()
        views = ffn_views(model, groups)
        moments, calibration_stats = None, {}
        if config.repair == "lsq":  # one calibration run serves the repair and the activation ranking
            with progress.step(f"slice: measuring {len(views)} FFN intermediates for repair=lsq"):
                moments, calibration_stats = intermediate_moments(model, views, context.model_path,
                                                                  config.calibration_samples, config.calibration_text)
        if config.method == "activation" and moments is not None:
            nodes = node_by_name(model)
            names = [intermediate_name(v, nodes) for v in views]
            scores = energy_scores(views, names, {n: np.diag(m)[:-1] for n, m in zip(names, moments)})
            policy_stats = {}
        elif config.method == "activation":
            scores, policy_stats = activation_scores(model, views, context.model_path, config.calibration_samples,
                                                     config.calibration_text)
        else:
            scores, policy_stats = self._scores(views, config, seed)
        kept = self._kept_widths(views, scores, config, multiple)
        self.timings["rank_and_allocate_s"] = round(time.perf_counter() - start, 3)

        start = time.perf_counter()
        distances, layers = [], []
        for view, score, keep_count in zip(views, scores, kept):
            width = view.channels
            if keep_count < width:
                keep = top_rows(score, keep_count)
                distances.append(_ffn1_ks(view, keep))
                producer, consumer = selection_maps(keep, width)
                remap_ffn(model, view.group, producer, consumer)
            else:
                distances.append(0.0)
            layers.append({"ffn": view.group.name, "width": width, "kept": int(keep_count),
                           "ks": round(distances[-1], 6)})
            if moments is not None and keep_count < width:
                layers[-1]["lsq_error_ratio"] = repair_consumer(model, view.group.consumer, view.down, np.sort(keep),
                                                                moments[view.index], config.repair_damping)
        self.timings["slice_s"] = round(time.perf_counter() - start, 3)
        before = sum(v.channels for v in views)
        after = sum(int(k) for k in kept)
        ffn_params_before = sum(v.channels * v.hidden * (len(v.producers) + 1) for v in views)
        ffn_params_after = sum(k * v.hidden * (len(v.producers) + 1) for v, k in zip(views, kept))
        stats = {
            "method": config.method,
            "allocation": "explicit" if explicit is not None else config.allocation,
            "target_ratio": config.ratio if explicit is None else None,
            "channels_before": before,
            "channels_after": after,
            "channel_ratio": round(1 - after / before, 6),
            "ffn_param_ratio": round(1 - ffn_params_after / ffn_params_before, 6),
            "multiple": multiple,
            "mean_ks": round(float(np.mean(distances)), 6),
            "layers": layers,
            **policy_stats,
        }
        if config.repair == "lsq":
            stats.update(repair="lsq", repair_damping=config.repair_damping, **calibration_stats)
        self._report(stats, views, config, multiple, explicit)
        return PassOutcome(model, stats)

    @staticmethod
    def _report(stats: dict, views: list[FfnView], config: SliceConfig, multiple: int,
                explicit: list[float] | None) -> None:
        """Channels removed, and a warning when rounding kept widths moved the ratio."""
        stats["removed"] = stats["channels_before"] - stats["channels_after"]
        widths = [v.channels for v in views]
        if stats["removed"] == 0:
            shown = ", ".join(str(w) for w in sorted(set(widths)))
            asked = f"ratio {config.ratio:g}" if explicit is None else f"layer_ratios {config.layer_ratios}"
            nothing_removed(stats, "slice", f"every FFN keeps all its channels (widths {shown}, {asked}, "
                                            f"kept widths are multiples of {multiple})")
            return
        requested = config.ratio if explicit is None else float(np.dot(explicit, widths) / sum(widths))
        warn_if_rounded("slice", requested, stats["channel_ratio"], "the FFN channels")

    # -- steps --------------------------------------------------------------------------

    @staticmethod
    def _groups(model: ir.Model, context: PassContext):
        analysis = context.analysis
        if analysis is None:
            from edgefold.analysis import analyse

            analysis = analyse(model)
        groups = list(getattr(analysis, "ffns", []) or [])
        if not groups:
            raise EdgefoldError("slice: the model has no FFN blocks to slice (see `edgefold inspect`)")
        return groups

    def _scores(self, views: list[FfnView], config: SliceConfig, seed: int) -> tuple[list[np.ndarray], dict]:
        if config.method == "magnitude":
            return [score_channels("up-norm", v.matrices) for v in views], {}
        if config.method == "random":
            return [random_scores(v, seed) for v in views], {}
        start = time.perf_counter()
        hidden_sizes = sorted({v.hidden for v in views})
        if config.policy is not None and len(hidden_sizes) > 1:
            raise EdgefoldError(f"slice: one policy file cannot serve FFNs of hidden sizes {hidden_sizes}")
        policies, stats = {}, {"policy_files": []}
        for hidden in hidden_sizes:
            path = Path(config.policy) if config.policy is not None else policy_cache_path(hidden, config, seed)
            policy, meta = self._policy(path, [v for v in views if v.hidden == hidden], config, seed)
            policies[hidden] = policy
            stats["policy_files"].append({"hidden": hidden, "sha256": file_digest(path),
                                          "episodes": meta.get("episodes"), "trained_on": meta.get("trained_on")})
        self.timings["policy_s"] = round(time.perf_counter() - start, 3)
        scores = []
        for view in views:
            learned = policies[view.hidden].scores(view.ffn1)
            logit = np.log(learned.clip(1e-12)) - np.log1p(-learned.clip(max=1 - 1e-12))
            prior = score_channels("concentration", view.matrices)
            scores.append(standardise(logit) + config.prior * standardise(prior))
        stats["prior"] = config.prior
        return scores, stats

    def _policy(self, path: Path, views: list[FfnView], config: SliceConfig, seed: int):
        hidden = views[0].hidden
        if path.exists():
            progress.info(f"    slice: reusing policy {path} (no training)")
            return load_policy(path, hidden=hidden)
        progress.info(f"    slice: training a policy for hidden size {hidden} ({config.episodes} episodes, "
                      f"at most {config.train_seconds:g}s) -> {path}")
        layers = [LayerMatrix(v.group.name, v.ffn1) for v in views]
        policy, log = train_policy(layers, seed=seed, episodes=config.episodes,
                                   train_seconds=config.train_seconds, rescale=False)
        self.policy_trained = True
        self.timings["policy_train_s"] = log.seconds
        meta = {"episodes": log.episodes, "stopped_by_time": log.stopped_by_time, "seed": seed,
                "trained_on": _model_label(views),
                "mean_ks_first": round(log.mean_ks_first, 6), "mean_ks_last": round(log.mean_ks_last, 6)}
        save_policy(policy, path, meta=meta)
        return policy, meta

    def _kept_widths(self, views: list[FfnView], scores: list[np.ndarray], config: SliceConfig,
                     multiple: int) -> list[int]:
        widths = np.array([v.channels for v in views])
        explicit = _explicit_ratios(config.layer_ratios, [v.group for v in views])
        if explicit is not None:
            ratios = np.asarray(explicit, dtype=np.float64)
        elif config.allocation == "uniform" or config.ratio == 0:
            ratios = np.full(len(views), config.ratio)
        else:
            ratios = self._spectrum_ratios(views, scores, config, widths)
        return [round_kept(int(w), float(r), multiple) for w, r in zip(widths, ratios)]

    @staticmethod
    def _spectrum_ratios(views, scores, config: SliceConfig, widths: np.ndarray) -> np.ndarray:
        """Share the global budget by how much each layer's FFN1 spectrum moves when probed."""
        probe = np.array([_ffn1_ks(v, top_rows(s, max(1, round(v.channels * (1 - config.probe)))))
                          for v, s in zip(views, scores)])
        # No spectrum moves when nothing can be probed away (one-channel FFNs): share evenly.
        weights = np.power(np.clip(probe / probe.mean(), 1e-6, None), -config.sharpness) if probe.mean() > 0 \
            else np.ones(len(views))
        budget = config.ratio * widths.sum()
        return water_fill(weights, widths, budget, feasible_cap(config.max_layer_ratio, config.ratio))


def _model_label(views: list[FfnView]) -> str:
    """A short fingerprint of the FFN1 matrices a policy was trained on."""
    digest = hashlib.sha256()
    for view in views:
        digest.update(np.ascontiguousarray(view.ffn1).tobytes())
    return f"{len(views)} FFNs, weights sha256 {digest.hexdigest()[:12]}"
