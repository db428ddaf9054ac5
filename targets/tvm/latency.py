"""`edgefold profile <artifact> --target host|rpc://TRACKER:PORT/KEY`: latency of a compiled artifact.

host: each shape's library runs in the Relax VM on this machine: a warm-up call, then
`repeats` timed calls (median / p90 / min), a per-kernel breakdown from the VM's call
instrument (kernel_times.py) and the process's peak memory.

rpc: the way device farms plug in. The library is uploaded to a device that a TVM RPC
tracker hands out for the key, loaded there, given the artifact's weights, and timed
with `time_evaluator` on the device's clock (one call per repeat). The kernel breakdown
needs a callback into this process, so a remote report has none.

Causal LMs get tokens/s per shape (decode: one token per call; prefill: the bucket's
sequence length per call).
"""

from __future__ import annotations

import json
import resource
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgefold import progress
from edgefold.errors import EdgefoldError
from edgefold.targets.rpc_url import RpcAddress
from edgefold.timing import DEFAULT_TOP, summarize_ms, time_calls
from edgefold.targets.tvm.references import References



def load_compiled(folder: Path) -> dict[str, Any]:
    """The `compile` section of an artifact's manifest (one-line errors when there is none)."""
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.exists():
        raise EdgefoldError(f"{folder} is not an edgefold artifact (no manifest.json)")
    compiled = json.loads(manifest_path.read_text()).get("compile")
    if not compiled:
        raise EdgefoldError(f"{folder} holds no compiled library (run `edgefold compile` first)")
    return compiled


def is_compiled_artifact(folder: Path) -> bool:
    """Whether `folder` is a compiled artifact (its manifest has a `compile` section)."""
    manifest_path = Path(folder) / "manifest.json"
    return manifest_path.exists() and "compile" in json.loads(manifest_path.read_text())


def _shape_inputs(entry: dict, meta: dict, references) -> tuple[list[str], dict[str, np.ndarray]]:
    from edgefold.targets.tvm.artifact import bucket_of

    return list(bucket_of(entry).shapes), references.inputs(entry, meta)


def _tokens(entry: dict, meta: dict) -> int | None:
    if meta.get("task") != "causal-lm" or "input_ids" not in entry["inputs"]:
        return None
    return int(np.prod(entry["inputs"]["input_ids"]["shape"]))


def _summary(times_ms: list[float], tokens: int | None) -> dict[str, Any]:
    result: dict[str, Any] = summarize_ms(times_ms)
    if tokens:
        result["tokens"] = tokens
        result["tokens_per_s"] = tokens / (result["median_ms"] / 1e3)
    return result


def measure_artifact(folder: Path, rpc: RpcAddress | None = None, *, repeats: int = 10,
                     top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Latency of the artifact's libraries on this machine (`rpc` None) or on an RPC device:
    {"target", "library_kind", "shapes": {label: {median_ms, p90_ms, min_ms, kernels, ...}}}."""
    folder = Path(folder)
    compiled = load_compiled(folder)
    if any(entry.get("kind") == "llm" for entry in compiled["buckets"]):
        if rpc is not None or compiled["library_kind"] != "x86_64":
            raise EdgefoldError(f"this LLM artifact ({compiled['library_kind']}) is profiled on this machine only "
                                "(--target host); on a device, run its runner with --llm (runner/runner.cc)")
        from edgefold.targets.tvm.llm.latency import measure_llm

        with progress.step(f"profile the LLM libraries on host ({repeats} decode steps)"):
            return measure_llm(folder, compiled, repeats=max(repeats, 8), top=top)
    with tempfile.TemporaryDirectory(prefix="edgefold-profile-") as scratch:  # a KV-cache decode graph goes here
        references = References(folder / "model.onnx", Path(scratch))
        if rpc is None:
            return _measure_host(folder, compiled, references, repeats, top)
        return _measure_rpc(folder, compiled, references, rpc, repeats)


def _measure_host(folder: Path, compiled: dict, references: References, repeats: int, top: int) -> dict[str, Any]:
    from edgefold.targets.tvm.execute import HostLibrary
    from edgefold.targets.tvm.kernel_times import kernel_times

    if compiled["library_kind"] != "x86_64":
        raise EdgefoldError(f"this artifact holds a {compiled['library_kind']} library: profile it on its device "
                            "with --target rpc://TRACKER_HOST:PORT/KEY")
    meta = compiled["model"]
    shapes = {}
    for entry in compiled["buckets"]:
        with progress.step(f"profile {entry['label']} on host ({repeats} runs)"):
            names, feeds = _shape_inputs(entry, meta, references)
            library = HostLibrary(folder / entry["library"], folder / entry["weights"], names)
            args = library.arguments(feeds)
            main = library.vm["main"]
            times = time_calls(lambda: main(*args, *library.weights), repeats)
            breakdown = kernel_times(library, feeds, repeats=max(1, min(3, repeats)))
        shapes[entry["label"]] = {"kind": "measured", **_summary(times, _tokens(entry, meta)),
                                  "kernels": breakdown["kernels"][:top],
                                  "kernel_count": len(breakdown["kernels"]),
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return {"target": "host", "library_kind": compiled["library_kind"], "shapes": shapes}


def _measure_rpc(folder: Path, compiled: dict, references: References, address: RpcAddress,
                 repeats: int) -> dict[str, Any]:
    import tvm
    from tvm import relax, rpc

    from edgefold.targets.tvm.weights import read_weights

    host, port, key = address
    try:
        socket.create_connection((host, port), timeout=5).close()  # connect_tracker would retry for a minute
        tracker = rpc.connect_tracker(host, port)
        remote = tracker.request(key, priority=1, session_timeout=600, max_retry=3)
    except Exception as error:  # noqa: BLE001 - any failure to reach the device is one user-facing line
        raise EdgefoldError(f"cannot get a device {key!r} from the RPC tracker at {host}:{port}: "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    device = remote.cuda() if compiled["library_kind"] == "cuda" else remote.cpu()
    meta = compiled["model"]
    shapes = {}
    for entry in compiled["buckets"]:
        with progress.step(f"profile {entry['label']} via {host}:{port}/{key} ({repeats} runs)"):
            names, feeds = _shape_inputs(entry, meta, references)
            library = folder / entry["library"]
            remote.upload(str(library))
            vm = relax.VirtualMachine(remote.load_module(library.name), device)
            args = [tvm.runtime.tensor(np.require(feeds[n], requirements="C"), device=device) for n in names]
            weights = [tvm.runtime.tensor(np.require(a, requirements="C"), device=device)
                       for _, a in read_weights(folder / entry["weights"])]
            timer = vm.time_evaluator("main", device, number=1, repeat=repeats + 1, min_repeat_ms=0)
            times = [s * 1e3 for s in timer(*args, *weights).results[1:]]  # the first repeat is the warm-up
        shapes[entry["label"]] = {"kind": "measured", **_summary(times, _tokens(entry, meta)), "kernels": [],
                                  "note": "per-kernel breakdown is available with --target host only"}
    return {"target": address.url, "library_kind": compiled["library_kind"], "shapes": shapes}
