"""`simulate()`: every method over the same text, priced on every profile.

The cache behaviour depends on the model, the text, the method and the cache size;
the profiles' bandwidths only turn bytes into seconds. So the model is replayed once
per (cache size, method) and each replay is priced on every profile that shares that
cache size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.simulate.cache import POLICIES
from edgefold.simulate.engine import Method, MethodRun, run_method
from edgefold.simulate.layout import WeightLayout, token_bytes, weight_layout


@dataclass
class SimulationResult:
    """Everything one `simulate()` run found: the weight layout, the profiles, one row per method/policy/profile,
    and per-token series."""

    model: str
    tokens: int
    window: int
    layout: WeightLayout
    profiles: dict[str, dict[str, Any]]  # name -> bandwidths, kinds, cache fraction
    rows: list[dict[str, Any]]  # one per (method, policy, profile)
    series: dict[str, np.ndarray] = field(default_factory=dict)  # per-token arrays, "label|policy|what"

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data: layout figures, profiles and rows (without the per-token series)."""
        layout = self.layout
        return {
            "model": self.model, "tokens": self.tokens, "window": self.window,
            "bytes_per_weight": layout.bytes_per_weight, "mlp_bytes": int(layout.mlp_bytes),
            "resident_bytes": layout.resident_bytes, "non_mlp_read_bytes_per_token": layout.read_bytes,
            "mlp_layers": len(layout.mlps), "profiles": self.profiles, "rows": self.rows,
        }


def default_methods(sparsities=(0.25, 0.5, 0.75), gammas=(0.1, 0.2, 0.5), ca_sparsities=None,
                    policies=("lru",)) -> list[Method]:
    """Methods to compare: dense, DIP at each sparsity, and DIP-CA at each sparsity (default: the same ones),
    gamma and policy; sparsity 0 is left out."""
    methods = [Method("dense")] + [Method("dip", s) for s in sparsities if s > 0]
    for s in (sparsities if ca_sparsities is None else ca_sparsities):
        if s > 0:
            methods += [Method("dip-ca", s, g, p) for p in policies for g in gammas]
    return methods


