"""`edgefold run ARTIFACT --prompt ...`: text from a compiled LLM artifact, streamed as it comes.

Host artifacts run in TVM's VM (`LlmSession`): the prompt through the prefill library, then
one decode call per token, greedy or sampled. mobile-arm64 artifacts run their own C++ runner
under qemu-aarch64 (greedy only: the runner picks the argmax; emulation makes it slow, and its
timing says nothing about a phone)."""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgefold.errors import EdgefoldError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1 keep every token."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        """Whether tokens are picked by argmax (temperature 0)."""
        return self.temperature <= 0.0


def make_sampler(sampling: Sampling) -> Callable[[np.ndarray], int] | None:
    """logits -> token id under temperature, top-k then top-p (nucleus); None for greedy."""
    if sampling.greedy:
        return None
    rng = np.random.default_rng(sampling.seed)

    def sample(logits: np.ndarray) -> int:
        scaled = np.asarray(logits, np.float64).reshape(-1) / sampling.temperature
        order = np.argsort(-scaled, kind="stable")
        if sampling.top_k > 0:
            order = order[:sampling.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if sampling.top_p < 1.0:  # the smallest prefix whose mass reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p - 1e-9) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[rng.choice(len(order), p=probs)])

    return sample


@dataclass
class Generated:
    """Text generated from an artifact: prompt length, new tokens and text, where it ran, timings."""

    prompt_tokens: int
    tokens: list[int]
    text: str
    where: str
    prefill_ms: float | None = None
    decode_ms: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed from the median step time; None when no decode step was timed."""
        return 1e3 / statistics.median(self.decode_ms) if self.decode_ms else None


class _TextStream:
    """Decodes the growing token list and hands out only the new characters (a token may end
    in the middle of a UTF-8 character: wait for the rest)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None):
        self.tokenizer, self.on_text, self.ids, self.shown = tokenizer, on_text, [], ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if self.on_text is not None and len(text) > len(self.shown):
            self.on_text(text[len(self.shown):])
        self.shown = text


def _compiled(folder: Path) -> dict:
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.is_file():
        raise EdgefoldError(f"{folder} is not an edgefold artifact (no manifest.json)")
    compiled = json.loads(manifest_path.read_text()).get("compile")
    if not compiled or not any(e.get("kind") == "llm" for e in compiled.get("buckets", [])):
        raise EdgefoldError(f"{folder} holds no compiled LLM (text generation needs a causal LM compiled by "
                            "`edgefold compile` or `edgefold build` with the LLM kernels)")
    return compiled


def generate_text(folder: Path, prompt: str, max_new_tokens: int, *, sampling: Sampling = Sampling(),
                  on_text: Callable[[str], None] | None = None) -> Generated:
    """Continue `prompt` with up to `max_new_tokens` tokens from a compiled LLM artifact.

    Host artifacts run in TVM's VM; aarch64 ones under qemu (greedy only). `on_text` gets the text as it comes."""
    from edgefold.models.metadata import load_tokenizer

    folder = Path(folder)
    compiled = _compiled(folder)
    tokenizer = load_tokenizer(compiled["model"].get("tokenizer") or compiled["model"]["name"])
    prompt_ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    if not prompt_ids:
        raise EdgefoldError("the prompt is empty after tokenization")
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    stream = _TextStream(tokenizer, on_text)
    if compiled["library_kind"] == "x86_64":
        return _generate_host(folder, compiled, prompt_ids, max_new_tokens, sampling, stop, stream)
    if compiled["library_kind"] == "aarch64":
        if not sampling.greedy:
            raise EdgefoldError("an aarch64 artifact runs under qemu with its own runner, which decodes greedily: "
                                "drop --temperature/--top-k/--top-p")
        return _generate_qemu(folder, compiled, prompt_ids, max_new_tokens, stop, stream)
    raise EdgefoldError(f"this artifact holds a {compiled['library_kind']} library: generate on its device")


def _generate_host(folder, compiled, prompt_ids, max_new_tokens, sampling, stop, stream) -> Generated:
    from edgefold.targets.tvm.llm.session import LlmSession

    session = LlmSession(folder, compiled["buckets"])
    room = session.slots - len(prompt_ids)
    if room <= 0:
        raise EdgefoldError(f"the prompt has {len(prompt_ids)} tokens; the artifact's KV cache holds {session.slots}")
    result = session.generate(prompt_ids, min(max_new_tokens, room), stop=stop, sampler=make_sampler(sampling),
                              on_token=stream.push)
    tokens = [t for t in result.tokens if t not in stop]
    return Generated(len(prompt_ids), tokens, stream.tokenizer.decode(tokens, skip_special_tokens=True),
                     "host (TVM VM)", prefill_ms=result.prefill_ms, decode_ms=result.decode_ms)


def _generate_qemu(folder, compiled, prompt_ids, max_new_tokens, stop, stream) -> Generated:
    from edgefold.targets.tvm import toolchain
    from edgefold.targets.tvm.execute import AARCH64_SYSROOT, QEMU
    from edgefold.targets.tvm.weights import write_weights

    qemu = toolchain.require(QEMU, "running an aarch64 artifact on this machine")
    runner = folder / (compiled.get("runner_binary") or "")
    if not compiled.get("runner_binary") or not runner.is_file():
        raise EdgefoldError(f"{folder} has no aarch64 runner binary (the compile could not build it)")
    entry = next(e for e in compiled["buckets"] if e.get("function") == "decode")
    room = int(entry["kv_cache"]) - len(prompt_ids)
    if room <= 0:
        raise EdgefoldError(f"the prompt has {len(prompt_ids)} tokens; the artifact's KV cache holds {entry['kv_cache']}")
    tokens: list[int] = []
    with tempfile.TemporaryDirectory(prefix="edgefold-generate-") as scratch:
        inputs, outputs = Path(scratch) / "inputs.bin", Path(scratch) / "outputs.bin"
        write_weights(inputs, ["tokens", "cache_len"],
                      [np.array(prompt_ids, np.int64), np.array([entry["cache_len"]], np.int64)])
        command = [qemu, "-L", AARCH64_SYSROOT, str(runner), "--llm", str(folder / entry["library"]),
                   str(folder / entry["weights"]), str(inputs), str(outputs), "--generate",
                   str(min(max_new_tokens, room))]
        start = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
            word = ""
            # "generated ID ID ...\n": the runner flushes every id as it is chosen
            while (char := process.stdout.read(1)) != "":
                if char.isdigit():
                    word += char
                    continue
                if word and process_token(int(word), tokens, stop, stream):
                    process.kill()
                    break
                word = ""
                if char == "\n":
                    break
            _, errors = process.communicate()
        if process.returncode not in (0, -9) or (process.returncode == -9 and not tokens):
            raise EdgefoldError("the aarch64 runner failed under qemu: " + (errors.strip().splitlines() or ["?"])[-1])
        seconds = time.perf_counter() - start
    text = stream.tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True)
    per_token = [seconds * 1e3 / max(len(tokens) + len(prompt_ids), 1)]
    return Generated(len(prompt_ids), tokens, text, "qemu-aarch64 (emulated: not a phone's speed)",
                     decode_ms=per_token)


def process_token(token: int, tokens: list[int], stop: set[int], stream: _TextStream) -> bool:
    """Keep and show one generated id; True when it ends the text."""
    tokens.append(token)
    if token in stop:
        return True
    stream.push(token)
    return False
