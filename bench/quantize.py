"""Benchmark of the `quantize` pass beside onnxruntime's own quantizers, on the same models.

For every configuration: the task metric (SmolLM2 perplexity on 8,192 Wikipedia tokens,
MiniLM Lee-pairs Spearman, EfficientNet-Lite0 top-1 agreement with the fp32 model), the
file size, the stored bits per weight, the pass time, and one forward pass timed in
onnxruntime (2 threads). onnxruntime's alternatives are `quantize_dynamic` (int8 weights,
activations quantized at run time) and `MatMulNBitsQuantizer` (4-bit RTN, asymmetric,
block 32 and 128; it leaves Gather tables, so SmolLM2's tied embedding stays fp32).

onnxruntime rewrites DequantizeLinear(constant int8/int4 weight) -> MatMul into its own
MatMulNBits at optimisation level >= extended, and runs that with int8 activations
(session option `session.qdq_matmulnbits_accuracy_level`, default 4). That is no longer
weight-only quantization, so where a graph has such a pattern the metric is measured
twice: with the default session (as `edgefold eval` does) and with the accuracy level set
to 1 (fp32 activations, what the graph says): metric name suffix `_fp32_act`.

    flock-free: the script takes the machine lock itself.
    .venv/bin/python bench/quantize.py [--quick]   (--quick: 1,024 tokens, no ORT baselines)
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

from bench.common import RESULTS_DIR, Row, machine_lock, print_table, write_results  # noqa: E402
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
    "smollm2-135m": ["dynamic", "nbits32", "nbits128"],
    "minilm-l6": ["dynamic", "nbits32", "nbits128"],
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
    if which == "dynamic":
        quantize_dynamic(str(handle.path), str(path), weight_type=QuantType.QInt8, use_external_data_format=True)
        setting = "quantize_dynamic int8 (per tensor, activations int8 at run time)"
    else:
        block = int(which.removeprefix("nbits"))
        quantizer = MatMulNBitsQuantizer(onnx.load(str(handle.path)), block_size=block, is_symmetric=False)
        quantizer.process()
        quantizer.model.save_model_to_file(str(path), use_external_data_format=True)
        setting = f"MatMulNBits 4-bit RTN asym block {block} (MatMul only)"
    return path, setting, time.perf_counter() - start


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
                "tab:red" if row.method.startswith("onnxruntime") else "black")
            ax.scatter(row.file_bytes / 1e6, row.value, color=colour, s=18)
            ax.annotate(row.setting.split(",")[0][:24], (row.file_bytes / 1e6, row.value), fontsize=5.5,
                        xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("file MB")
        ax.set_ylabel(primary[model])
        ax.set_title(f"{model}: blue edgefold, red onnxruntime", fontsize=8)
        if model == "smollm2-135m":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1,024 tokens and no onnxruntime baselines")
    parser.add_argument("--models", nargs="*", default=list(CONFIGS))
    args = parser.parse_args()
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
                    rows += measure(handle, path, model_name, "onnxruntime.quantization", setting, params,
                                    seconds, tokens, {})
    name = "quantize_quick" if args.quick else "quantize"
    out = write_results(name, rows)
    plot_summary(rows, RESULTS_DIR / f"{name}.png")
    print_table("quantize: weight-only quantization vs onnxruntime's quantizers", rows)
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