def simulate(model: str | os.PathLike, profiles: list, *, methods: list[Method] | None = None,
             policies: tuple[str, ...] = ("lru",), tokens: int = 8192, window: int = 512,
             dram_budget_mb: float | None = None, cache_fraction: float | None = None,
             bytes_per_weight: float | None = None, threads: int | None = None) -> SimulationResult:
    """Replay `tokens` Wikipedia tokens through `model` for each method and profile."""
    from edgefold.analysis import analyse
    from edgefold.evaluate.perplexity import wikipedia_tokens
    from edgefold.models.metadata import TOKENIZER_KEY
    from edgefold.simulate.segments import SegmentedModel
    from edgefold.targets.profiles import DeviceProfile, load_profile

    policies = tuple(policies)
    for policy in policies:
        if policy not in POLICIES:
            raise EdgefoldError(f"unknown cache policy {policy!r} (known: {', '.join(POLICIES)})")
    if window < 2 or tokens < window:
        raise EdgefoldError(f"simulate needs window >= 2 and tokens >= window (got tokens={tokens}, window={window})")
    if cache_fraction is not None and not 0.0 <= cache_fraction <= 1.0:
        raise EdgefoldError(f"cache fraction must be in [0, 1]; got {cache_fraction}")
    if bytes_per_weight is not None and bytes_per_weight <= 0:
        raise EdgefoldError(f"bytes per weight must be > 0; got {bytes_per_weight}")
    profiles = [p if isinstance(p, DeviceProfile) else load_profile(p) for p in profiles]
    if not profiles:
        raise EdgefoldError("simulate needs at least one device profile")
    for profile in profiles:
        if profile.flash is None:
            raise EdgefoldError(f"profile {profile.name!r} has no flash memory; simulate needs a phone-like profile "
                                "(e.g. mobile-arm64)")
    methods = methods or default_methods(policies=policies)

    from edgefold.export import model_file

    path = model_file(model)
    graph = onnx_io.load(path)
    groups = list(analyse(graph).ffns)
    if not groups:
        raise EdgefoldError(f"{path}: no MLP blocks found; DIP simulation needs gated (SwiGLU) or plain MLPs")
    tokenizer = onnx_io.metadata(path).get(TOKENIZER_KEY)
    if not tokenizer:
        raise EdgefoldError(f"{path}: no tokenizer recorded ({TOKENIZER_KEY}); simulate needs a causal LM")
    layout = weight_layout(graph, groups, bytes_per_weight)
    fractions = {p.name: _cache_fraction(p, layout, dram_budget_mb, cache_fraction) for p in profiles}
    del graph
    with progress.step("cutting the graph at every MLP"):
        segmented = SegmentedModel(path, groups, threads=threads)
    windows = wikipedia_tokens(tokenizer, (tokens // window) * window).reshape(-1, window)

    info = {p.name: {"flash": p.flash.kind, "flash_gbps": p.flash.bandwidth_gbps, "dram": p.dram.kind,
                     "dram_gbps": p.dram.bandwidth_gbps, "cache_fraction": round(fractions[p.name], 6),
                     "dram_budget_mb": round((layout.resident_bytes + fractions[p.name] * layout.mlp_bytes) / 1e6, 3)}
            for p in profiles}
    rows: list[dict[str, Any]] = []
    series: dict[str, np.ndarray] = {}
    for fraction in sorted(set(fractions.values())):
        sharing = [p for p in profiles if fractions[p.name] == fraction]
        for method in methods:
            run = run_method(segmented, windows, method, cache_fraction=fraction, policies=policies)
            rows += _price(run, layout, sharing, fraction, series)
    _add_speedups(rows)
    return SimulationResult(str(model), int(windows.size), window, layout, info, rows, series)


def _cache_fraction(profile, layout: WeightLayout, budget_mb, fraction) -> float:
    if fraction is not None:
        return float(fraction)
    if budget_mb is not None:
        return layout.cache_fraction(budget_mb * 1e6)
    if profile.dram.weight_budget_gb is None:
        raise EdgefoldError(f"profile {profile.name!r} sets no dram.weight_budget_gb; "
                            "pass a DRAM budget (--dram-budget-mb) or a cache fraction")
    return layout.cache_fraction(profile.dram.weight_budget_gb * 1e9)


def _price(run: MethodRun, layout: WeightLayout, profiles, fraction: float, series) -> list[dict[str, Any]]:
    rows = []
    method = run.method
    for policy, counts in run.counts.items():
        traffic = token_bytes(layout, counts)
        key = f"{method.label}|{policy}|{fraction:.6g}"
        series[f"{key}|hit_rate"] = traffic.hit_rate.astype(np.float32)
        series[f"{key}|flash_bytes"] = traffic.flash.astype(np.float64)
        series[f"{key}|dram_bytes"] = traffic.dram.astype(np.float64)
        for profile in profiles:
            flash, dram = profile.flash.bandwidth_gbps, profile.dram.bandwidth_gbps
            seconds = traffic.seconds(flash, dram)
            series[f"{key}|seconds@{profile.name}"] = seconds.astype(np.float64)
            rows.append({
                "method": method.label, "kind": method.kind, "sparsity": method.sparsity,
                "gamma": method.gamma if method.kind == "dip-ca" else None, "policy": policy,
                "profile": profile.name, "cache_fraction": round(fraction, 6),
                "perplexity": run.perplexity,
                "hit_rate": float(1.0 - traffic.flash.sum() / traffic.requested.sum()),
                "mlp_read_fraction": float(traffic.requested.mean() / layout.mlp_bytes),
                "flash_mb_per_token": float(traffic.flash.mean() / 1e6),
                "dram_mb_per_token": float(traffic.dram.mean() / 1e6),
                "tokens_per_s": traffic.tokens_per_second(flash, dram),
                "ms_per_token_p50": float(np.percentile(seconds, 50) * 1e3),
                "ms_per_token_p90": float(np.percentile(seconds, 90) * 1e3),
                # Bounds for this profile: everything resident, and no cache at all.
                "all_in_dram_tokens_per_s": float(1.0 / ((layout.read_bytes + layout.mlp_bytes) / (dram * 1e9))),
            })
    return rows


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    dense = {(r["profile"], r["policy"], r["cache_fraction"]): r["tokens_per_s"] for r in rows if r["kind"] == "dense"}
    for row in rows:
        base = dense.get((row["profile"], row["policy"], row["cache_fraction"]))
        row["speedup_vs_dense"] = row["tokens_per_s"] / base if base else None
