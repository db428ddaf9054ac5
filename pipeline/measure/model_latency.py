"""`edgefold profile`: latency of a built model on a target.

Targets: `onnxruntime` (measured here, with onnxruntime's per-node profiler for the
kernel breakdown) and `estimate` (the calibrated roofline of targets/estimate.py for the
artifact's device profile). Causal LMs are timed at two shapes: one token (a decode
step without KV cache) and a 128-token prefill, reported as tokens/s.
"""

from __future__ import annotations

import json
import resource
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgefold import onnx_io
from edgefold.timing import DEFAULT_TOP, summarize_ms, time_calls
from edgefold.models.metadata import Task, model_task

PREFILL_TOKENS = 128


def shapes_to_time(model_path: Path, reference_inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Named input sets: decode/prefill for causal LMs, the reference batch otherwise."""
    task = model_task(onnx_io.metadata(model_path))
    if task is Task.CAUSAL_LM and "input_ids" in reference_inputs:
        ids = reference_inputs["input_ids"].reshape(-1)
        prefill = np.resize(ids, PREFILL_TOKENS).reshape(1, PREFILL_TOKENS).astype(np.int64)
        return {"decode": {"input_ids": prefill[:, :1].copy()}, "prefill": {"input_ids": prefill}}
    return {"forward": reference_inputs}


def real_inputs(model_path: Path) -> dict[str, np.ndarray]:
    """Real inputs for the model's task (from its metadata); typed random ones otherwise."""
    from edgefold.export.onnx_import import synthetic_inputs
    from edgefold.export.sample_inputs import real_input_sets
    from edgefold.models.metadata import TOKENIZER_KEY

    meta = onnx_io.metadata(model_path)
    task = model_task(meta)
    if task is Task.GENERIC:
        return synthetic_inputs(onnx_io.load_proto(model_path))
    return real_input_sets(task, meta.get(TOKENIZER_KEY))[0]


def _tokens(feeds: dict[str, np.ndarray]) -> int:
    return int(feeds["input_ids"].shape[-1]) if "input_ids" in feeds else int(next(iter(feeds.values())).shape[0])


def onnxruntime_node_times(model_path: Path, feeds: dict[str, np.ndarray], *, repeats: int = 10,
                        threads: int | None = None, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Median/p90/min, per-kernel times from onnxruntime's profiler, and peak memory."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 2
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as scratch:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        times = time_calls(lambda: session.run(names, feeds), repeats)
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            args = event.get("args", {})
            per_node[(event["name"][: -len("_kernel_time")], args.get("op_name", ""))] += event.get("dur", 0) / 1e3
    total = sum(per_node.values()) or 1.0
    labels = _node_labels(model_path)
    kernels = [{"name": labels.get(name, name), "node": name, "op": op, "ms": ms / (repeats + 1), "share": ms / total}
               for (name, op), ms in sorted(per_node.items(), key=lambda item: -item[1])[:top]]
    return {"kind": "measured", **summarize_ms(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "kernels": kernels,
            "tokens": _tokens(feeds)}


def _node_labels(model_path: Path) -> dict[str, str]:
    """Node name -> torch module path, for readable kernel tables."""
    from edgefold.export.graph_tidy import NAME_SCOPES_KEY

    labels = {}
    for node in onnx_io.load_proto(model_path).graph.node:
        for prop in node.metadata_props:
            if prop.key == NAME_SCOPES_KEY:
                scopes = [s.strip(" '") for s in prop.value.strip("[]").split(",") if s.strip(" '")]
                if len(scopes) >= 2:
                    labels[node.name] = f"{scopes[-2]} ({node.op_type})"
    return labels


def calibration_factor(model_path: Path, layers, feeds: dict[str, np.ndarray], measured_ms: float) -> float:
    """Measured host latency / roofline with the host profile (>= 1 in practice)."""
    from edgefold.targets.estimate import estimate
    from edgefold.targets.profiles import load_profile

    ideal = estimate(layers, load_profile("host"), tokens=_tokens(feeds))["median_ms"]
    return measured_ms / ideal if ideal > 0 else 1.0


def onnxruntime_latency(model_path: Path, *, repeats: int = 10, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Every timed shape of the model in onnxruntime on this machine, with per-kernel times."""
    return _per_shape(model_path, "onnxruntime",
                      lambda feeds: onnxruntime_node_times(model_path, feeds, repeats=repeats, top=top))


def estimated_latency(model_path: Path, device, *, repeats: int = 10, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Every timed shape of the model on `device` (a DeviceProfile) by the roofline, calibrated
    against onnxruntime on this machine."""
    from edgefold.analysis import analyse
    from edgefold.targets.estimate import estimate

    layers = analyse(onnx_io.load(model_path)).layers

    def one_shape(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        host = onnxruntime_node_times(model_path, feeds, repeats=max(3, repeats // 2))
        factor = calibration_factor(model_path, layers, feeds, host["median_ms"])
        result = estimate(layers, device, tokens=_tokens(feeds), calibration=factor, top=top)
        result["calibrated_against_host_ms"] = host["median_ms"]
        return result

    return _per_shape(model_path, "estimate", one_shape)


def _per_shape(model_path: Path, target: str, time_shape) -> dict[str, Any]:
    """{"target", "shapes": {name: figures}} over the model's timed shapes; adds tokens/s for LMs."""
    results: dict[str, Any] = {"target": target, "shapes": {}}
    for shape_name, feeds in shapes_to_time(model_path, real_inputs(model_path)).items():
        result = time_shape(feeds)
        if shape_name in {"decode", "prefill"}:
            result["tokens_per_s"] = result["tokens"] / (result["median_ms"] / 1e3)
        results["shapes"][shape_name] = result
    return results
