"""TVM compile of SmolLM2-135M for the host CPU, beside torch and onnxruntime.

Batch 1, one decode step (one token with a 256-slot KV cache, the graph that
`edgefold compile` builds for decode; onnxruntime runs the same decode graph, torch
uses HF's cache) and a 128-token prefill; torch, onnxruntime (its default optimizations), TVM untuned
and TVM tuned (trial budget per shape in the rows), for the dense fp32 model and the
int4 model from the quantize pass (block 32, symmetric, embedding/tied head included),
plus onnxruntime's own best 4-bit path (MatMulNBits, the quantize pass's
target=onnxruntime), and the compressed model of the pipeline (fold 10% of FFN
channels, then mixed int8/int4 at 4.5 bits on average). Also: this machine's memory bandwidth (numpy copy) and the
roofline it implies for reading each model's weights once; compile times with a cold
and a warm tuning database; the per-kernel profile of the tuned decode step.

    .venv/bin/python bench/compile.py [--trials 128] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import Row, machine_lock, print_table, write_results  # noqa: E402

THREADS = 2
MODEL = "smollm2-135m"
SHAPES = {"decode": 1, "prefill128": 128}
COMPRESSED = ("fold:ratio=0.1", "quantize:avg_bits=4.5")  # the "fold + int4 mixed" model


def median_ms(fn, repeats: int) -> float:
    from edgefold.latency import time_calls

    return statistics.median(time_calls(fn, repeats))


def copy_bandwidth_gbps(megabytes: int = 512, repeats: int = 5) -> float:
    """numpy copy of a buffer far larger than the caches: read + write bytes per second."""
    source = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


KV_CACHE = 256


def feeds_for(seq: int) -> dict[str, np.ndarray]:
    from edgefold.evaluate.perplexity import wikipedia_tokens

    return {"input_ids": wikipedia_tokens(MODEL, seq)[None, :].astype(np.int64)}


def decode_feeds(references, path: Path) -> dict[str, np.ndarray]:
    """A real decode step (9th Wikipedia token, caches filled by the 8 before it)."""
    from edgefold import onnx_io

    meta = {"task": "causal-lm", "tokenizer": onnx_io.metadata(path).get("edgefold.tokenizer"), "name": MODEL}
    return references.inputs({"kv_cache": KV_CACHE}, meta)


def compress(out: Path, *specs: str) -> Path | None:
    """Run passes through the CLI; None when they are not usable in this tree."""
    from edgefold.cli import main

    if (out / "model.onnx").exists():
        return out / "model.onnx"
    code = main(["compress", MODEL, *[a for spec in specs for a in ("--pass", spec)], "-o", str(out), "--no-eval"])
    return out / "model.onnx" if code == 0 and (out / "model.onnx").exists() else None


def torch_rows(rows: list[Row], repeats: int) -> None:
    """torch eager: decode = one token with HF's KV cache after 8 real tokens; prefill = 128 tokens."""
    import copy

    import torch

    from edgefold.export.sources import builtin_plan

    torch.set_num_threads(THREADS)
    module = builtin_plan(MODEL).build_module().eval()
    module = getattr(module, "model", module)  # the HF model inside the export wrapper: it takes a cache
    ids = torch.from_numpy(feeds_for(9)["input_ids"])
    with torch.no_grad():
        past = module(ids[:, :8], use_cache=True).past_key_values
        ms = median_ms(lambda: module(ids[:, 8:9], past_key_values=copy.deepcopy(past), use_cache=True), repeats)
        rows.append(Row(MODEL, "torch", "fp32 decode", "latency_ms", ms, extra={"kv_cache": "HF DynamicCache, 8 tokens"}))
        prefill = torch.from_numpy(feeds_for(128)["input_ids"])
        ms = median_ms(lambda: module(prefill), repeats)
        rows.append(Row(MODEL, "torch", "fp32 prefill128", "latency_ms", ms))
    del module


def onnxruntime_rows(rows: list[Row], name: str, path: Path, setting: str, repeats: int, scratch: Path) -> None:
    """onnxruntime (default optimizations): decode on the same KV-cache decode graph TVM compiles."""
    from edgefold.targets.tvm.execute import reference_session
    from edgefold.targets.tvm.references import References

    from edgefold.errors import EdgefoldError

    references = References(path, scratch / f"ort-{path.parent.name}")
    for label, seq in SHAPES.items():
        if seq == 1:
            try:
                session = references.session(KV_CACHE, exact=False, threads=THREADS)
            except EdgefoldError as error:  # e.g. a graph the KV-cache rewrite does not match
                print(f"{name} {setting}: no onnxruntime decode row: {error}", flush=True)
                continue
            feeds = decode_feeds(references, path)
        else:
            session = reference_session(path, threads=THREADS, exact=False)
            feeds = feeds_for(seq)
        ms = median_ms(lambda: session.run(None, feeds), repeats)
        rows.append(Row(name, "onnxruntime", f"{setting} {label}", "latency_ms", ms))


