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
    """Weighted layers of the original model with their bytes before and after (matched by name)."""
    if before is None:
        return []
    after_rows = {row.name: row for row in (after.layers if after is not None else [])}
    rows = []
    for row in before.layers:
        if not row.params:
            continue
        new = after_rows.get(row.name)
        bytes_after = new.bytes if new is not None else 0
        params_after = new.params if new is not None else 0
        rows.append({"name": row.name, "kind": row.kind, "params_before": row.params, "params_after": params_after,
                     "bytes_before": row.bytes, "bytes_after": bytes_after,
                     "bits_after": 8.0 * bytes_after / params_after if params_after else 0.0})
    return rows


def write_reports(folder: Path, *, manifest: dict[str, Any], records: list, gates: list[dict],
                  latency: dict[str, Any], layers: list[dict], export_info: dict[str, Any],
                  seconds_total: float, reused: bool) -> dict[str, Any]:
    report = {
        "schema": REPORT_SCHEMA,
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
        "export": {k: v for k, v in export_info.items() if k != "versions"},
        "reused": reused,
        "seconds_total": round(seconds_total, 2),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    write_json(folder / REPORT_FILE, report)
    write_junit(folder / JUNIT_FILE, gates)
    write_html(folder / HTML_FILE, report)
    return report
