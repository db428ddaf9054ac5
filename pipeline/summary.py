"""The few numbers a build ends with: size, quality, speed, what was written, and a line of text.

`build_summary` reads them from the build's own records (manifest.json for sizes and metrics,
compile-report.json for latencies), so the console table, report.json and report.html all show
the same numbers; nothing here measures anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLE_PROMPT = "The three largest cities in Germany are"
SAMPLE_TOKENS = 24
COMPILE_REPORT = "compile-report.json"

# what each file of an artifact is, for the summary's last row
_FILE_ROLES = {
    "model.onnx": "the compressed model (runs in onnxruntime)",
    "weights.bin": "packed weights the compiled libraries read",
    "manifest.json": "what went in and out, with hashes",
    "report.json": "this report as data",
    "report.html": "this report with plots",
    "junit.xml": "gate verdicts for CI",
    COMPILE_REPORT: "compile timings and latencies",
}


def compile_report(folder: Path) -> dict[str, Any]:
    """The artifact's compile-report.json as a dict; empty if the file is missing or unreadable."""
    path = Path(folder) / COMPILE_REPORT
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _role(name: str) -> str:
    if name in _FILE_ROLES:
        return _FILE_ROLES[name]
    if name.endswith(".onnx.data"):
        return "the model's external weights"
    if name.startswith("lib/"):
        label = Path(name).stem
        return f"compiled {'decode step' if label == 'decode' else label} library"
    if name.startswith("runner/"):
        return "C++ runner (no Python needed on the device)"
    if name.startswith("tuning/"):
        return "tuning records"
    return ""


REPORTS = ("report.json", "report.html", "junit.xml")  # written after the summary: listed without a size


def artifact_files(folder: Path) -> list[dict[str, Any]]:
    """Every file of the artifact with its size and role (the reports, written last, without a size)."""
    rows = [{"path": name, "bytes": None, "role": _role(name)} for name in REPORTS]
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.name in REPORTS:
            continue
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                name = child.relative_to(folder).as_posix()
                rows.append({"path": name, "bytes": child.stat().st_size, "role": _role(name)})
        else:
            rows.append({"path": path.name, "bytes": path.stat().st_size, "role": _role(path.name)})
    return sorted(rows, key=lambda row: row["path"])


def _speed(latency: dict[str, Any]) -> dict[str, Any]:
    row = {"edgefold_ms": latency["tvm_ms"], "onnxruntime_ms": latency["onnxruntime_ms"],
           "onnxruntime_model": latency.get("onnxruntime_model", "compiled")}
    row["speedup"] = round(row["onnxruntime_ms"] / row["edgefold_ms"], 2) if row["edgefold_ms"] else None
    return row


def build_summary(folder: Path, manifest: dict[str, Any], *, shown_folder: Path | None = None,
                  sample: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of the build in `folder` (its staging folder while it is written)."""
    summary: dict[str, Any] = {
        "model": manifest["model"]["name"], "profile": manifest["profile"]["name"],
        "folder": str(shown_folder or folder),
        "size_bytes": {"before": manifest["model"]["file_bytes"], "after": manifest["final"]["file_bytes"]},
    }
    before, after = manifest.get("baseline", {}), manifest["final"].get("metrics", {})
    shared = [name for name in before if name in after]
    if shared:
        name = "perplexity" if "perplexity" in shared else shared[0]
        summary["metric"] = {"name": name, "before": before[name], "after": after[name]}
    buckets = compile_report(folder).get("buckets", {})
    for label, timing in sorted(buckets.items()):
        latency = timing.get("latency")
        if not latency or "tvm_ms" not in latency or "onnxruntime_ms" not in latency:
            continue
        if label == "decode":
            summary["decode"] = {**_speed(latency), "context": latency.get("context")}
        elif label.startswith("prefill"):
            summary["prefill"] = {**_speed(latency), "tokens": int(label.removeprefix("prefill"))}
    if manifest.get("compile"):
        summary["library_kind"] = manifest["compile"]["library_kind"]
    summary["files"] = artifact_files(folder)
    if sample:
        summary["sample"] = sample
    return summary


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, before, after, change) rows, the same for the console and report.html."""
    rows = []
    size = summary["size_bytes"]
    rows.append(("model file", f"{size['before'] / 1e6:.1f} MB", f"{size['after'] / 1e6:.1f} MB",
                 f"{size['before'] / size['after']:.2f}x smaller" if size["after"] else ""))
    if "metric" in summary:
        metric = summary["metric"]
        change = metric["after"] - metric["before"]
        rows.append((metric["name"], f"{metric['before']:.2f}", f"{metric['after']:.2f}", f"{change:+.2f}"))
    if "decode" in summary:
        decode = summary["decode"]
        context = f" (context {decode['context']})" if decode.get("context") else ""
        rows.append((f"decode ms/token{context}", f"{decode['onnxruntime_ms']:.2f}",
                     f"{decode['edgefold_ms']:.2f}", f"{decode['speedup']:.1f}x faster" if decode["speedup"] else ""))
        rows.append(("decode tokens/s", f"{1e3 / decode['onnxruntime_ms']:.1f}", f"{1e3 / decode['edgefold_ms']:.1f}", ""))
    if "prefill" in summary:
        prefill = summary["prefill"]
        rows.append((f"prefill {prefill['tokens']} tokens, ms", f"{prefill['onnxruntime_ms']:.1f}",
                     f"{prefill['edgefold_ms']:.1f}", f"{prefill['speedup']:.1f}x faster" if prefill["speedup"] else ""))
    return rows


def summary_columns(summary: dict[str, Any]) -> tuple[str, str]:
    """Headers of the before/after columns: what ran on each side of the timings."""
    timed = summary.get("decode") or summary.get("prefill")
    if not timed:
        return "original", "compressed"
    before = "original, onnxruntime" if timed["onnxruntime_model"] == "original" else "onnxruntime"
    return before, "edgefold artifact"


def size_text(count: int | None) -> str:
    """A file size as the summary shows it, in the console and in report.html."""
    if count is None:
        return ""
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def print_summary(summary: dict[str, Any]) -> None:
    """The table on stdout (what the user came for), then the artifact's files and the sample."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if Console().is_terminal else 120)
    table = Table(title=f"edgefold: {summary['model']} for {summary['profile']}", title_justify="left")
    before, after = summary_columns(summary)
    for column, justify in (("", "left"), (before, "right"), (after, "right"), ("change", "right")):
        table.add_column(column, justify=justify)
    for row in summary_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"artifact {summary['folder']}:", markup=False)
    for row in summary["files"]:
        role = f"  {row['role']}" if row["role"] else ""
        console.print(f"  {row['path']:<22} {size_text(row['bytes']):>9}{role}", markup=False)
    if "sample" in summary:
        sample = summary["sample"]
        text = " ".join((sample["prompt"] + sample["text"]).split())
        speed = f" ({sample['tokens_per_s']:.0f} tokens/s)" if sample.get("tokens_per_s") else ""
        console.print(f"sample{speed}: {text}", markup=False)
