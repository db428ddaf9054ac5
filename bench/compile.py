"""SmolLM2-135M compiled by edgefold beside what users would otherwise pick, in one run.

Same machine, 2 threads, batch 1, one protocol for every runtime (bench/anchors/protocol.py):
prefill the first 128 tokens of the Wikipedia evaluation text (prefill-128 ms), then 32 greedy
decode steps (context 128..160; decode ms/token is their median), over several runs.

Rows, for the fp32 export and the default build's compressed model:
- onnxruntime on the exported graph (its default optimizations): prefill on model.onnx, decode
  on the KV-cache decode graph edgefold derives from it, timed at position 128 (the step's work
  does not depend on what the cache holds);
- edgefold, templates only (0 tuning trials), the artifact `edgefold compile` writes; also the
  same kernels built for AVX2 (`mcpu` haswell) and the exact fp32-activation kernels, run here;
- edgefold tuned with a MetaSchedule budget (`--trials`): per kernel the faster of template and
  tuned ships (the selection is in the row);
- the weight-read roofline: packed weight bytes per token / this machine's read bandwidth,
  measured in this run by a TVM streaming read over 512 MiB on both cores;
- the anchors (onnxruntime-genai, OpenVINO GenAI, llama.cpp; bench/anchors/, installed by
  tools/setup-bench.sh into .venv-bench): a missing one is a skipped row with its reason;
- mobile-arm64: the NEON (sdot) decode checked under qemu-aarch64 against onnxruntime, and an
  estimated ms/token: weight bytes / the profile's DRAM bandwidth / the decode kernels'
  bandwidth efficiency measured here;
- quality: perplexity on 4,096 Wikipedia tokens in 256-token windows, onnxruntime on the ONNX
  file vs the edgefold artifact's own decode library (int8 activations).

    .venv/bin/python bench/compile.py [--quick] [--repeats 10] [--trials 64] [--no-anchors]

Writes bench/results/compile.json and compile.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from bench.anchors import protocol  # noqa: E402
from bench.common import Row, machine_lock, print_table, write_results  # noqa: E402

MODEL = protocol.MODEL
THREADS = protocol.THREADS
KV_CACHE = 256
PPL_TOKENS, PPL_WINDOW = 4096, 256


def load_prompt() -> dict:
    """The anchors' prompt (prepared by bench/anchors/prepare.py), or the same 128 ids without them."""
    try:
        return protocol.load_prompt()
    except (OSError, ValueError):
        from edgefold.evaluate.perplexity import wikipedia_tokens

        return {"input_ids": [int(t) for t in wikipedia_tokens(MODEL, protocol.PROMPT_TOKENS)]}


def compressed_model(cache: Path) -> Path:
    """The default build's compressed model (its recipe's passes), made once."""
    from edgefold.cli import main
    from edgefold.recipe import DEFAULT_PASSES

    out = cache / "default-recipe"
    if not (out / "model.onnx").exists():
        specs = [p["name"] + (":" + ",".join(f"{k}={v}" for k, v in p.items() if k != "name") if len(p) > 1 else "")
                 for p in DEFAULT_PASSES]
        args = ["compress", MODEL, *[a for s in specs for a in ("--pass", s)], "--no-eval", "-o", str(out)]
        if main(args) != 0:
            raise SystemExit("compressing with the default recipe failed")
    return out / "model.onnx"


def compile_artifact(model: Path, out: Path, *, profile: str = "host", trials: int = 0) -> dict:
    """Always through compile_model: its build cache (keyed by the model, target, budget and every
    source file of the compile stage) turns an unchanged build into a copy and a changed kernel
    into a rebuild. (Reusing `out` whenever it existed timed stale kernels.)"""
    from edgefold.atomic import read_own_manifest
    from edgefold.targets.tvm import compile_model

    compile_model(model, profile, output=out, seqs=[1, 128] if profile == "host" else [1], kv_cache=KV_CACHE,
                  trials=trials, check=profile == "host", latency=False, force=True)
    return read_own_manifest(out)


def edgefold_protocol(folder: Path, entries: list[dict], runs: int) -> dict:
    """The anchors' protocol on an edgefold artifact."""
    from edgefold.targets.tvm.llm.session import LlmSession

    prompt = load_prompt()
    ids = list(prompt["input_ids"])
    session = LlmSession(folder, entries)

    def prefill() -> int:
        return int(np.argmax(session.prefill(ids)))

    def step(token: int) -> int:
        return int(np.argmax(session.decode(token)))

    result = protocol.measure(prefill, step, runs, reset=session.reset)
    result.update(protocol.agreement(result["greedy_ids"], prompt.get("reference_greedy", [])))
    return result


