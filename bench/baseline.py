"""Baseline: every built-in model as exported, before any pass.

For each model: export time and error against torch, the task metric measured with
onnxruntime (the number every pass is compared with), and one forward pass timed in
onnxruntime and in torch on the same real input (ratio = torch / onnxruntime, so
> 1 means the exported model is faster than the framework it came from).

    .venv/bin/python bench/baseline.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import Row, machine_lock, print_table, write_results  # noqa: E402
from edgefold import onnx_io  # noqa: E402
from edgefold.evaluate import evaluate  # noqa: E402
from edgefold.export import export_model  # noqa: E402
from edgefold.export.sources import builtin_plan  # noqa: E402
from edgefold.model_stats import file_bytes, parameter_count  # noqa: E402

MODELS = ["smollm2-135m", "minilm-l6", "efficientnet-lite0", "digits-cnn"]
THREADS = 2


def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timing_input(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if name == "smollm2-135m":  # one 128-token prompt, batch 1
        from edgefold.export.sample_inputs import real_input_sets
        from edgefold.models.metadata import Task

        tokens = real_input_sets(Task.CAUSAL_LM, "smollm2-135m")[1]["input_ids"][:, :48]
        return {"input_ids": np.tile(tokens, (1, 3))[:, :128]}
    return inputs


def main() -> None:
    torch.set_num_threads(THREADS)
    rows: list[Row] = []
    with machine_lock():
        for name in MODELS:
            handle = export_model(name)
            params = parameter_count(onnx_io.load(handle.path))
            size = file_bytes(handle.path)
            rows.append(Row(name, "export", "dynamo opset 21", "max_abs_error_vs_torch",
                            handle.info["max_abs_error_vs_torch"], params, size, handle.info.get("seconds")))
            start = time.perf_counter()
            metrics = evaluate(handle.path, reference_path=handle.path)
            seconds = time.perf_counter() - start
            for metric, value in metrics.items():
                rows.append(Row(name, "onnxruntime", "fp32", metric, value, params, size, round(seconds, 2)))
            inputs, _ = handle.reference_io()
            feeds = timing_input(name, inputs)
            session = onnx_io.session(handle.path, threads=THREADS)
            ort_s = median_seconds(lambda: onnx_io.run(session, feeds))
            module = builtin_plan(name).build_module().eval()
            order = [i.name for i in session.get_inputs()]
            tensors = [torch.from_numpy(feeds[k]) for k in order]
            with torch.no_grad():
                torch_s = median_seconds(lambda: module(*tensors))
            shape = "x".join(str(d) for d in next(iter(feeds.values())).shape)
            rows.append(Row(name, "onnxruntime", f"forward {shape}", "latency_ms", ort_s * 1e3, params, size))
            rows.append(Row(name, "torch", f"forward {shape}", "latency_ms", torch_s * 1e3, params, size))
            rows.append(Row(name, "torch/onnxruntime", f"forward {shape}", "latency_ratio", torch_s / ort_s))
            del module
    path = write_results("baseline", rows)
    print_table("baseline: exported models before any pass", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
