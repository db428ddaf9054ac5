"""`edgefold run`: execute an artifact and compare it with onnxruntime on the same inputs.

- x86-64 libraries run in this process through the Relax VM, and are timed beside
  onnxruntime (same inputs, same thread count).
- aarch64 libraries run through the artifact's own C++ runner under
  `qemu-aarch64-static` (Debian `qemu-user-static`): correctness only, emulated timings
  mean nothing.
- CUDA libraries need a GPU; without one the run says so and checks nothing.

The reference is onnxruntime with basic graph optimizations: its default (extended)
level rewrites DequantizeLinear+MatMul into kernels that quantize activations, which
is faster but not the model's arithmetic (0.6% off on int8 weights in our tests).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgefold.errors import EdgefoldError
from edgefold.targets.tvm import toolchain
from edgefold.targets.tvm.weights import read_weights, write_weights

QEMU = "qemu-aarch64-static"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"


# ---------------------------------------------------------------- references


def reference_session(model_path: Path, threads: int | None = None, exact: bool = True):
    """onnxruntime session: `exact` keeps the graph's arithmetic (basic optimizations only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgefoldError(f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0][:300]}") from None


def compare(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """max abs error, the reference's magnitude, cosine, and argmax agreement over the last axis."""
    errors, scales, agree, total, dots, norms_a, norms_b = [], [], 0, 0, 0.0, 0.0, 0.0
    for got, want in zip(outputs, reference):
        got = np.asarray(got, dtype=np.float64).reshape(want.shape)
        want = want.astype(np.float64)
        errors.append(float(np.abs(got - want).max()) if want.size else 0.0)
        scales.append(float(np.abs(want).max()) if want.size else 0.0)
        dots += float((got * want).sum())
        norms_a += float((got * got).sum())
        norms_b += float((want * want).sum())
        if want.ndim >= 1 and want.shape[-1] > 1:
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += int(np.prod(want.shape[:-1]))
    cosine = dots / max(np.sqrt(norms_a * norms_b), 1e-30)
    values = {"max_abs_error": max(errors), "max_abs_reference": max(scales), "cosine": cosine}
    if total:
        values["argmax_agreement"] = agree / total
    return values


def merge(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-input comparisons: worst error, mean agreement."""
    merged = {"max_abs_error": max(p["max_abs_error"] for p in parts),
              "max_abs_reference": max(p["max_abs_reference"] for p in parts),
              "cosine": min(p["cosine"] for p in parts)}
    if all("argmax_agreement" in p for p in parts):
        merged["argmax_agreement"] = float(np.mean([p["argmax_agreement"] for p in parts]))
    if all("cache_max_abs_error" in p for p in parts):
        merged["cache_max_abs_error"] = max(p["cache_max_abs_error"] for p in parts)
    return merged


# ---------------------------------------------------------------- host VM


class HostLibrary:
    """A compiled x86-64 library loaded in the Relax VM with its weights."""

    def __init__(self, library: Path, weights: Path, input_names: list[str]):
        import tvm
        from tvm import relax

        self._tvm = tvm
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        self.weights = [tvm.runtime.tensor(np.require(a, requirements="C")) for _, a in read_weights(weights)]
        self.input_names = input_names

    def arguments(self, feeds: dict[str, np.ndarray]) -> list:
        """The model inputs of `feeds` as TVM tensors, in the library's input order."""
        return [self._tvm.runtime.tensor(np.require(feeds[n], requirements="C")) for n in self.input_names]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = self.arguments(feeds)
        return [t.numpy() for t in _flatten(self.vm["main"](*args, *self.weights))]

    def latency_ms(self, feeds: dict[str, np.ndarray], repeats: int = 5) -> float:
        """Median ms of one call of the library on `feeds`, over `repeats` runs."""
        args = self.arguments(feeds)
        main = self.vm["main"]
        return _median_ms(lambda: main(*args, *self.weights), repeats)


def _flatten(result) -> list:
    if hasattr(result, "numpy"):
        return [result]
    found = []
    for item in result:
        found.extend(_flatten(item))
    return found


def _median_ms(call, repeats: int) -> float:
    from edgefold.timing import time_calls

    return statistics.median(time_calls(call, repeats))


def onnxruntime_latency_ms(session, feeds: dict[str, np.ndarray], repeats: int = 5) -> float:
    """Median ms of one onnxruntime run of `session` on `feeds`, over `repeats` runs."""
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in wanted}
    return _median_ms(lambda: session.run(None, feeds), repeats)


# ---------------------------------------------------------------- aarch64 under qemu


def run_under_qemu(runner: Path, library: Path, weights: Path, feeds: dict[str, np.ndarray],
                   input_names: list[str], timeout_s: float = 1800) -> list[np.ndarray]:
    """Outputs of the aarch64 runner on `feeds`, run under qemu-aarch64 on this machine."""
    qemu = toolchain.require(QEMU, "running an aarch64 artifact on this machine")
    with tempfile.TemporaryDirectory(prefix="edgefold-qemu-") as scratch:
        inputs, outputs = Path(scratch) / "inputs.bin", Path(scratch) / "outputs.bin"
        write_weights(inputs, input_names, [np.require(feeds[n], requirements="C") for n in input_names])
        command = [qemu, "-L", AARCH64_SYSROOT, str(runner), str(library), str(weights), str(inputs), str(outputs)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise EdgefoldError(f"the aarch64 runner failed under qemu: {(result.stderr or result.stdout).strip()[-400:]}")
        return [np.array(a) for _, a in read_weights(outputs)]


# ---------------------------------------------------------------- edgefold run


def run_artifact(folder: Path, *, repeats: int = 5, threads: int | None = None, count: int | None = None,
                 buckets: list[str] | None = None) -> dict:
    """Run every bucket of an artifact on its check inputs; returns per-bucket results."""
    from edgefold.targets.tvm.artifact import bucket_of

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise EdgefoldError(f"{folder} is not an edgefold artifact (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    compiled = manifest.get("compile")
    if not compiled:
        raise EdgefoldError(f"{folder} holds no compiled library (run `edgefold compile` first)")
    kind = compiled["library_kind"]
    if kind == "cuda":
        raise EdgefoldError("this artifact is a CUDA library: running it needs an NVIDIA GPU "
                            "(copy the folder to the GPU machine and load lib/*.so with tvm.runtime.load_module)")
    from edgefold.targets.tvm.references import References, compare_bucket

    model_path = folder / "model.onnx"
    meta = compiled["model"]
    if any(entry.get("kind") == "llm" for entry in compiled["buckets"]):
        return _run_llm_artifact(folder, compiled, repeats=repeats, count=count)
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgefold-run-") as scratch:
        references = References(model_path, Path(scratch))
        for entry in compiled["buckets"]:
            if buckets and entry["label"] not in buckets:
                continue
            bucket = bucket_of(entry)
            pairs = references.check_sets(entry, meta, count or entry["check_count"])
            library, weights = folder / entry["library"], folder / entry["weights"]
            names = list(bucket.shapes)
            parts, row = [], {"label": bucket.label, "inputs": bucket.describe()}
            if kind == "x86_64":
                host = HostLibrary(library, weights, names)
                for feeds, reference in pairs:
                    parts.append(compare_bucket(entry, host(feeds), reference))
                row["tvm_ms"] = round(host.latency_ms(pairs[0][0], repeats), 3)
                fast = references.session(bucket.kv_cache, exact=False, threads=threads)
                row["onnxruntime_ms"] = round(onnxruntime_latency_ms(fast, pairs[0][0], repeats), 3)
                row["where"] = "host (Relax VM)"
            else:
                runner = folder / compiled["runner_binary"] if compiled.get("runner_binary") else None
                if runner is None or not runner.exists():
                    raise EdgefoldError(f"{folder} has no aarch64 runner binary (the aarch64 runtime was not "
                                        "available at compile time: run tools/fetch_aarch64_runtime.py and compile again)")
                for feeds, reference in pairs:
                    parts.append(compare_bucket(entry, run_under_qemu(runner, library, weights, feeds, names), reference))
                row["where"] = f"{QEMU} (correctness only)"
            row.update(merge(parts))
            row["inputs_checked"] = len(pairs)
            results[bucket.label] = row
    return results


def _only(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in wanted}


def _run_llm_artifact(folder: Path, compiled: dict, *, repeats: int, count: int | None) -> dict:
    """LLM libraries: decode (and prefill) checked on real text; timed on x86, under qemu on aarch64."""
    import statistics

    from edgefold.targets.tvm.llm import check
    from edgefold.targets.tvm.references import References

    meta = compiled["model"]
    entries = [e for e in compiled["buckets"] if e.get("kind") == "llm"]
    kind = compiled["library_kind"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgefold-run-") as scratch:
        references = References(folder / "model.onnx", Path(scratch))
        if kind == "x86_64":
            from edgefold.targets.tvm.llm.compile import onnxruntime_decode_ms
            from edgefold.targets.tvm.llm.session import LlmSession

            session = LlmSession(folder, entries)
        else:
            runner = folder / compiled["runner_binary"] if compiled.get("runner_binary") else None
            if runner is None or not runner.exists():
                raise EdgefoldError(f"{folder} has no aarch64 runner binary (the aarch64 runtime was not "
                                    "available at compile time: run tools/fetch_aarch64_runtime.py and compile again)")
        for entry in entries:
            row = {"label": entry["label"], "inputs": f"{entry['tokens']} token(s), KV cache of {entry['kv_cache']}"}
            steps = count or entry["check_count"]
            if entry["function"] == "decode":
                run = check.host_decode(session) if kind == "x86_64" else check.qemu_decode(folder, entry, runner)
                row.update(check.check_decode(run, references, meta, entry["kv_cache"], steps))
                if kind == "x86_64":
                    context = min(128, entry["kv_cache"] - repeats - 1)
                    row["tvm_ms"] = round(statistics.median(session.decode_latency_ms(context, steps=max(repeats, 8))), 3)
                    row["onnxruntime_ms"] = round(onnxruntime_decode_ms(references, entry["kv_cache"], context), 3)
            elif kind == "x86_64":
                row.update(check.check_prefill(check.host_prefill(session), references, meta, entry["tokens"]))
                row["tvm_ms"] = round(statistics.median(session.prefill_latency_ms(entry["tokens"])), 3)
            else:
                continue  # prefill under qemu: the decode check covers the same kernels' arithmetic
            row["where"] = "host (Relax VM)" if kind == "x86_64" else f"{QEMU} (correctness only)"
            row["inputs_checked"] = steps
            results[entry["label"]] = row
    return results
