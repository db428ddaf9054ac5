"""Benchmark of the `quantize` pass beside onnxruntime's own quantizers, on the same models.

For every configuration: the task metric (SmolLM2 perplexity on 8,192 Wikipedia tokens,
MiniLM Lee-pairs Spearman, EfficientNet-Lite0 top-1 agreement with the fp32 model), the
file size, the stored bits per weight, the pass time, and one forward pass timed in
onnxruntime (2 threads). onnxruntime's alternatives are `quantize_dynamic` (int8 weights,
activations quantized at run time) and `MatMulNBitsQuantizer` (4-bit RTN, asymmetric,
block 32 and 128; HQQ block 128, data-free; GPTQ symmetric block 128 with act_order on the
same 32 Lee background documents edgefold's calibrated settings read). It leaves Gather
tables, so SmolLM2's tied embedding stays fp32 in those rows. Not onnxruntime but in the same
table: NNCF's `compress_weights` (INT4_ASYM, group 128, ratio 1.0; data-free, and with AWQ +
scale estimation on the same 32 documents), run in .venv-bench (bench/anchors/run_nncf.py);
NNCF keeps the embedding and the last layer in int8 by default.

onnxruntime rewrites DequantizeLinear(constant int8/int4 weight) -> MatMul into its own
MatMulNBits at optimisation level >= extended, and runs that with int8 activations
(session option `session.qdq_matmulnbits_accuracy_level`, default 4). That is no longer
weight-only quantization, so where a graph has such a pattern the metric is measured
twice: with the default session (as `edgefold eval` does) and with the accuracy level set
to 1 (fp32 activations, what the graph says): metric name suffix `_fp32_act`.

    flock-free: the script takes the machine lock itself.
    .venv/bin/python bench/quantize.py [--quick]   (--quick: 1,024 tokens, no ORT baselines)
    .venv/bin/python bench/quantize.py --models smollm2-135m minilm-l6 --baselines hqq128,gptq128,nncf-data-free,nncf-awq-se
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import RESULTS_DIR, Row, machine_lock, print_table, read_results, write_results  # noqa: E402
from edgefold import onnx_io  # noqa: E402
from edgefold.analysis import analyse  # noqa: E402
from edgefold.evaluate import evaluate  # noqa: E402
from edgefold.export import export_model  # noqa: E402
from edgefold.model_stats import file_bytes, parameter_count  # noqa: E402
from edgefold.passes.base import PassContext  # noqa: E402
from edgefold.passes.registry import create_pass  # noqa: E402
from edgefold.passes.quantize.quantize import plot_bits  # noqa: E402
from edgefold.targets.profiles import load_profile  # noqa: E402

THREADS = 2
PROFILE = "server-gpu"  # lists fp8 (host does not); the pass only reads its weight formats

CONFIGS: dict[str, list[tuple[str, dict | None]]] = {
    "smollm2-135m": [
        ("fp32", None),
        ("int8", {"format": "int8"}),
        ("int4-g128-asym", {"format": "int4", "block": 128}),
        ("int4-g128-asym, embedding fp32 (as onnxruntime)", {"format": "int4", "block": 128, "embedding": "keep"}),
        ("int4-g128-asym, embedding fp32, act_scale=0.5",
         {"format": "int4", "block": 128, "embedding": "keep", "act_scale": 0.5}),
        ("int4-g128-asym, embedding int8, act_scale=0.5",
         {"format": "int4", "block": 128, "embedding": "int8", "act_scale": 0.5}),
        ("int4-g128-asym, gptq (act_order, 32 Lee documents)", {"format": "int4", "block": 128, "method": "gptq"}),
        ("int4-g32-asym", {"format": "int4", "block": 32}),
        ("int4-g32-asym, embedding fp32 (as onnxruntime)", {"format": "int4-g32-asym", "embedding": "keep"}),
        ("int4-ch-asym (per channel), embedding int8", {"format": "int4", "block": 0, "embedding": "int8"}),
        ("fp8", {"format": "fp8"}),
        ("int4-g32-min, embedding int8-g32 (the GGUF grid itself)",
         {"format": "int4-g32-min", "embedding": "int8-g32"}),
        ("mixed avg_bits=4.5", {"avg_bits": 4.5}),
        ("mixed avg_bits=4.5, calibration", {"avg_bits": 4.5, "sensitivity": "calibration"}),
        ("mixed avg_bits=4.5 over linears, embedding int8", {"avg_bits": 4.5, "embedding": "int8"}),
        ("mixed avg_bits=6", {"avg_bits": 6.0}),
        ("int4-g128-asym as MatMulNBits (emit=onnxruntime), embedding int8",
         {"format": "int4", "block": 128, "embedding": "int8", "emit": "onnxruntime"}),
    ],
    "minilm-l6": [
        ("fp32", None),
        ("int8", {"format": "int8"}),
        ("int4-g128-asym", {"format": "int4", "block": 128}),
        ("int4-g32-asym", {"format": "int4", "block": 32}),
        ("int4-g128-asym, gptq (act_order, 32 Lee documents)", {"format": "int4", "block": 128, "method": "gptq"}),
        ("fp8", {"format": "fp8"}),
        ("mixed avg_bits=4.5", {"avg_bits": 4.5}),
        ("mixed avg_bits=6", {"avg_bits": 6.0}),
    ],
    "efficientnet-lite0": [
        ("fp32", None),
        ("int8", {"format": "int8"}),
        ("fp8", {"format": "fp8"}),
        ("mixed avg_bits=4.5", {"avg_bits": 4.5}),
        ("mixed avg_bits=6", {"avg_bits": 6.0}),
    ],
}
ORT_BASELINES = {
    "smollm2-135m": ["dynamic", "nbits32", "nbits128", "hqq128", "gptq128", "nncf-data-free", "nncf-awq-se"],
    "minilm-l6": ["dynamic", "nbits32", "nbits128", "hqq128", "gptq128", "nncf-data-free", "nncf-awq-se"],
    "efficientnet-lite0": ["dynamic"],
}


# ---------------------------------------------------------------- metrics


def fp32_activation_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def metrics(handle, path: Path, tokens: int, fp32_activations: bool) -> dict[str, float]:
    if not fp32_activations:
        return evaluate(path, reference_path=handle.path, tokens=tokens, task=handle.task, tokenizer=handle.tokenizer)
    session = fp32_activation_session(path)
    task = handle.task.value
    if task == "causal-lm":
        from edgefold.evaluate.perplexity import perplexity

        return {"perplexity": perplexity(session, handle.tokenizer, tokens=tokens, chunk=min(512, tokens))}
    if task == "sentence-embedding":
        from edgefold.evaluate.similarity import lee_spearman

        return {"lee_spearman": lee_spearman(session, handle.tokenizer)}
    from edgefold.evaluate import vision

    return vision.compare_classifiers(onnx_io.session(handle.path), session)


def ort_fuses_dequantize(path: Path) -> bool:
    import onnx

    """Does the graph have DequantizeLinear(constant weight) -> MatMul/Gemm, which onnxruntime
    rewrites into MatMulNBits with int8 activations?"""
    proto = onnx_io.load_proto(path)
    integer = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    codes = {t.name for t in proto.graph.initializer if t.data_type in integer}
    constants = {t.name for t in proto.graph.initializer}
    casts = {n.output[0] for n in proto.graph.node if n.op_type == "Cast" and n.input[0] in constants}
    readers = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    for node in proto.graph.node:
        if (node.op_type == "DequantizeLinear" and node.input[0] in codes
                and all(i in constants or i in casts for i in node.input if i)):
            if any(op in ("MatMul", "Gemm") for op in readers.get(node.output[0], [])):
                return True
    return False


def forward_ms(handle, path: Path) -> float:
    session = onnx_io.session(path, threads=THREADS)
    inputs, _ = handle.reference_io()
    if handle.task.value == "causal-lm":
        ids = next(iter(inputs.values()))
        inputs = {"input_ids": np.tile(ids.reshape(-1), 8)[:128].reshape(1, 128)}
    onnx_io.run(session, inputs)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        onnx_io.run(session, inputs)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ---------------------------------------------------------------- producing models


def run_edgefold(handle, options: dict, out_dir: Path, profile) -> tuple[Path, dict, float]:
    model = onnx_io.load(handle.path)
    context = PassContext(analysis=analyse(onnx_io.load(handle.path)), profile=profile, model_path=handle.path,
                          workdir=out_dir)
    start = time.perf_counter()
    outcome = create_pass("quantize", options).run(model, context)
    path = onnx_io.save(outcome.model, out_dir / "model.onnx")
    seconds = time.perf_counter() - start
    onnx_io.check(path)
    return path, outcome.stats, seconds


def run_onnxruntime(handle, which: str, out_dir: Path) -> tuple[Path, str, float]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    start = time.perf_counter()
    if which.startswith("nncf-"):
        return run_nncf(handle, which.removeprefix("nncf-"), out_dir)
    if which == "dynamic":
        quantize_dynamic(str(handle.path), str(path), weight_type=QuantType.QInt8, use_external_data_format=True)
        return path, "quantize_dynamic int8 (per tensor, activations int8 at run time)", time.perf_counter() - start
    # MatMulNBitsQuantizer gets the weights in memory: given a path, its GPTQ serialises the graph
    # without them and then looks for the external data file beside the working folder.
    model = onnx.load(str(handle.path))
    if which.startswith("nbits"):
        block = int(which.removeprefix("nbits"))
        quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=False)
        setting = f"MatMulNBits 4-bit RTN asym block {block} (MatMul only)"
    elif which == "hqq128":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

        quantizer = MatMulNBitsQuantizer(model, block_size=128, is_symmetric=False,
                                         algo_config=HQQWeightOnlyQuantConfig(block_size=128, bits=4))
        setting = "MatMulNBits 4-bit HQQ block 128 (MatMul only, data-free)"
    elif which == "gptq128":
        from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig

        config = GPTQWeightOnlyQuantConfig(calibration_data_reader=_lee_feeds(handle.path), block_size=128,
                                           actorder=True)
        # Symmetric: its asymmetric packing of zero points fails when K / 128 is odd (MiniLM's 384,
        # SmolLM2's 576: "cannot reshape array of size 576 into shape (384,newaxis)", onnxruntime 1.32).
        quantizer = MatMulNBitsQuantizer(model, block_size=128, is_symmetric=True, algo_config=config)
        setting = "MatMulNBits 4-bit GPTQ sym block 128, act_order (MatMul only, 32 Lee documents)"
    else:
        raise ValueError(f"unknown onnxruntime baseline {which}")
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=True)
    return path, setting, time.perf_counter() - start


def tool_of(which: str) -> str:
    """The `method` of a comparison row: which tool made it."""
    return "nncf" if which.startswith("nncf-") else "onnxruntime.quantization"


def run_nncf(handle, variant: str, out_dir: Path) -> tuple[Path, str, float]:
    """NNCF's compress_weights (INT4_ASYM, group 128), in .venv-bench (bench/anchors/run_nncf.py)."""
    import json
    import subprocess

    python = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python} (tools/setup-bench.sh makes it)")
    cmd = [str(python), "-m", "bench.anchors.run_nncf", "--model", str(handle.path), "--out", str(out_dir),
           "--variant", variant]
    if variant == "awq-se":
        feeds = out_dir.parent / f"{out_dir.name}-feeds.npz"
        np.savez(feeds, **{f"{i}:{k}": v for i, feed in enumerate(_lee_feeds(handle.path)) for k, v in feed.items()})
        cmd += ["--feeds", str(feeds)]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nncf {variant} failed: {done.stderr.strip().splitlines()[-1:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    what = "data-free" if variant == "data-free" else "AWQ + scale estimation, 32 Lee documents"
    setting = (f"NNCF {report['nncf']} compress_weights INT4_ASYM group 128, ADJUST fallback ({what}; "
               "embedding, last layer int8)")
    return out_dir / "model.onnx", setting, report["seconds"]


def _lee_feeds(model_path: Path) -> list[dict[str, np.ndarray]]:
    """The same 32 Lee background documents edgefold's calibrated settings read, as model feeds."""
    from edgefold.passes.common.calibration import calibration_feeds

    names = {i.name for i in onnx_io.session(model_path).get_inputs()}
    return [{k: v for k, v in feed.items() if k in names}
            for feed in calibration_feeds(Path(model_path), 32, "bench", "")]


# ---------------------------------------------------------------- main


def plot_summary(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in CONFIGS if any(r.model == m for r in rows)]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2))
    axes = np.atleast_1d(axes)
    primary = {"smollm2-135m": "perplexity", "minilm-l6": "lee_spearman", "efficientnet-lite0": "top1_agreement"}
    for ax, model in zip(axes, models):
        for row in rows:
            if row.model != model or row.metric != primary[model] or row.file_bytes is None:
                continue
            colour = "tab:blue" if row.method == "edgefold quantize" else (
                "tab:red" if row.method.startswith("onnxruntime") else "tab:green" if row.method == "nncf" else "black")
            ax.scatter(row.file_bytes / 1e6, row.value, color=colour, s=18)
            ax.annotate(row.setting.split(",")[0][:24], (row.file_bytes / 1e6, row.value), fontsize=5.5,
                        xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("file MB")
        ax.set_ylabel(primary[model])
        ax.set_title(f"{model}: blue edgefold, red onnxruntime, green NNCF", fontsize=8)
        if model == "smollm2-135m":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1,024 tokens and no onnxruntime baselines")
    parser.add_argument("--models", nargs="*", default=list(CONFIGS))
    parser.add_argument("--baselines", default=None,
                        help="comma-separated baselines (e.g. hqq128,gptq128,nncf-awq-se) to run alone: their rows "
                             "replace the same rows of bench/results/quantize.json, every other row is kept")
    parser.add_argument("--skip", default=None, help="with --baselines: MODEL:BASELINE pairs not to run")
    args = parser.parse_args()
    if args.baselines:
        run_baselines_only(args.models, args.baselines.split(","), frozenset(args.skip.split(",")) if args.skip else frozenset())
        return
    tokens = 1024 if args.quick else 8192
    profile = load_profile(PROFILE)
    rows: list[Row] = []
    with machine_lock(), tempfile.TemporaryDirectory(prefix="bench-quantize-") as scratch:
        for model_name in args.models:
            handle = export_model(model_name)
            params = parameter_count(onnx_io.load(handle.path))
            for index, (setting, options) in enumerate(CONFIGS[model_name]):
                out_dir = Path(scratch) / model_name / f"{index:02d}"
                out_dir.mkdir(parents=True)
                extra: dict = {}
                if options is None:
                    path, seconds, method = handle.path, None, "none"
                else:
                    path, stats, seconds = run_edgefold(handle, options, out_dir, profile)
                    method = "edgefold quantize"
                    extra = {"avg_bits": stats["avg_bits"], "formats": stats["formats"], "options": options}
                    if stats["mode"] == "mixed":
                        tag = "".join(c if c.isalnum() else "_" for c in setting)[:48].strip("_")
                        plot_bits(stats["layers"], RESULTS_DIR / f"quantize_bits_{model_name}_{tag}.png",
                                  title=f"{model_name} {setting}: {stats['avg_bits']:.3f} bits/weight")
                    if "budget" in stats:
                        extra["budget"] = {k: v for k, v in stats["budget"].items() if k != "candidates"}
                rows += measure(handle, path, model_name, method, setting, params, seconds, tokens, extra)
                print_table(f"quantize: {model_name} so far", [r for r in rows if r.model == model_name])
            if not args.quick:
                for which in ORT_BASELINES[model_name]:
                    out_dir = Path(scratch) / model_name / f"ort-{which}"
                    path, setting, seconds = run_onnxruntime(handle, which, out_dir)
                    rows += measure(handle, path, model_name, tool_of(which), setting, params, seconds, tokens, {})
    name = "quantize_quick" if args.quick else "quantize"
    out = write_results(name, rows)
    plot_summary(rows, RESULTS_DIR / f"{name}.png")
    print_table("quantize: weight-only quantization vs onnxruntime's quantizers", rows)
    print(f"wrote {out}")


def run_baselines_only(models: list[str], baselines: list[str], skip: frozenset[str] = frozenset()) -> None:
    """Rerun some comparison rows (8,192 tokens) without the rest of the benchmark: the edgefold rows
    and the other baselines stay as the last full run wrote them."""
    rows = []
    with machine_lock(), tempfile.TemporaryDirectory(prefix="bench-quantize-") as scratch:
        for model_name in models:
            handle = export_model(model_name)
            params = parameter_count(onnx_io.load(handle.path))
            for which in baselines:
                if which not in ORT_BASELINES[model_name] or f"{model_name}:{which}" in skip:
                    continue
                out_dir = Path(scratch) / model_name / f"ort-{which}"
                try:
                    model_path, setting, seconds = run_onnxruntime(handle, which, out_dir)
                except Exception as error:  # one failing tool must not lose the rows measured before it
                    print(f"{model_name} {which}: FAILED, no row: {error}", flush=True)
                    continue
                rows += measure(handle, model_path, model_name, tool_of(which), setting, params, seconds, 8192, {})
                print_table(f"quantize: {model_name} {which}", rows[-3:])
    replaced = {(r.model, r.method, r.setting) for r in rows}
    kept = [r for r in read_results("quantize") if (r.model, r.method, r.setting) not in replaced]
    out = write_results("quantize", kept + rows)
    plot_summary(kept + rows, RESULTS_DIR / "quantize.png")
    print_table("quantize: the rerun rows", rows)
    print(f"wrote {out}")


def measure(handle, path, model_name, method, setting, params, seconds, tokens, extra) -> list[Row]:
    size = file_bytes(path)
    rows = []
    values = metrics(handle, path, tokens, fp32_activations=False)
    for metric, value in values.items():
        rows.append(Row(model_name, method, setting, metric, value, params, size, seconds, dict(extra)))
    if method == "edgefold quantize" and ort_fuses_dequantize(path):
        for metric, value in metrics(handle, path, tokens, fp32_activations=True).items():
            rows.append(Row(model_name, method, setting, f"{metric}_fp32_act", value, params, size, seconds,
                            dict(extra)))
    rows.append(Row(model_name, method, setting, "latency_ms", forward_ms(handle, path), params, size, seconds,
                    dict(extra)))
    return rows


if __name__ == "__main__":
    main()