def onnxruntime_rows(rows: list[Row], name: str, model: Path, setting: str, runs: int, scratch: Path) -> None:
    from edgefold.targets.tvm.execute import reference_session
    from edgefold.targets.tvm.references import References

    ids = np.array([load_prompt()["input_ids"]], np.int64)
    session = reference_session(model, threads=THREADS, exact=False)
    session.run(None, {"input_ids": ids})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"input_ids": ids})
        times.append((time.perf_counter() - start) * 1e3)
    rows.append(Row(name, "onnxruntime", f"{setting} prefill128", "latency_ms", statistics.median(times)))
    decode = References(model, scratch).session(KV_CACHE, exact=False, threads=THREADS)
    feeds = {i.name: np.zeros([int(d) for d in i.shape], np.float32) for i in decode.get_inputs()
             if i.name.startswith("past_")}
    times = []
    for position in range(protocol.PROMPT_TOKENS, protocol.PROMPT_TOKENS + protocol.DECODE_STEPS):
        feeds["input_ids"] = np.array([[ids[0, position % ids.shape[1]]]], np.int64)
        feeds["position"] = np.array([position], np.int64)
        start = time.perf_counter()
        decode.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    rows.append(Row(name, "onnxruntime", f"{setting} decode", "latency_ms", statistics.median(times[2:]),
                    extra={"note": "KV-cache decode graph at positions 128..160"}))


def edgefold_rows(rows: list[Row], name: str, setting: str, folder: Path, manifest: dict, runs: int,
                  method: str, bandwidth: float) -> dict:
    entries = [e for e in manifest["compile"]["buckets"] if e.get("kind") == "llm"]
    result = edgefold_protocol(folder, entries, runs)
    decode = next(e for e in entries if e["function"] == "decode")
    weight_bytes = int(decode["weight_bytes_per_token"])
    roofline = weight_bytes / (bandwidth * 1e9) * 1e3
    extra = {"isa": decode["isa"], "weight_bytes_per_token": weight_bytes, "vs_roofline": result["decode_ms"] / roofline,
             **{k: result[k] for k in ("greedy_prefix_match", "greedy_agreement", "compared", "decode_p90_ms")
                if k in result},
             "fidelity": decode.get("fidelity"), "selection": decode.get("selection")}
    rows.append(Row(name, method, f"{setting} decode", "latency_ms", result["decode_ms"], file_bytes=weight_bytes,
                    extra=extra))
    rows.append(Row(name, method, f"{setting} prefill128", "latency_ms", result["prefill128_ms"], file_bytes=weight_bytes,
                    extra={"isa": decode["isa"]}))
    return {"roofline_ms": roofline, "weight_bytes": weight_bytes, "result": result}


def variant_rows(rows: list[Row], name: str, setting: str, model: Path, runs: int, mcpu: str | None, fp32_act: bool,
                 method: str) -> None:
    """The same decoder built for another isa (AVX2 via mcpu haswell) or with exact fp32 activations, run here."""
    import tvm
    from tvm import relax

    from edgefold.targets.tvm.kernels.isa import float_only, isa_for
    from edgefold.targets.tvm.llm.program import build_module, plan_decoder, relax_pipeline
    from edgefold.targets.tvm.llm.spec import extract_decoder

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu or tvm.target.codegen.llvm_get_system_cpu(),
                                "num-cores": THREADS})
    isa = isa_for(target)
    isa = float_only(isa) if fp32_act else isa
    plan = plan_decoder(extract_decoder(model), isa, KV_CACHE)
    vms = {}
    for tokens in (1, protocol.PROMPT_TOKENS):
        mod, _ = build_module(plan, tokens)
        with tvm.transform.PassContext(opt_level=3):
            vms[tokens] = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=relax_pipeline()), tvm.cpu())
    blob = tvm.runtime.tensor(plan.blob.bytes())
    state = {"cache": None, "position": 0}
    tensor = lambda a: tvm.runtime.tensor(np.asarray(a))  # noqa: E731
    ids = load_prompt()["input_ids"]

    def reset():
        state["cache"] = tensor(np.zeros(plan.cache_len, np.float32))
        state["position"] = 0

    def prefill() -> int:
        logits = vms[protocol.PROMPT_TOKENS]["prefill"](tensor(np.array([ids], np.int64)), tensor(np.array([0], np.int64)),
                                                        tensor(np.array([len(ids)], np.int64)), state["cache"], blob)
        state["position"] = len(ids)
        return int(np.argmax(logits.numpy()))

    def step(token: int) -> int:
        logits = vms[1]["decode"](tensor(np.array([[token]], np.int64)), tensor(np.array([state["position"]], np.int64)),
                                  state["cache"], blob)
        state["position"] += 1
        return int(np.argmax(logits.numpy()))

    result = protocol.measure(prefill, step, runs, reset=reset)
    rows.append(Row(name, method, f"{setting} decode", "latency_ms", result["decode_ms"], extra={"isa": isa.name}))
    rows.append(Row(name, method, f"{setting} prefill128", "latency_ms", result["prefill128_ms"], extra={"isa": isa.name}))


