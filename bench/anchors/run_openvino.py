"""OpenVINO anchor: optimum-intel's stateful export + nncf weight compression, timed with
openvino-genai's LLMPipeline.

    .venv-bench/bin/python -m bench.anchors.run_openvino [--repeats N] [--config int8 ...]

Prints one JSON line per configuration (protocol.record). LLMPipeline(…, "CPU") with
INFERENCE_NUM_THREADS = 2 and ATTENTION_BACKEND = "SDPA" (the stateful model as exported; the
PA backend's prefix cache would reuse the repeated prompt). Each run is one generate() call on
the 128 prompt ids (non-chat mode: a fresh KV state), greedy, ignore_eos, 33 new tokens. A
token streamer stamps every token with time.perf_counter: prefill = generate() call -> first
token; decode step = the time between two tokens. The pipeline's own TTFT/TPOT are recorded
beside them.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.anchors import protocol  # noqa: E402

RUNTIME = "openvino-genai"
CONFIGS = {
    "int4-asym-g128": ("nncf int4 asym: group 128 on down_proj, group 64 on the 576-wide layers (576 is not a "
                       "multiple of 128: --group-size-fallback adjust); tied embedding int8 asym per-channel"),
    "int8": "nncf int8 asym per-channel (all layers, embedding too)",
    "fp32": "fp32 weights",
}
# The "fp32" anchor pins f32 compute and an f32 KV cache; the compressed ones keep the CPU plugin's
# defaults (what a user gets: bf16 inference precision on CPUs with AMX/avx512_bf16, a u8 KV cache;
# see inference_precision / kv_cache_precision in the record).
PROPERTIES = {"INFERENCE_NUM_THREADS": protocol.THREADS, "ATTENTION_BACKEND": "SDPA"}
EXTRA_PROPERTIES = {"fp32": {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}}


def folder(config: str) -> Path:
    return protocol.anchor_dir() / "openvino" / config


def weight_files(path: Path) -> list[Path]:
    return [path / "openvino_model.bin"]


def compression_summary(path: Path) -> dict:
    """Weight element types in the IR (what nncf really wrote), from the .xml's Constant nodes."""
    import collections
    import xml.etree.ElementTree as ET

    counts: collections.Counter = collections.Counter()
    sizes: collections.Counter = collections.Counter()
    root = ET.parse(path / "openvino_model.xml").getroot()
    for layer in root.iter("layer"):
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        if data is None:
            continue
        kind = data.get("element_type")
        shape = data.get("shape", "")
        n = 1
        for d in (shape.split(",") if shape else []):
            n *= int(d)
        if n >= 4096:  # weights, not scalars
            counts[kind] += 1
            sizes[kind] += int(data.get("size", 0))
    return {"constants_by_type": dict(counts), "bytes_by_type": dict(sizes)}


def run_config(ov_genai, ov, config: str, prompt: dict, runs: int) -> dict:
    import numpy as np

    path = folder(config)
    properties = {**PROPERTIES, **EXTRA_PROPERTIES.get(config, {})}
    pipe = ov_genai.LLMPipeline(str(path), "CPU", **properties)
    gen_config = pipe.get_generation_config()
    gen_config.max_new_tokens = protocol.DECODE_STEPS + 1
    gen_config.do_sample = False
    gen_config.ignore_eos = True
    ids = np.asarray([prompt["input_ids"]], dtype=np.int64)
    inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))

    stamps: list[float] = []

    class Stamp(ov_genai.StreamerBase):
        def write(self, token):  # token id (or ids): one call per generated token
            stamps.append(time.perf_counter())
            return ov_genai.StreamingStatus.RUNNING

        def end(self):
            pass

    streamer = Stamp()
    prefill_ms: list[float] = []
    step_ms: list[float] = []
    ttft: list[float] = []
    tpot: list[float] = []
    tokens: list[int] = []
    for run in range(runs + 1):
        stamps.clear()
        start = time.perf_counter()
        result = pipe.generate(inputs, gen_config, streamer)
        tokens = [int(t) for t in result.tokens[0]]
        if len(stamps) != len(tokens):
            raise RuntimeError(f"streamer saw {len(stamps)} tokens, generate returned {len(tokens)}")
        if run == 0:
            continue
        prefill_ms.append((stamps[0] - start) * 1e3)
        step_ms.extend((b - a) * 1e3 for a, b in zip(stamps, stamps[1:]))
        metrics = result.perf_metrics
        ttft.append(metrics.get_ttft().mean)
        tpot.append(metrics.get_tpot().mean)
    summary = protocol.summary(prefill_ms, step_ms, tokens, runs)
    core = ov.Core()
    anchor = json.loads((path / "anchor.json").read_text()) if (path / "anchor.json").exists() else {}
    def setting(name: str) -> str:  # ours, else the CPU plugin's default on this processor
        if name in properties:
            return str(properties[name])
        value = core.get_property("CPU", name)
        return value.to_string() if hasattr(value, "to_string") else str(value)

    precision, kv_precision = setting("INFERENCE_PRECISION_HINT"), setting("KV_CACHE_PRECISION")
    notes = (f"optimum-cli export openvino {' '.join(anchor.get('options', []))} (stateful); "
             f"LLMPipeline CPU {properties}; inference precision {precision}, KV cache {kv_precision}; "
             f"openvino {ov.get_version()}")
    return protocol.record(
        RUNTIME, ov_genai.__version__, config, CONFIGS[config], weight_files(path), prompt["params"], summary,
        prompt, notes, pipeline_ttft_ms=round(statistics.median(ttft), 3),
        pipeline_tpot_ms=round(statistics.median(tpot), 3), inference_precision=precision,
        kv_cache_precision=kv_precision,
        properties={k: str(v) for k, v in properties.items()}, ir=compression_summary(path))


def main(argv=None) -> int:
    args = protocol.parse_args(argv)
    configs = args.config or list(CONFIGS)
    try:
        import openvino as ov
        import openvino_genai as ov_genai
    except ImportError as error:
        for config in configs:
            protocol.fail(RUNTIME, config, f"openvino-genai is not installed: {error}")
        return 0
    try:
        prompt = protocol.load_prompt()
    except (OSError, ValueError, KeyError) as error:
        for config in configs:
            protocol.fail(RUNTIME, config, f"no prompt: {error} (run bench/anchors/prepare.py)")
        return 0
    for config in configs:
        if not (folder(config) / "openvino_model.xml").exists():
            protocol.fail(RUNTIME, config, f"{folder(config)} is missing (run bench/anchors/prepare.py)")
            continue
        try:
            protocol.emit(run_config(ov_genai, ov, config, prompt, protocol.runs_for(args.repeats)))
        except Exception as error:
            protocol.fail(RUNTIME, config, f"{type(error).__name__}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
