"""The timing protocol every anchor (and the edgefold rows) follows, in one place.

Standard library only: this module is imported by the runtime scripts inside
`.venv-bench` (which has no edgefold) and by `rows.py` in the main venv.

- prompt: the first PROMPT_TOKENS token ids of the project's Wikipedia evaluation text
  (`edgefold.evaluate.perplexity.wikipedia_tokens("smollm2-135m", 128)`), stored by
  `prepare.py` in `<anchor dir>/prompt.json`;
- prefill-128 ms: the time to process those 128 tokens from a fresh state (median of
  `runs` >= MIN_RUNS runs, after one untimed warm-up run);
- decode ms/token: the median time of one greedy step (one token in, its logits, argmax)
  over DECODE_STEPS steps after that prefill (context 128..160), pooled over the runs;
  tokens/s = 1000 / decode ms;
- THREADS threads, batch 1, greedy, no sampling.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

THREADS = 2
PROMPT_TOKENS = 128
DECODE_STEPS = 32
MIN_RUNS = 5
FIRST_TOKENS = 8  # greedy tokens shown as text in the report
MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Same rule as `edgefold.atomic.cache_root()` (EDGEFOLD_CACHE, else ~/.cache/edgefold)."""
    root = os.environ.get("EDGEFOLD_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgefold"


def anchor_dir() -> Path:
    """Where prepare.py writes the anchor models: $EDGEFOLD_CACHE/bench-anchors."""
    return cache_root() / "bench-anchors"


def prompt_path() -> Path:
    return anchor_dir() / "prompt.json"


def hf_dir() -> Path:
    return anchor_dir() / "hf"


def load_prompt() -> dict[str, Any]:
    """{"input_ids": [128 ints], "reference_greedy": [...], "params": int, ...}."""
    data = json.loads(prompt_path().read_text())
    if len(data["input_ids"]) != PROMPT_TOKENS:
        raise ValueError(f"{prompt_path()} holds {len(data['input_ids'])} tokens, not {PROMPT_TOKENS}")
    return data


def runs_for(repeats: int) -> int:
    return max(MIN_RUNS, int(repeats))


def measure(prefill: Callable[[], int], step: Callable[[int], int], runs: int,
            reset: Callable[[], None] | None = None, clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Run the protocol on one runtime.

    `reset()` (untimed) gives a fresh state (an empty KV cache);
    `prefill()` processes the prompt and returns the greedy next token;
    `step(token)` feeds one token and returns the greedy next token. One untimed warm-up run,
    then `runs` timed runs. Returns prefill/decode medians and the greedy token ids of the
    last run (1 from the prefill + DECODE_STEPS from the steps).
    """
    import time

    clock = clock or time.perf_counter
    prefill_ms: list[float] = []
    step_ms: list[float] = []
    tokens: list[int] = []
    for run in range(runs + 1):
        if reset is not None:
            reset()
        start = clock()
        token = prefill()
        elapsed = (clock() - start) * 1e3
        tokens = [int(token)]
        times = []
        for _ in range(DECODE_STEPS):
            start = clock()
            token = step(token)
            times.append((clock() - start) * 1e3)
            tokens.append(int(token))
        if run == 0:
            continue  # warm-up
        prefill_ms.append(elapsed)
        step_ms.extend(times)
    return summary(prefill_ms, step_ms, tokens, runs)


def summary(prefill_ms: Sequence[float], step_ms: Sequence[float], tokens: Sequence[int], runs: int) -> dict[str, Any]:
    decode = statistics.median(step_ms)
    return {
        "prefill128_ms": round(statistics.median(prefill_ms), 3),
        "prefill128_min_ms": round(min(prefill_ms), 3),
        "decode_ms": round(decode, 3),
        "decode_p90_ms": round(sorted(step_ms)[int(0.9 * (len(step_ms) - 1))], 3),
        "tokens_per_s": round(1000.0 / decode, 2),
        "prefill_tokens_per_s": round(PROMPT_TOKENS * 1000.0 / statistics.median(prefill_ms), 1),
        "runs": runs,
        "decode_steps": len(step_ms),
        "greedy_ids": [int(t) for t in tokens],
    }


def agreement(ids: Sequence[int], reference: Sequence[int]) -> dict[str, Any]:
    """How far greedy ids follow a reference: matching prefix length and position-wise share."""
    n = min(len(ids), len(reference))
    prefix = 0
    while prefix < n and ids[prefix] == reference[prefix]:
        prefix += 1
    same = sum(1 for a, b in zip(ids[:n], reference[:n]) if a == b)
    return {"greedy_prefix_match": prefix, "greedy_agreement": round(same / n, 3) if n else None, "compared": n}


def decode_text(ids: Sequence[int]) -> str:
    """Text of the first FIRST_TOKENS greedy ids, with the tokenizer saved next to the HF folder."""
    from tokenizers import Tokenizer  # in .venv-bench (transformers' dependency)

    tokenizer = Tokenizer.from_file(str(hf_dir() / "tokenizer.json"))
    return tokenizer.decode(list(ids[:FIRST_TOKENS]), skip_special_tokens=False)


def file_mb(paths: Sequence[Path]) -> tuple[int, float]:
    size = sum(Path(p).stat().st_size for p in paths)
    return size, round(size / 1e6, 2)


def record(runtime: str, version: str, config: str, weights: str, files: Sequence[Path], params: int,
           result: dict[str, Any], prompt: dict[str, Any], notes: str, **extra: Any) -> dict[str, Any]:
    """One JSON object per configuration, in the shape rows.py reads."""
    size, mb = file_mb(files)
    ids = result.pop("greedy_ids")
    out = {
        "runtime": runtime,
        "version": version,
        "config": config,
        "weights": weights,
        "bits_per_weight": round(size * 8 / params, 3),
        "file_bytes": size,
        "file_mb": mb,
        "files": [str(p) for p in files],
        **result,
        "first_tokens": decode_text(ids),
        "greedy_ids": ids,
        **agreement(ids, prompt.get("reference_greedy", [])),
        "threads": THREADS,
        "batch": 1,
        "notes": notes,
        **extra,
    }
    return out


def emit(obj: dict[str, Any]) -> None:
    """One configuration = one JSON line on stdout (rows.py parses lines starting with '{')."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(runtime: str, config: str, reason: str) -> None:
    emit({"runtime": runtime, "config": config, "skipped": reason})


def parse_args(argv: Sequence[str] | None = None):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=MIN_RUNS, help=f"timed runs (at least {MIN_RUNS})")
    parser.add_argument("--config", action="extend", nargs="+", help="only these configurations")
    return parser.parse_args(argv)