def perplexity_rows(rows: list[Row], name: str, model: Path, folder: Path, manifest: dict) -> None:
    """Perplexity in 256-token windows: onnxruntime on the ONNX file vs the artifact's decode library."""
    from edgefold.evaluate.perplexity import wikipedia_tokens
    from edgefold.targets.tvm.execute import reference_session
    from edgefold.targets.tvm.llm.session import LlmSession

    ids = wikipedia_tokens(MODEL, PPL_TOKENS)
    windows = ids.reshape(-1, PPL_WINDOW)

    def nll(logits: np.ndarray, targets: np.ndarray) -> float:
        logits = logits.astype(np.float64)
        top = logits.max(-1, keepdims=True)
        lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
        return float((lse - logits[np.arange(len(targets)), targets]).sum())

    session = reference_session(model, threads=THREADS, exact=True)
    total = sum(nll(session.run(None, {"input_ids": w[None]})[0][0][:-1], w[1:]) for w in windows)
    rows.append(Row(name, "onnxruntime", f"perplexity {PPL_WINDOW}-token windows", "perplexity",
                    float(np.exp(total / (windows.size - len(windows)))), extra={"tokens": PPL_TOKENS}))
    llm = LlmSession(folder, [e for e in manifest["compile"]["buckets"] if e.get("kind") == "llm"])
    total = 0.0
    for w in windows:
        llm.reset()
        logits = np.stack([llm.decode(int(t)) for t in w[:-1]])
        total += nll(logits, w[1:])
    rows.append(Row(name, "edgefold", f"perplexity {PPL_WINDOW}-token windows (artifact, int8 activations)",
                    "perplexity", float(np.exp(total / (windows.size - len(windows)))), extra={"tokens": PPL_TOKENS}))


def arm_rows(rows: list[Row], name: str, model: Path, cache: Path, host: dict) -> None:
    """mobile-arm64: the NEON decode under qemu against onnxruntime, and an estimated ms/token."""
    from edgefold.targets.profiles import load_profile
    from edgefold.targets.tvm import run_artifact

    folder = cache / "arm64"
    try:
        compile_artifact(model, folder, profile="mobile-arm64")
        result = run_artifact(folder, count=8)["decode"]
    except Exception as error:  # noqa: BLE001 - no cross compiler / qemu here: a skipped row
        rows.append(Row(name, "edgefold mobile-arm64", "decode under qemu", "skipped", 0.0,
                        extra={"reason": str(error).splitlines()[0][:300]}))
        return
    rows.append(Row(name, "edgefold mobile-arm64", "decode under qemu vs onnxruntime", "argmax_agreement",
                    result["argmax_agreement"], extra={"cosine": result["cosine"], "steps": result["inputs_checked"]}))
    profile = load_profile("mobile-arm64")
    efficiency = host["roofline_ms"] / host["result"]["decode_ms"]  # the decode's share of the bandwidth here
    estimate = host["weight_bytes"] / (profile.dram.bandwidth_gbps * 1e9) * 1e3 / min(efficiency, 1.0)
    rows.append(Row(name, "edgefold mobile-arm64", "decode (estimated)", "latency_ms", estimate,
                    extra={"kind": "estimated", "dram_gbps": profile.dram.bandwidth_gbps, "host_efficiency": efficiency}))


