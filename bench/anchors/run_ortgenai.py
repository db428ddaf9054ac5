"""onnxruntime-genai anchor: models from its model builder, timed with its Generator API.

    .venv-bench/bin/python -m bench.anchors.run_ortgenai [--repeats N] [--config int4-b32 ...]

Prints one JSON line per configuration (protocol.record). prefill = a fresh Generator's
append_tokens(128 ids) + the first greedy pick; decode step = generate_next_token() (one
forward on the previous token + greedy pick). Threads: the decoder session's
intra_op_num_threads = 2 (config overlay).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.anchors import protocol  # noqa: E402

RUNTIME = "onnxruntime-genai"
CONFIGS = {
    "int4-b32": "int4 MatMulNBits sym block 32, accuracy_level 4 (int8 activations)",
    "int4-b128": "int4 MatMulNBits sym block 128, accuracy_level 4 (int8 activations)",
    "int4-b32-acc1": "int4 MatMulNBits sym block 32, accuracy_level 1 (fp32 activations)",
    "fp32": "fp32",
}
SESSION_OPTIONS = {"intra_op_num_threads": protocol.THREADS, "inter_op_num_threads": 1}
MAX_LENGTH = 256  # KV buffer (past_present_share_buffer), like edgefold's 256-slot decode cache


def folder(config: str) -> Path:
    return protocol.anchor_dir() / "ort-genai" / config


def weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in {".onnx", ".data"} or p.name.endswith(".onnx.data"))


def describe(path: Path) -> dict:
    """What the builder wrote: MatMulNBits attributes and initializer types (from the ONNX graph)."""
    try:
        import collections

        import onnx

        model = onnx.load(str(path / "model.onnx"), load_external_data=False)
        ops = collections.Counter(n.op_type for n in model.graph.node)
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        attrs = collections.Counter(
            tuple(sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute if a.name in
                         {"bits", "block_size", "accuracy_level"})) for n in nbits)
        return {"matmulnbits": len(nbits), "matmul": ops.get("MatMul", 0), "gather": ops.get("Gather", 0),
                "gqa": ops.get("GroupQueryAttention", 0),
                "nbits_attrs": {", ".join(f"{k}={v}" for k, v in key): count for key, count in attrs.items()}}
    except Exception as error:  # description only
        return {"describe_error": repr(error)}


def run_config(og, config: str, prompt: dict, runs: int) -> dict:
    import numpy as np

    path = folder(config)
    cfg = og.Config(str(path))
    cfg.clear_providers()  # CPU
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": SESSION_OPTIONS}}}))
    model = og.Model(cfg)
    ids = np.asarray(prompt["input_ids"], dtype=np.int32)
    state: dict = {}

    def reset() -> None:
        params = og.GeneratorParams(model)
        # min_length: never stop at EOS inside the 33 greedy tokens (no sampling: top-1)
        params.set_search_options(max_length=MAX_LENGTH, min_length=MAX_LENGTH, do_sample=False, batch_size=1)
        state["gen"] = None
        state["gen"] = og.Generator(model, params)

    def prefill() -> int:
        gen = state["gen"]
        gen.append_tokens(ids)
        gen.generate_next_token()  # picks from the prefill logits (no forward)
        return int(gen.get_next_tokens()[0])

    def step(token: int) -> int:
        gen = state["gen"]
        gen.generate_next_token()  # forward on the last token, then greedy pick
        return int(gen.get_next_tokens()[0])

    result = protocol.measure(prefill, step, runs, reset=reset)
    anchor = json.loads((path / "anchor.json").read_text()) if (path / "anchor.json").exists() else {}
    notes = (f"model builder -p {anchor.get('precision', '?')} -e cpu "
             f"{' '.join(anchor.get('extra_options', []))}; Generator API, greedy, max_length {MAX_LENGTH}; "
             f"onnxruntime {__import__('onnxruntime').__version__}")
    return protocol.record(
        RUNTIME, og.__version__, config, CONFIGS[config], weight_files(path), prompt["params"], result, prompt, notes,
        graph=describe(path),
        session_options=SESSION_OPTIONS,
        builder={k: anchor[k] for k in ("precision", "extra_options") if k in anchor})


def main(argv=None) -> int:
    args = protocol.parse_args(argv)
    configs = args.config or list(CONFIGS)
    try:
        import onnxruntime_genai as og
    except ImportError as error:
        for config in configs:
            protocol.fail(RUNTIME, config, f"onnxruntime-genai is not installed: {error}")
        return 0
    try:
        prompt = protocol.load_prompt()
    except (OSError, ValueError, KeyError) as error:
        for config in configs:
            protocol.fail(RUNTIME, config, f"no prompt: {error} (run bench/anchors/prepare.py)")
        return 0
    for config in configs:
        if not (folder(config) / "genai_config.json").exists():
            protocol.fail(RUNTIME, config, f"{folder(config)} is missing (run bench/anchors/prepare.py)")
            continue
        try:
            protocol.emit(run_config(og, config, prompt, protocol.runs_for(args.repeats)))
        except Exception as error:  # one failing configuration does not hide the others
            protocol.fail(RUNTIME, config, f"{type(error).__name__}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
