"""The LLM path of `edgefold compile`: a causal LM becomes hand-scheduled decode/prefill libraries.

    extract the decoder (spec) -> check it against onnxruntime -> pack the weights (one blob)
    -> build `decode` (and `prefill<N>`) -> check them on real text -> time them

A model the spec reader does not recognise, or whose spec disagrees with onnxruntime,
returns None and compiles the generic way (the reason is logged and kept in the report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefold import progress
from edgefold.errors import EdgefoldError
from edgefold.hashing import sha256_file
from edgefold.interrupts import native_calls
from edgefold.targets.tvm.llm.spec import Unsupported

CHECK_STEPS = 8  # decode steps compared with onnxruntime (after WARM_TOKENS steps of real text)
LATENCY_CONTEXT = 128  # decode is timed with this many tokens already in the cache


@dataclass
class LlmResult:
    """What the LLM path built: the manifest entries of its libraries and their timings."""

    entries: list[dict[str, Any]]
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)


def compile_llm(model_path: Path, meta: dict, device, target, kind: str, seqs: list[int], kv_cache: int,
                staging: Path, references, *, check: bool, latency: bool, reuse: bool, cache_key: str,
                budget: int = 0, database=None, baseline_model: Path | None = None) -> LlmResult | None:
    """Build the LLM libraries into `staging`; None when the model is not a decoder this path takes.

    `baseline_model`: the model before compression (a build's original); onnxruntime is timed on
    it, the comparison a user makes (else on the compiled model itself)."""
    from edgefold.targets.tvm import compiled_cache
    from edgefold.targets.tvm.kernels.isa import isa_for

    if meta.get("task") != "causal-lm" or kv_cache <= 0 or kind == "cuda":
        return None
    hit = compiled_cache.load(cache_key) if reuse else None
    if hit is not None:
        entry, folder = hit
        compiled_cache.restore(folder, entry, staging)
        entries = entry["llm_entries"]
        progress.info(f"    LLM libraries: inputs and code unchanged: reused the finished build ({folder})")
        result = LlmResult(entries, {e["label"]: {"reused_build": str(folder)} for e in entries})
    else:
        try:
            spec, checked = _verified_spec(model_path, references, kv_cache, meta)
            isa = isa_for(target)
        except Unsupported as why:
            progress.info(f"    not compiled with the LLM kernels ({why}); compiling the generic way")
            return None
        result = _build(spec, checked, isa, model_path, device, target, kind, seqs, kv_cache, staging,
                        budget=budget if kind == "x86_64" else 0, database=database)
        if check and kind == "x86_64":
            _check(result, staging, meta, references, kv_cache)
        files = {name: staging / name for e in result.entries for name in (e["library"], e["weights"])}
        compiled_cache.store(cache_key, {"llm_entries": result.entries}, files)
    if check and latency and kind == "x86_64":
        _measure(result, staging, references, kv_cache, baseline_model)
    return result


def _verified_spec(model_path: Path, references, kv_cache: int, meta: dict):
    from edgefold.evaluate.perplexity import wikipedia_tokens
    from edgefold.targets.tvm.llm.reference import check_against_onnxruntime
    from edgefold.targets.tvm.llm.spec import extract_decoder

    with progress.step("read the decoder from the graph"):
        spec = extract_decoder(model_path)
    with progress.step("check it against onnxruntime (4 decode steps)"):
        try:
            session = references.session(kv_cache)
        except EdgefoldError as error:
            raise Unsupported(str(error)) from None
        tokens = [int(t) for t in wikipedia_tokens(meta.get("tokenizer") or meta["name"], 4)]
        checked = check_against_onnxruntime(spec, session, tokens, kv_cache)
    return spec, checked


def _build(spec, checked, isa, model_path, device, target, kind, seqs, kv_cache, staging, *, budget: int = 0,
           database=None) -> LlmResult:
    from edgefold.targets.tvm.library import export
    from edgefold.targets.tvm.llm.program import build_module, relax_pipeline, plan_decoder
    from edgefold.targets.tvm.weights import write_weights

    import tvm

    with progress.step(f"pack {len(spec.layers)} layers for {isa.name} ({spec.name})"):
        plan = plan_decoder(spec, isa, kv_cache)
        blob = plan.blob.bytes()
        weights = staging / "weights.bin"
        write_weights(weights, ["weights"], [blob])
        digest = sha256_file(weights)
    replacements, selection = {}, {}
    if budget > 0 and database is not None:
        from edgefold.targets.tvm.llm.tuning import select_kernels

        kernels: dict = {}
        build_module(plan, 1, collect=kernels)
        with progress.step(f"tune {len(kernels)} decode kernels ({budget} trials; template vs MetaSchedule)"):
            replacements, selection = select_kernels(kernels, blob, target, budget, database)
    entries, timings = [], {}
    for tokens in sorted(set(seqs)):
        label = "decode" if tokens == 1 else f"prefill{tokens}"
        with progress.step(f"build {label} for {device.name} ({kind}, {isa.name})"), native_calls():
            start = time.perf_counter()
            mod, kernels = build_module(plan, tokens, replacements=replacements if tokens == 1 else None)
            with tvm.transform.PassContext(opt_level=3):
                executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline())
            library = export(executable, target, device, staging / "lib" / f"{label}.so")
            seconds = round(time.perf_counter() - start, 2)
        inputs = {"input_ids": {"shape": [1, tokens], "dtype": "int64"}, "position": {"shape": [1], "dtype": "int64"}}
        if tokens > 1:
            inputs["length"] = {"shape": [1], "dtype": "int64"}
        inputs["cache"] = {"shape": [plan.cache_len], "dtype": "float32"}
        entries.append({
            "label": label, "kind": "llm", "function": "prefill" if tokens > 1 else "decode", "tokens": tokens,
            "inputs": inputs, "input_order": list(inputs), "library": f"lib/{label}.so",
            "extra": [f"lib/{p.name}" for p in library.extra], "weights": "weights.bin", "weights_sha256": digest,
            "weight_tensors": 1, "kv_cache": kv_cache, "cache_len": plan.cache_len, "isa": isa.name,
            "kernels": len(kernels), "kernel_weight_bytes": kernels,
            "tuned_kernels": sum(1 for r in selection.values() if r["winner"] == "tuned") if tokens == 1 else 0,
            **({"selection": selection, "tuning_budget": budget} if tokens == 1 and selection else {}),
            "lowbit_weights": dict(sorted(plan.formats.items())),
            "weight_bytes_per_token": plan.weight_bytes_per_token(),
            "spec_check": {k: float(f"{v:.4g}") for k, v in checked.items()},
            "check_count": CHECK_STEPS if tokens == 1 else 4,
            "notes": library.notes + [f"{spec.name}: {len(spec.layers)} layers, {isa.describe()}"],
        })
        timings[label] = {"build_seconds": seconds}  # a timing: compile-report.json, never the manifest
    return LlmResult(entries, timings)


def _check(result: LlmResult, staging: Path, meta: dict, references, kv_cache: int) -> None:
    """Decode on real text against onnxruntime's KV-cache graph; prefill at several prompt lengths."""
    from edgefold.targets.tvm.llm.check import check_decode, check_prefill, host_decode, host_prefill
    from edgefold.targets.tvm.llm.session import LlmSession

    session = LlmSession(staging, result.entries)
    for entry in result.entries:
        with progress.step(f"check {entry['label']} against onnxruntime"):
            if entry["function"] == "decode":
                fidelity = check_decode(host_decode(session), references, meta, kv_cache, entry["check_count"])
            else:
                fidelity = check_prefill(host_prefill(session), references, meta, entry["tokens"])
        entry["fidelity"] = {k: float(f"{v:.4g}") for k, v in fidelity.items()}
        progress.info(f"    {entry['label']}: " + ", ".join(f"{k} {v:.4g}" for k, v in entry["fidelity"].items()))


def _measure(result: LlmResult, staging: Path, references, kv_cache: int, baseline_model: Path | None) -> None:
    """The libraries' latency beside onnxruntime's at the same context: onnxruntime runs the
    original model when there is one (what the user would otherwise ship), else this one."""
    import statistics

    from edgefold.targets.tvm.llm.session import LlmSession
    from edgefold.targets.tvm.references import References

    session = LlmSession(staging, result.entries)
    timed = {}
    for entry in result.entries:
        if entry["function"] == "decode":
            context = min(LATENCY_CONTEXT, kv_cache - 17)
            timed[entry["label"]] = (session.decode_latency_ms(context, steps=16), context)
        else:
            timed[entry["label"]] = (session.prefill_latency_ms(entry["tokens"]), None)
    del session  # its weights leave memory before onnxruntime loads a second model
    ort = references
    if baseline_model is not None and Path(baseline_model).resolve() != Path(references.model_path).resolve():
        ort = References(baseline_model, references.workdir / "baseline")
    which = "original" if ort is not references else "compiled"
    with progress.step(f"time onnxruntime on the {which} model"):
        for entry in result.entries:
            ms, context = timed[entry["label"]]
            timing = result.timings.setdefault(entry["label"], {})
            if entry["function"] == "decode":
                reference_ms = onnxruntime_decode_ms(ort, kv_cache, context)
                timing["latency"] = {"tvm_ms": round(statistics.median(ms), 3), "context": context}
            else:
                reference_ms = _onnxruntime_prefill_ms(ort, entry["tokens"])
                timing["latency"] = {"tvm_ms": round(statistics.median(ms), 3), "tokens": entry["tokens"]}
            timing["latency"].update(onnxruntime_ms=round(reference_ms, 3), onnxruntime_model=which)


def onnxruntime_decode_ms(references, kv_cache: int, context: int, repeats: int = 8) -> float:
    """Median ms of one onnxruntime decode step at position `context` of a `kv_cache`-slot cache."""
    import statistics

    from edgefold.timing import time_calls

    session = references.session(kv_cache, exact=False)
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name.startswith("past_")}
    feeds["input_ids"] = np.array([[1]], np.int64)
    feeds["position"] = np.array([context], np.int64)
    return statistics.median(time_calls(lambda: session.run(None, feeds), repeats))


def _onnxruntime_prefill_ms(references, tokens: int, repeats: int = 3) -> float:
    import statistics

    from edgefold.timing import time_calls

    session = references.session(0, exact=False)
    feeds = {"input_ids": np.ones((1, tokens), np.int64)}
    return statistics.median(time_calls(lambda: session.run(None, feeds), repeats))