def tvm_rows(rows: list[Row], name: str, path: Path, setting: str, trials: int, repeats: int,
             cache: Path, profiles: dict) -> dict[str, float]:
    """Untuned and tuned builds; returns bytes of weights per shape (for the roofline)."""
    from edgefold.targets.tvm import compile_model
    from edgefold.targets.tvm.execute import HostLibrary
    from edgefold.targets.tvm.kernel_profile import kernel_profile
    from edgefold.targets.tvm.references import References

    weights = {}
    for method, budget in (("tvm untuned", 0), (f"tvm tuned", trials)):
        for attempt in ("first", "second") if budget else ("first",):
            with tempfile.TemporaryDirectory(dir=cache) as out:
                start = time.perf_counter()
                manifest = compile_model(path, "host", output=Path(out) / "a", trials=budget, check=False,
                                         seqs=list(SHAPES.values()), kv_cache=KV_CACHE)
                seconds = time.perf_counter() - start
                rows.append(Row(name, method, f"{setting} trials={budget}/shape", f"compile_s_{attempt}",
                                round(seconds, 1)))
                if attempt == "second":
                    continue
                folder = Path(out) / "a"
                references = References(folder / "model.onnx", Path(out) / "references")
                for entry in manifest["compile"]["buckets"]:
                    library = HostLibrary(folder / entry["library"], folder / entry["weights"], entry.get("input_order") or list(entry["inputs"]))
                    feeds = references.inputs(entry, manifest["compile"]["model"])
                    ms = library.latency_ms(feeds, repeats)
                    rows.append(Row(name, method, f"{setting} {entry['label']}", "latency_ms", ms,
                                    file_bytes=(folder / entry["weights"]).stat().st_size,
                                    extra={"trials_per_shape": budget, "tuned_kernels": entry["tuned_kernels"],
                                           "kernels": entry["kernels"]}))
                    weights[entry["label"]] = (folder / entry["weights"]).stat().st_size
                    if budget and entry["label"] == "decode":
                        profiles[f"{name} {setting}"] = kernel_profile(library, feeds, repeats=3)
                    del library
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=128, help="tuning trials per shape")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="decode only, 3 repeats (a smoke run)")
    parser.add_argument("--with-int4", action="store_true", help="also compile the plain int4 model with TVM")
    args = parser.parse_args()
    if args.quick:
        SHAPES.pop("prefill128")
        args.repeats = 3

    from edgefold.atomic import cache_root
    from edgefold.export import export_model

    rows: list[Row] = []
    profiles: dict = {}
    with machine_lock():
        handle = export_model(MODEL)
        root = cache_root()
        bench_cache = root / "bench-compile"
        bench_cache.mkdir(parents=True, exist_ok=True)
        int4 = compress(bench_cache / "int4", "quantize:format=int4")
        nbits = compress(bench_cache / "int4-nbits", "quantize:format=int4,target=onnxruntime")
        folded = compress(bench_cache / "fold-mixed", *COMPRESSED)

        bandwidth = copy_bandwidth_gbps()
        rows.append(Row("machine", "numpy copy", "512 MiB", "bandwidth_gbps", bandwidth))
        torch_rows(rows, args.repeats)
        scratch = Path(tempfile.mkdtemp(prefix="ort-", dir=bench_cache))
        onnxruntime_rows(rows, MODEL, handle.path, "fp32", args.repeats, scratch)
        if int4 is not None:
            onnxruntime_rows(rows, f"{MODEL}-int4", int4, "int4 DequantizeLinear", args.repeats, scratch)
        if nbits is not None:
            onnxruntime_rows(rows, f"{MODEL}-int4", nbits, "int4 MatMulNBits", args.repeats, scratch)
        if folded is not None:
            onnxruntime_rows(rows, f"{MODEL}-fold-mixed", folded, "fold 10% + mixed 4.5 bits", args.repeats, scratch)
        shutil.rmtree(scratch, ignore_errors=True)

        # A fresh tuning cache so "first" really starts cold (exports stay where they are).
        tuning_home = Path(tempfile.mkdtemp(prefix="tuning-", dir=bench_cache))
        previous = os.environ.get("EDGEFOLD_CACHE")
        (tuning_home / "exports").symlink_to(root / "exports")
        os.environ["EDGEFOLD_CACHE"] = str(tuning_home)
        try:
            # TVM for the dense model and the pipeline's compressed one (int4-only TVM rows: --with-int4).
            models = [(MODEL, handle.path, "fp32")] + (
                [(f"{MODEL}-int4", int4, "int4")] if int4 and args.with_int4 else []) + (
                [(f"{MODEL}-fold-mixed", folded, "fold-mixed")] if folded else [])
            for name, path, setting in models:
                weights = tvm_rows(rows, name, path, setting, args.trials, args.repeats, bench_cache, profiles)
                for label, size in weights.items():
                    rows.append(Row(name, "roofline", f"{setting} {label}", "latency_ms",
                                    size / (bandwidth * 1e9) * 1e3, file_bytes=size,
                                    extra={"note": "weight bytes read once at the numpy copy bandwidth"}))
        finally:
            if previous is None:
                os.environ.pop("EDGEFOLD_CACHE", None)
            else:
                os.environ["EDGEFOLD_CACHE"] = previous

    for key, profile in profiles.items():
        for kernel in profile["kernels"][:12]:
            rows.append(Row(key.split()[0], "tvm tuned kernel", f"{key.split()[1]} decode: {kernel['name']}",
                            "kernel_ms", kernel["ms"], extra={"calls": kernel["calls"], "share": kernel["share"]}))
    path = write_results("compile", rows)
    (path.parent / "compile-kernels.json").write_text(json.dumps(profiles, indent=2) + "\n")
    print_table("SmolLM2-135M on this CPU: torch, onnxruntime, TVM (batch 1, 2 threads)", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
