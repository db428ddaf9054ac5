"""llama.cpp anchor through llama-cpp-python: GGUF files made with its quantize API.

    .venv-bench/bin/python -m bench.anchors.run_llamacpp [--repeats N] [--config q4_0 ...]

Prints one JSON line per configuration (protocol.record). prefill = Llama.eval(128 ids) on an
empty KV cache (one batch: n_batch = n_ubatch = 128) + the greedy pick; decode step =
Llama.eval([token]) + argmax of its logits. n_threads = n_threads_batch = 2, n_ctx = 256.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.anchors import protocol  # noqa: E402

RUNTIME = "llama.cpp"
CONFIGS = {
    "q4_0": "GGUF Q4_0 (4-bit, block 32, fp16 scale)",
    "q4_k_m": "GGUF Q4_K_M (k-quant mix; see tensor_types for the fallbacks)",
    "q8_0": "GGUF Q8_0 (8-bit, block 32, fp16 scale)",
    "f32": "GGUF F32",
}
N_CTX = 256


def gguf_path(config: str) -> Path:
    return protocol.anchor_dir() / "gguf" / f"smollm2-135m-{config}.gguf"


def run_config(llama_cpp, config: str, prompt: dict, runs: int) -> dict:
    import numpy as np

    path = gguf_path(config)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_batch=protocol.PROMPT_TOKENS,
                          n_ubatch=protocol.PROMPT_TOKENS, n_threads=protocol.THREADS,
                          n_threads_batch=protocol.THREADS, logits_all=False, verbose=False)
    ids = [int(i) for i in prompt["input_ids"]]
    n_vocab = llm.n_vocab()

    def reset() -> None:
        llm.reset()  # n_tokens = 0; eval() then drops the cache cells past it
        llm._ctx.kv_cache_clear()

    def pick() -> int:  # logits of the batch's last token (logits_all=False keeps no copy in llm.scores)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))))

    def prefill() -> int:
        llm.eval(ids)
        return pick()

    def step(token: int) -> int:
        llm.eval([token])
        return pick()

    result = protocol.measure(prefill, step, runs, reset=reset)
    info_path = path.with_suffix(".json")
    quant = json.loads(info_path.read_text()) if info_path.exists() else {}
    params, size = int(llm._model.n_params()), int(llm._model.size())
    system = llama_cpp.llama_print_system_info().decode().strip()
    notes = (f"llama_model_quantize(allow_requantize) from the F32 GGUF (itself requantized from the shipped "
             f"Q4_1 file); Llama.eval, greedy; n_ctx {N_CTX}, n_batch 128, "
             f"flash_attn False (llama-cpp-python's default); {system}")
    record = protocol.record(RUNTIME, llama_cpp.__version__, config, CONFIGS[config], [path], prompt["params"],
                             result, prompt, notes, tensor_types=quant.get("tensor_types"),
                             by_tensor=quant.get("by_tensor"))
    if params and size:
        record["llama_params"] = params
        record["llama_bpw"] = round(size * 8 / params, 3)  # llama.cpp's own figure (tensor bytes / params)
    del llm
    return record


def main(argv=None) -> int:
    args = protocol.parse_args(argv)
    configs = args.config or list(CONFIGS)
    try:
        import llama_cpp
    except ImportError as error:
        for config in configs:
            protocol.fail(RUNTIME, config, f"llama-cpp-python is not installed: {error}")
        return 0
    try:
        prompt = protocol.load_prompt()
    except (OSError, ValueError, KeyError) as error:
        for config in configs:
            protocol.fail(RUNTIME, config, f"no prompt: {error} (run bench/anchors/prepare.py)")
        return 0
    for config in configs:
        if not gguf_path(config).exists():
            protocol.fail(RUNTIME, config, f"{gguf_path(config)} is missing (run bench/anchors/prepare.py)")
            continue
        try:
            protocol.emit(run_config(llama_cpp, config, prompt, protocol.runs_for(args.repeats)))
        except Exception as error:
            protocol.fail(RUNTIME, config, f"{type(error).__name__}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
