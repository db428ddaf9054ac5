"""Replay real text through the model with DIP / DIP-CA masks and a DRAM column cache.

For each MLP (one layer, one window of tokens) the masker picks the channels every
token keeps, for the input x and then for the intermediate h, feeds the cache with
those requests in token order, and returns the masked values to the graph, so later
layers see the activations the sparse model really produces. Plain DIP and dense
masks do not depend on the cache: they are computed for the whole window at once, and
any number of caches (policies) replay them window by window. DIP-CA's mask needs the
cache state after the previous token, so it walks the tokens one by one (each step
vectorised over channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edgefold import progress
from edgefold.errors import EdgefoldError
from edgefold.simulate.cache import POLICIES, ColumnCache, priority_fraction
from edgefold.passes.dip import keep_count
from edgefold.simulate.masking import cache_weight, topk_mask

MethodKind = Literal["dense", "dip", "dip-ca"]


@dataclass(frozen=True)
class Method:
    """One way to run the MLPs: dense, DIP at `sparsity`, or DIP-CA at `sparsity` with cache weight `gamma`
    (scored on the `policy` cache)."""

    kind: MethodKind
    sparsity: float = 0.0
    gamma: float = 1.0
    policy: str = "lru"  # the cache DIP-CA's score reads (dense/DIP: every policy observes)

    def __post_init__(self):
        if self.kind not in ("dense", "dip", "dip-ca"):
            raise EdgefoldError(f"unknown method {self.kind!r} (dense, dip, dip-ca)")
        if self.kind == "dense" and self.sparsity != 0:
            raise EdgefoldError("dense means sparsity 0")
        if not 0.0 <= self.gamma <= 1.0:
            raise EdgefoldError(f"gamma must be in [0, 1]; got {self.gamma}")
        if self.policy not in POLICIES:
            raise EdgefoldError(f"unknown cache policy {self.policy!r} (known: {', '.join(POLICIES)})")
        keep_count(2, self.sparsity)  # validates the range

    @property
    def label(self) -> str:
        """Name for tables and plots, e.g. "dense", "DIP 50%", "DIP-CA 50% g=0.2"."""
        if self.kind == "dense":
            return "dense"
        if self.kind == "dip":
            return f"DIP {self.sparsity:.0%}"
        return f"DIP-CA {self.sparsity:.0%} g={self.gamma:g}"


@dataclass
class Counts:
    """Columns requested and hit, per token and layer ([tokens, layers] int32)."""

    request_in: np.ndarray
    hit_in: np.ndarray
    request_mid: np.ndarray
    hit_mid: np.ndarray

    @classmethod
    def zeros(cls, tokens: int, layers: int) -> "Counts":
        """All-zero counts for `tokens` tokens and `layers` MLP layers."""
        return cls(*(np.zeros((tokens, layers), dtype=np.int32) for _ in range(4)))


@dataclass
class MethodRun:
    """One method's replay: its perplexity, and the column requests and hits under each cache policy."""

    method: Method
    perplexity: float
    counts: dict[str, Counts] = field(default_factory=dict)  # by cache policy


class Masker:
    """The mask callback of SegmentedModel.run: `(layer, group, values) -> masked values`,
    group 0 the MLP input x ([tokens, hidden]), group 1 the intermediate h."""

    def __init__(self, widths: list[tuple[int, int]], method: Method, cache_fraction: float,
                 policies: tuple[str, ...], total_tokens: int):
        self.method = method
        policies = (method.policy,) if method.kind == "dip-ca" else tuple(policies)
        self.caches = {
            p: [[ColumnCache(width, int(cache_fraction * width), p) for width in pair] for pair in widths]
            for p in policies
        }
        self.counts = {p: Counts.zeros(total_tokens, len(widths)) for p in policies}
        self.keep = [[keep_count(width, method.sparsity) for width in pair] for pair in widths]
        self.cursor = [[0, 0] for _ in widths]

    def __call__(self, layer: int, group: int, values: np.ndarray) -> np.ndarray:
        start = self.cursor[layer][group]
        self.cursor[layer][group] += len(values)
        return self._select(layer, group, values, slice(start, start + len(values)))

    def _select(self, layer: int, group: int, values: np.ndarray, rows: slice) -> np.ndarray:
        k = self.keep[layer][group]
        # Ranking by |x| (c + gamma (1 - c)): the paper's / max|x| is one positive number
        # per token and cannot change a top-K, so it is left out (gamma = 1 is then |x|
        # exactly, bit for bit plain DIP's score).
        magnitude = np.abs(values)
        if self.method.kind == "dip-ca" and k < values.shape[1]:
            mask = self._cache_aware(layer, group, magnitude, k, rows)
        else:
            mask = topk_mask(magnitude, k)
            fractions = priority_fraction(magnitude)
            for policy, caches in self.caches.items():
                hits = caches[layer][group].replay(mask, fractions)
                self._record(policy, layer, group, rows, k, hits)
        return np.where(mask, values, 0).astype(values.dtype) if k < values.shape[1] else values

    def _cache_aware(self, layer: int, group: int, magnitude: np.ndarray, k: int, rows: slice) -> np.ndarray:
        """Token by token: the score needs the cache state the previous token left."""
        policy, gamma = self.method.policy, self.method.gamma
        cache = self.caches[policy][layer][group]
        mask = np.empty(magnitude.shape, dtype=bool)
        hits = np.empty(len(magnitude), dtype=np.int64)
        for t in range(len(magnitude)):
            scores = magnitude[t] * cache_weight(cache.resident, gamma, magnitude.dtype.type)
            mask[t] = topk_mask(scores, k)
            hits[t] = cache.access(mask[t], priority_fraction(scores))
        self._record(policy, layer, group, rows, k, hits)
        return mask

    def _record(self, policy: str, layer: int, group: int, rows: slice, k: int, hits: np.ndarray) -> None:
        counts = self.counts[policy]
        request, hit = (counts.request_in, counts.hit_in) if group == 0 else (counts.request_mid, counts.hit_mid)
        request[rows, layer] = k
        hit[rows, layer] = hits


def run_method(model, windows: np.ndarray, method: Method, *, cache_fraction: float,
               policies: tuple[str, ...] = ("lru",)) -> MethodRun:
    """Perplexity and cache counts of `method` over `windows` [n_windows, window] of token ids.

    Windows are scored independently (the evaluation protocol) but the caches carry on
    from one window to the next, as on a device reading one long text.
    """
    from edgefold.evaluate.perplexity import chunk_nll

    masker = Masker(model.widths, method, cache_fraction, policies, windows.size)
    total, count = 0.0, 0
    for ids in progress.track(list(windows), f"simulate {method.label}"):
        nll = _window_nll(model, masker, ids, chunk_nll)
        total += float(nll.sum())
        count += nll.size
    return MethodRun(method, float(np.exp(total / count)), masker.counts)


def _window_nll(model, masker: Masker, ids: np.ndarray, chunk_nll) -> np.ndarray:
    feeds = {"input_ids": ids[None, :]}
    if "attention_mask" in model.input_names:
        feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
    if "position_ids" in model.input_names:
        feeds["position_ids"] = np.arange(ids.size, dtype=np.int64)[None, :]
    logits = model.run(feeds, masker)[model.output_names[0]]
    return chunk_nll(logits[0], ids)

