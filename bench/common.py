"""Shared plumbing for benchmarks: one row format, a table, JSON output, and a lock.

Every `bench/NAME.py` writes `bench/results/NAME.json` as a list of rows
{model, method, setting, metric, value, params, file_bytes, seconds} (extra keys
allowed) and prints the same rows as a table. The machine has 2 cores: benchmarks
take a machine-wide lock so two never run at once and skew each other's timings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

RESULTS_DIR = Path(__file__).parent / "results"
LOCK_PATH = Path(os.environ.get("EDGEFOLD_BENCH_LOCK", "/tmp/edgefold-bench.lock"))


@dataclass
class Row:
    model: str
    method: str
    setting: str
    metric: str
    value: float
    params: int | None = None
    file_bytes: int | None = None
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the benchmark lock (waits for any other benchmark to finish)."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    box = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = round(time.perf_counter() - start, 3)


def read_results(name: str) -> list[Row]:
    """The rows `write_results(name, ...)` wrote last (none when there is no such file)."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return []
    fields = set(Row.__dataclass_fields__) - {"extra"}
    return [Row(**{k: v for k, v in data.items() if k in fields}, extra={k: v for k, v in data.items() if k not in fields})
            for data in json.loads(path.read_text())]


def write_results(name: str, rows: list[Row]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    return path


def print_table(title: str, rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("model", "method", "setting", "metric", "value", "params", "MB", "seconds"):
        table.add_column(column, justify="right" if column in {"value", "params", "MB", "seconds"} else "left")
    for row in rows:
        table.add_row(row.model, row.method, row.setting, row.metric, f"{row.value:.4g}",
                      f"{row.params:,}" if row.params is not None else "",
                      f"{row.file_bytes / 1e6:.1f}" if row.file_bytes is not None else "",
                      f"{row.seconds:.2f}" if row.seconds is not None else "")
    # A log file or pipe gets the whole row on one line, not rich's 80-column wrap.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)


def apply_pass(source: Path, name: str, options: dict, out: Path):
    """Run pass `name` with `options` on the ONNX file `source` (seed 0), write it to
    out/model.onnx and check it. Returns (path, graph pass, outcome, seconds to run and save)."""
    from edgefold import onnx_io
    from edgefold.analysis import analyse
    from edgefold.passes.base import PassContext
    from edgefold.passes.registry import create_pass

    model = onnx_io.load(source)
    graph_pass = create_pass(name, options)
    start = time.perf_counter()
    outcome = graph_pass.run(model, PassContext(analysis=analyse(model), seed=0, model_path=Path(source)))
    path = onnx_io.save(outcome.model, out / "model.onnx")
    seconds = time.perf_counter() - start
    onnx_io.check(path)
    return path, graph_pass, outcome, seconds


def lee_embeddings(path: Path):
    """L2-normalised embeddings of the 50 Lee documents (how close an encoder stays to another)."""
    from edgefold import onnx_io
    from edgefold.datasets import lee_documents
    from edgefold.evaluate.similarity import embed

    return embed(onnx_io.session(path), onnx_io.metadata(path)["edgefold.tokenizer"], lee_documents())
