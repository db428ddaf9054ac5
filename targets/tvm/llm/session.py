"""Run a compiled LLM artifact on this machine: decode, prefill, greedy generation, timing.

The libraries keep no state of their own: the KV cache is a buffer this session owns
and passes to every call (the library writes the new keys/values into it in place), and
the weights are the artifact's blob, loaded once and shared by the decode and prefill
libraries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefold.errors import EdgefoldError


@dataclass
class GenerationResult:
    """A generation from a prompt: prompt ids, generated ids, prefill ms and per-token decode ms."""

    prompt: list[int]
    tokens: list[int]  # generated ids, in order
    prefill_ms: float
    decode_ms: list[float] = field(default_factory=list)  # per generated token after the first

    @property
    def tokens_per_s(self) -> float:
        """Decode speed from the median step time; 0 when no decode step was timed."""
        return 1000.0 / float(np.median(self.decode_ms)) if self.decode_ms else 0.0


class LlmSession:
    """One conversation's state over an artifact's LLM libraries."""

    def __init__(self, folder: Path, entries: list[dict]):
        import tvm
        from tvm import relax

        from edgefold.targets.tvm.weights import read_weights

        self._tvm = tvm
        decode = [e for e in entries if e.get("function") == "decode"]
        if not decode:
            raise EdgefoldError(f"{folder}: the artifact has no LLM decode library")
        self.entry = decode[0]
        self.slots = int(self.entry["kv_cache"])
        [(_, blob)] = read_weights(Path(folder) / self.entry["weights"])
        self.weights = tvm.runtime.tensor(np.ascontiguousarray(blob))
        self.cache = tvm.runtime.tensor(np.zeros(int(self.entry["cache_len"]), np.float32))
        self.decode_vm = relax.VirtualMachine(tvm.runtime.load_module(str(Path(folder) / self.entry["library"])),
                                              tvm.cpu())
        self.decode_fn = self.decode_vm["decode"]
        self.prefill_fns: dict[int, object] = {}
        for entry in entries:
            if entry.get("function") == "prefill":
                vm = relax.VirtualMachine(tvm.runtime.load_module(str(Path(folder) / entry["library"])), tvm.cpu())
                self.prefill_fns[int(entry["tokens"])] = vm["prefill"]
        self.position = 0

    def reset(self) -> None:
        """Start over: an empty KV cache at position 0."""
        self.cache = self._tvm.runtime.tensor(np.zeros(int(self.entry["cache_len"]), np.float32))
        self.position = 0

    def _tensor(self, array) -> object:
        return self._tvm.runtime.tensor(np.ascontiguousarray(array))

    def decode(self, token: int) -> np.ndarray:
        """Logits after feeding `token` at the current position (which then advances)."""
        if self.position >= self.slots:
            raise EdgefoldError(f"the KV cache is full ({self.slots} tokens): reset the session")
        logits = self.decode_fn(self._tensor(np.array([[token]], np.int64)), self._tensor(np.array([self.position], np.int64)),
                                self.cache, self.weights).numpy()
        self.position += 1
        return logits

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Logits after the last of `tokens`: through the largest prefill library in chunks, or
        token by token when the artifact has none."""
        if self.position + len(tokens) > self.slots:
            raise EdgefoldError(f"{len(tokens)} prompt tokens do not fit the {self.slots}-slot KV cache")
        if not tokens:
            raise EdgefoldError("an empty prompt")
        # A short prompt costs less as decode steps than as a whole padded prefill bucket
        # (128-token prefill ~ 25 decode steps on a 2-core CPU).
        if not self.prefill_fns or len(tokens) < max(self.prefill_fns) // 8:
            for token in tokens:
                logits = self.decode(token)
            return logits
        bucket = max(self.prefill_fns)
        fn = self.prefill_fns[bucket]
        logits = None
        for start in range(0, len(tokens), bucket):
            chunk = tokens[start:start + bucket]
            ids = np.zeros((1, bucket), np.int64)
            ids[0, :len(chunk)] = chunk
            logits = fn(self._tensor(ids), self._tensor(np.array([self.position], np.int64)),
                        self._tensor(np.array([len(chunk)], np.int64)), self.cache, self.weights).numpy()
            self.position += len(chunk)
        return logits

    def generate(self, prompt: list[int], max_new_tokens: int, *, stop: set[int] | None = None,
                 sampler=None, on_token=None) -> GenerationResult:
        """Greedy (or `sampler(logits) -> id`) continuation of `prompt`."""
        self.reset()
        start = time.perf_counter()
        logits = self.prefill(list(prompt))
        result = GenerationResult(list(prompt), [], (time.perf_counter() - start) * 1e3)
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits)) if sampler is None else int(sampler(logits))
            result.tokens.append(token)
            if on_token is not None:
                on_token(token)
            if (stop and token in stop) or self.position >= self.slots:
                break
            step = time.perf_counter()
            logits = self.decode(token)
            result.decode_ms.append((time.perf_counter() - step) * 1e3)
        return result

    def decode_latency_ms(self, context: int, steps: int = 16, token: int = 1) -> list[float]:
        """ms of each of `steps` decode calls starting at position `context` (cache filled up to it)."""
        self.reset()
        self.position = min(context, self.slots - steps)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.decode(token)
            times.append((time.perf_counter() - start) * 1e3)
        return times

    def prefill_latency_ms(self, tokens: int, repeats: int = 3) -> list[float]:
        """ms of each of `repeats` prefills of `tokens` tokens; [] when no prefill library holds that many."""
        bucket = max(self.prefill_fns) if self.prefill_fns else 0
        if bucket < tokens:
            return []
        times = []
        for _ in range(repeats):
            self.reset()
            start = time.perf_counter()
            self.prefill([1] * tokens)
            times.append((time.perf_counter() - start) * 1e3)
        return times
