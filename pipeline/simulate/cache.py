"""A DRAM cache of weight columns for one matrix group of one MLP layer.

A "column" is what one channel costs to load: for an MLP input channel, its row of
W_gate and W_up (both are needed together); for an intermediate channel, its row of
W_down. Each (layer, group) owns a fixed share of the DRAM budget, `capacity` columns,
so a layer's cache state depends only on that layer's history (which is what lets the
simulator run the model layer by layer and still know the cache at every token).

A token's request is looked up as one batch: hits are the requested columns already
resident; the misses are read from flash and then evict the lowest-ranked resident
columns that this request does not need. When a request is larger than the cache, its
highest-priority columns (largest score) stay. Ranking:
- lru: most recent use first (ties within a token by score);
- lfu: most uses first, then recency (keeps the "hot" channels that magnitude-based
  pruning keeps picking).

Both rankings only ever raise a column's rank when it is requested, so an evicted
column can never outrank the resident ones again until it is requested. Hence the
cache after token t is simply the top-`capacity` columns by rank among all columns
ever requested, which `replay` evaluates for a whole window of tokens at once; `access`
is the same thing one token at a time (DIP-CA needs the state between tokens).
"""

from __future__ import annotations

import numpy as np

POLICIES = ("lru", "lfu")
# LFU rank = uses * _USE_WEIGHT + recency; recency stays below this for any real trace.
_USE_WEIGHT = 1e7


def priority_fraction(scores: np.ndarray) -> np.ndarray:
    """Scores scaled into [0, 0.5] per token: the tie-break inside one token's recency."""
    peak = scores.max(axis=-1, keepdims=True)
    return (0.5 * scores / np.where(peak > 0, peak, 1)).astype(np.float64)


class ColumnCache:
    """DRAM cache of up to `capacity` of one MLP weight group's `width` columns, evicting by `policy` (lru or lfu)."""

    def __init__(self, width: int, capacity: int, policy: str = "lru"):
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r} (known: {', '.join(POLICIES)})")
        self.width = width
        self.capacity = max(0, min(int(capacity), width))
        self.policy = policy
        self.resident = np.zeros(width, dtype=bool)
        self._recency = np.full(width, -1.0)  # token index + priority fraction; -1 = never requested
        self._uses = np.zeros(width)
        self._resident_count = 0
        self._clock = 0

    def access(self, request: np.ndarray, fraction: np.ndarray | None = None) -> int:
        """Serve one token's request (bool [width]); returns how many columns hit.

        `fraction` ([width], in [0, 0.5]) orders the columns of this one request
        (see `priority_fraction`); without it they tie.
        """
        resident = self.resident
        hits = int(np.count_nonzero(request & resident))
        stamp = self._clock + fraction if fraction is not None else float(self._clock)
        self._clock += 1
        np.copyto(self._recency, stamp, where=request)
        if self.policy == "lfu":
            self._uses += request
        misses = int(np.count_nonzero(request)) - hits
        if misses == 0 or self.capacity == 0:
            return hits
        if self._resident_count + misses <= self.capacity:
            resident |= request
            self._resident_count += misses
            return hits
        # Full: rank resident + requested columns and keep the best `capacity`.
        candidates = np.flatnonzero(resident | request)
        rank = self._recency[candidates]
        if self.policy == "lfu":
            rank = self._uses[candidates] * _USE_WEIGHT + rank
        drop = len(candidates) - self.capacity
        resident[:] = False
        resident[candidates[np.argpartition(rank, drop)[drop:]]] = True
        self._resident_count = self.capacity
        return hits

    def replay(self, requests: np.ndarray, fractions: np.ndarray | None = None) -> np.ndarray:
        """`access` for every row of `requests` ([tokens, width]) at once; hits per token."""
        tokens = len(requests)
        if tokens == 0:
            return np.zeros(0, dtype=np.int64)
        clock = self._clock + np.arange(tokens, dtype=np.float64)[:, None]
        stamps = np.where(requests, clock + (fractions if fractions is not None else 0.0), -1.0)
        recency = np.maximum.accumulate(np.vstack([self._recency[None], stamps]), axis=0)[1:]
        rank = recency
        uses = None
        if self.policy == "lfu":
            uses = self._uses + np.cumsum(requests, axis=0, dtype=np.float64)
            rank = uses * _USE_WEIGHT + recency
        ever = recency >= 0
        if self.capacity == 0:
            after = np.zeros(requests.shape, dtype=bool)
        elif self.capacity >= self.width:
            after = ever
        else:
            rank = np.where(ever, rank, -np.inf)
            top = np.argpartition(rank, self.width - self.capacity, axis=1)[:, self.width - self.capacity:]
            after = np.zeros(requests.shape, dtype=bool)
            np.put_along_axis(after, top, True, axis=1)
            after &= ever
        before = np.vstack([self.resident[None], after[:-1]])
        hits = np.count_nonzero(requests & before, axis=1)
        self._recency = recency[-1].copy()
        if uses is not None:
            self._uses = uses[-1].copy()
        self.resident = after[-1].copy()
        self._resident_count = int(np.count_nonzero(self.resident))
        self._clock += tokens
        return hits
