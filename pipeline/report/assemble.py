"""Assemble report.json / junit.xml / report.html for a finished build."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from edgefold.manifest import write_json
from edgefold.report import REPORT_SCHEMA, write_html, write_junit

REPORT_FILE = "report.json"
JUNIT_FILE = "junit.xml"
HTML_FILE = "report.html"


def layer_sizes(before, after) -> list[dict[str, Any]]:
    """Every weight of the original model once (a tied embedding/lm_head too) with the bytes it
    takes in the final model: all the bytes that hold it there (packed codes, scales, zero points,
    minimums), so bits per weight are those of the real result. Weights are matched by name or by
    the node that reads them; a weight the passes added is listed after, with nothing before."""
    if before is None:
        return []
    finals = list(after.weights) if after is not None else []
    by_key = {key: index for index, weight in reversed(list(enumerate(finals))) for key in weight.keys()}
    used: set[int] = set()
    rows = []
    for weight in before.weights:
        index = next((by_key[k] for k in weight.keys() if k in by_key and by_key[k] not in used), None)
        if index is not None:
            used.add(index)
        rows.append(_size_row(weight, finals[index] if index is not None else None))
    rows += [_size_row(None, w) for i, w in enumerate(finals) if i not in used]
    return rows


def _size_row(before, after) -> dict[str, Any]:
    shown = after or before
    return {"name": shown.name, "kind": shown.kind, "dtype": after.dtype if after else "",
            "params_before": before.elements if before else 0, "params_after": after.elements if after else 0,
            "bytes_before": before.bytes if before else 0, "bytes_after": after.bytes if after else 0,
            "bits_after": round(after.bits, 4) if after else 0.0}


def write_reports(folder: Path, *, manifest: dict[str, Any], records: list, gates: list[dict],
                  latency: dict[str, Any], layers: list[dict], export_info: dict[str, Any],
                  seconds_total: float, reused: bool, summary: dict[str, Any] | None = None,
                  kernels: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json, junit.xml and report.html for a build into `folder`; returns the report."""
    report = {
        "schema": REPORT_SCHEMA,
        "summary": summary or {},
        "model": {"name": manifest["model"]["name"], "task": manifest["model"]["task"],
                  "params": manifest["model"]["params"], "file_bytes": manifest["model"]["file_bytes"]},
        "profile": manifest["profile"]["name"],
        "baseline": manifest["baseline"],
        "final": manifest["final"],
        "passes": [{**r.manifest_entry(), "seconds": r.seconds} for r in records] if records else
                  [dict(p, seconds=None) for p in manifest["passes"]],
        "layers": layers,
        "gates": gates,
        "gates_passed": all(g["passed"] for g in gates),
        "latency": latency,
        "kernels": kernels,  # per-kernel decode profile of the compiled LLM (kernel_times.py), or None
        "export": {k: v for k, v in export_info.items() if k != "versions"},
        "reused": reused,
        "seconds_total": round(seconds_total, 2),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    write_json(folder / REPORT_FILE, report)
    write_junit(folder / JUNIT_FILE, gates)
    write_html(folder / HTML_FILE, report)
    return report
