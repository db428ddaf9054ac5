"""What a compiled bucket is checked against, and on which inputs.

Most buckets compile the artifact's `model.onnx` at a static shape: their reference is
onnxruntime on that graph and their inputs come from `inputs.check_inputs`.

A causal LM's `decode` bucket compiles the one-token graph with a fixed-size KV cache
(`kv_cache.make_decode_graph`, derived from `model.onnx` each time it is needed: it is
deterministic and takes seconds, and storing it would duplicate every weight). Its check
inputs are real decode steps: onnxruntime runs the decode graph over Wikipedia tokens
from an empty cache, and every step's (token, position, caches) becomes one input set,
so the compiled library is compared at real cache contents, not zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefold import progress

WARM_TOKENS = 8  # decode steps run before the checked ones, so caches hold real keys/values


class References:
    """Reference graphs and check inputs for the buckets of one model."""

    def __init__(self, model_path: Path, workdir: Path):
        self.model_path = Path(model_path)
        self.workdir = Path(workdir)
        self._decode_graphs: dict[int, Path] = {}
        self._sessions: dict[tuple[Path, bool], Any] = {}
        self._sets: dict[str, list] = {}  # bucket label -> the last check sets (timing reuses one)

    def graph_for(self, kv_cache: int) -> Path:
        """The graph a bucket compiles: model.onnx, or its KV-cache decode graph."""
        if not kv_cache:
            return self.model_path
        if kv_cache not in self._decode_graphs:
            from edgefold.targets.tvm.kv_cache import make_decode_graph

            path = self.workdir / f"kv-decode-{kv_cache}" / "model.onnx"
            with progress.step(f"decode graph with a {kv_cache}-slot KV cache"):
                make_decode_graph(self.model_path, path, kv_cache)
            self._decode_graphs[kv_cache] = path
        return self._decode_graphs[kv_cache]

    def session(self, kv_cache: int, exact: bool = True, threads: int | None = None):
        """The onnxruntime session of the graph a bucket compiles (exact arithmetic or not), kept for reuse."""
        from edgefold.targets.tvm.execute import reference_session

        key = (self.graph_for(kv_cache), exact)
        if key not in self._sessions:
            self._sessions[key] = reference_session(key[0], threads=threads, exact=exact)
        return self._sessions[key]

    def check_sets(self, entry: dict, meta: dict, count: int) -> list[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
        """`count` (feeds, reference outputs) pairs for a bucket entry of the manifest."""
        kv_cache = int(entry.get("kv_cache", 0))
        session = self.session(kv_cache)
        names = [o.name for o in session.get_outputs()]
        if kv_cache:
            pairs = _decode_steps(session, meta, kv_cache, count)
        else:
            from edgefold.targets.tvm.artifact import bucket_of
            from edgefold.targets.tvm.inputs import check_inputs

            wanted = {i.name for i in session.get_inputs()}
            sets = check_inputs(bucket_of(entry), meta["task"], meta.get("tokenizer"), {}, count)
            pairs = [(feeds, session.run(names, {k: v for k, v in feeds.items() if k in wanted})) for feeds in sets]
        self._sets[entry.get("label", "")] = pairs
        return pairs

    def inputs(self, entry: dict, meta: dict) -> dict[str, np.ndarray]:
        """One real input set (for timing): the first one already checked, if any."""
        pairs = self._sets.get(entry.get("label", "")) or self.check_sets(entry, meta, 1)
        return pairs[0][0]


def _decode_steps(session, meta: dict, kv_cache: int, count: int):
    from edgefold.evaluate.perplexity import wikipedia_tokens

    steps = min(WARM_TOKENS + count, kv_cache)
    ids = wikipedia_tokens(meta.get("tokenizer") or meta["name"], steps)
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name.startswith("past_")}
    pairs = []
    for position in range(steps):
        feeds["input_ids"] = np.asarray(ids[position:position + 1], dtype=np.int64).reshape(1, 1)
        feeds["position"] = np.array([position], dtype=np.int64)
        outputs = session.run(names, feeds)
        if position >= steps - count:
            pairs.append(({k: v.copy() for k, v in feeds.items()}, outputs))
        for name, value in zip(names, outputs):
            if name.startswith("present_"):
                feeds["past_" + name[len("present_"):]] = value
    return pairs


def compare_bucket(entry: dict, outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """Fidelity of one input set: for a decode bucket, argmax and cosine on the logits, with the
    caches' worst error beside them."""
    from edgefold.targets.tvm.execute import compare

    if not entry.get("kv_cache"):
        return compare(outputs, reference)
    values = compare(outputs[:1], reference[:1])
    values["cache_max_abs_error"] = max(float(np.abs(np.asarray(a).reshape(b.shape) - b).max())
                                        for a, b in zip(outputs[1:], reference[1:]))
    return values
