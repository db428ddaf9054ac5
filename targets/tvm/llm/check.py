"""Checking LLM libraries against onnxruntime, on this machine or under qemu-aarch64.

decode: the same Wikipedia tokens go through onnxruntime's KV-cache decode graph (exact
arithmetic) and through the library, one token per call from an empty cache; the logits
of the last `count` steps are compared (max error, cosine, argmax agreement).
prefill<N>: prompts of several lengths up to N through the prefill library; the last
token's logits are compared with onnxruntime's full-sequence model at that position.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgefold.errors import EdgefoldError

PREFILL_LENGTHS = 4  # prompt lengths checked per prefill bucket (the bucket, then shorter ones)


def text_tokens(meta: dict, count: int) -> list[int]:
    """The first `count` token ids of the Wikipedia check text, with the model's tokenizer."""
    from edgefold.evaluate.perplexity import wikipedia_tokens

    return [int(t) for t in wikipedia_tokens(meta.get("tokenizer") or meta["name"], count)]


def check_decode(run_tokens: Callable[[list[int]], np.ndarray], references, meta: dict, kv_cache: int,
                 count: int) -> dict[str, float]:
    """`run_tokens(ids)` feeds ids one per step from an empty cache and returns logits [steps, vocab]."""
    from edgefold.targets.tvm.execute import compare, merge
    from edgefold.targets.tvm.references import WARM_TOKENS

    pairs = references.check_sets({"label": "decode", "kv_cache": kv_cache}, meta, count)
    steps = WARM_TOKENS + len(pairs)
    ids = text_tokens(meta, steps)
    logits = run_tokens(ids)
    first = steps - len(pairs)
    return merge([compare([logits[first + i]], reference[:1]) for i, (_, reference) in enumerate(pairs)])


def check_prefill(run_prompt: Callable[[list[int]], np.ndarray], references, meta: dict, tokens: int) -> dict[str, float]:
    """`run_prompt(ids)` returns the last token's logits of a prefill of `ids` into an empty cache."""
    from edgefold.targets.tvm.execute import compare, merge

    ids = text_tokens(meta, tokens)
    full = references.session(0)
    want = full.run(None, {"input_ids": np.array([ids], np.int64)})[0][0]
    lengths = sorted({tokens, *(max(1, tokens - step * max(1, tokens // PREFILL_LENGTHS)) for step in range(1, PREFILL_LENGTHS))},
                     reverse=True)
    return merge([compare([run_prompt(ids[:n])], [want[n - 1]]) for n in lengths])


def host_decode(session) -> Callable[[list[int]], np.ndarray]:
    """`run_tokens` for check_decode on this machine: per-step logits from an LlmSession, empty cache."""
    def run(ids: list[int]) -> np.ndarray:
        session.reset()
        return np.stack([session.decode(token) for token in ids])
    return run


def host_prefill(session) -> Callable[[list[int]], np.ndarray]:
    """`run_prompt` for check_prefill on this machine: an LlmSession's last-token logits, empty cache."""
    def run(ids: list[int]) -> np.ndarray:
        session.reset()
        return session.prefill(ids)
    return run


def qemu_decode(folder: Path, entry: dict, runner: Path, timeout_s: float = 3600) -> Callable[[list[int]], np.ndarray]:
    """The artifact's own C++ runner (`--llm`) under qemu-aarch64: correctness only."""
    from edgefold.targets.tvm import toolchain
    from edgefold.targets.tvm.execute import AARCH64_SYSROOT, QEMU
    from edgefold.targets.tvm.weights import read_weights, write_weights

    def run(ids: list[int]) -> np.ndarray:
        qemu = toolchain.require(QEMU, "running an aarch64 artifact on this machine")
        with tempfile.TemporaryDirectory(prefix="edgefold-qemu-") as scratch:
            inputs, outputs = Path(scratch) / "inputs.bin", Path(scratch) / "outputs.bin"
            write_weights(inputs, ["tokens", "cache_len"], [np.array(ids, np.int64), np.array([entry["cache_len"]], np.int64)])
            command = [qemu, "-L", AARCH64_SYSROOT, str(runner), "--llm", str(folder / entry["library"]),
                       str(folder / entry["weights"]), str(inputs), str(outputs)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
            if result.returncode != 0:
                raise EdgefoldError("the aarch64 runner failed under qemu: "
                                    f"{(result.stderr or result.stdout).strip()[-400:]}")
            [(_, logits)] = read_weights(outputs)
            return np.array(logits)
    return run