def cuda_rows(rows: list[Row], name: str, model: Path, cache: Path) -> None:
    """server-gpu: whether the CUDA library builds (running it needs a GPU)."""
    from edgefold.targets.tvm import compile_model

    start = time.perf_counter()
    try:
        manifest = compile_model(model, "server-gpu", output=cache / "cuda", seqs=[1], kv_cache=KV_CACHE, trials=0,
                                 check=False, latency=False, force=True)
        built = 1.0
        extra = {"notes": manifest["compile"]["buckets"][0].get("notes", [])}
    except Exception as error:  # noqa: BLE001
        built, extra = 0.0, {"reason": str(error).splitlines()[0][:300]}
    rows.append(Row(name, "edgefold server-gpu", "CUDA library builds", "built", built,
                    seconds=round(time.perf_counter() - start, 1), extra=extra))


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, shape in zip(axes, ("decode", "prefill128")):
        picked = [r for r in rows if r.metric == "latency_ms" and r.setting.endswith(shape)
                  and r.method not in ("roofline",) and "estimated" not in r.setting]
        picked.sort(key=lambda r: r.value)
        labels = [f"{r.method}\n{r.setting.removesuffix(shape).strip()}" for r in picked]
        colors = ["tab:green" if r.method.startswith("edgefold") else "tab:gray" for r in picked]
        ax.barh(labels, [r.value for r in picked], color=colors)
        for r in rows:
            if r.method == "roofline" and shape == "decode":
                ax.axvline(r.value, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_title(f"SmolLM2-135M {shape}, 2 threads (red: weight-read roofline)")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10, help="protocol runs per configuration (>= 5)")
    parser.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per shape for the tuned rows")
    parser.add_argument("--quick", action="store_true", help="edgefold and onnxruntime only, 5 runs, no tuning")
    parser.add_argument("--no-anchors", action="store_true")
    args = parser.parse_args()
    runs = protocol.runs_for(5 if args.quick else args.repeats)

    from edgefold.atomic import cache_root
    from edgefold.export import export_model
    from edgefold.targets.tvm.llm.bandwidth import read_bandwidth_gbps

    cache = cache_root() / "bench-compile"
    cache.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    fp32 = export_model(MODEL).path
    compressed = compressed_model(cache)
    with machine_lock():
        bandwidth = read_bandwidth_gbps(THREADS)
        rows.append(Row("machine", "TVM streaming read", f"{THREADS} threads, 512 MiB", "bandwidth_gbps", bandwidth))
        scratch = cache / "ort"
        summary = {}
        for name, model, setting in ((MODEL, fp32, "fp32"), (f"{MODEL}-default", compressed, "default recipe")):
            onnxruntime_rows(rows, name, model, setting, runs, scratch / setting.replace(" ", "-"))
            folder = cache / f"artifact-{setting.replace(' ', '-')}"
            manifest = compile_artifact(model, folder)
            summary[setting] = edgefold_rows(rows, name, setting, folder, manifest, runs, "edgefold templates",
                                             bandwidth)
            rows.append(Row(name, "roofline", f"{setting} decode", "latency_ms", summary[setting]["roofline_ms"],
                            file_bytes=summary[setting]["weight_bytes"],
                            extra={"note": f"packed weight bytes per token / {bandwidth:.1f} GB/s"}))
            if not args.quick:
                tuned = cache / f"artifact-{setting.replace(' ', '-')}-tuned"
                edgefold_rows(rows, name, setting, tuned, compile_artifact(model, tuned, trials=args.trials), runs,
                              f"edgefold tuned ({args.trials} trials/shape)", bandwidth)
                variant_rows(rows, name, setting, model, runs, "haswell", False, "edgefold AVX2 kernels")
                variant_rows(rows, name, setting, model, runs, None, True, "edgefold exact fp32 activations")
        if not args.quick:
            perplexity_rows(rows, f"{MODEL}-default", compressed, cache / "artifact-default-recipe",
                            compile_artifact(compressed, cache / "artifact-default-recipe"))
        if not args.no_anchors and not args.quick:
            from bench.anchors.rows import anchor_rows

            rows.extend(anchor_rows(args.repeats))
    if not args.quick:
        arm_rows(rows, f"{MODEL}-default", compressed, cache, summary["default recipe"])
        cuda_rows(rows, f"{MODEL}-default", compressed, cache)
    path = write_results("compile" if not args.quick else "compile-quick", rows)
    plot(rows, path.with_suffix(".png"))
    print_table(f"SmolLM2-135M, {THREADS} threads, batch 1 (decode ms/token at context 128..160; prefill-128 ms)", rows)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
