"""report.html: one self-contained page (plots embedded as PNG data URIs).

Each <img> marks itself loaded (`data-loaded`) so a headless browser test can tell
that every plot really decoded, not just that the tag is there.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from edgefold.report import plots


def _img(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return (f'<figure><img alt="{html.escape(title)}" class="plot" onload="this.dataset.loaded=1" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(title)}</figcaption></figure>')


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def write_html(path: Path, report: dict[str, Any]) -> Path:
    parts = [f"<h1>edgefold build: {html.escape(report['model']['name'])} for {html.escape(report['profile'])}</h1>"]
    gates = report.get("gates", [])
    if gates:
        verdict = "all gates pass" if all(g["passed"] for g in gates) else "GATES FAILED"
        parts.append(f"<h2>Gates: {verdict}</h2>")
        parts.append(_table(gates, ["name", "measured", "limit", "passed", "detail"]))
    parts.append("<h2>Passes</h2>")
    parts.append(_table(report.get("passes", []), ["name", "params", "file_bytes", "fidelity", "metrics", "seconds"]))
    figures = []
    layers = report.get("layers", [])
    if layers:
        figures.append(_img("Weight bytes by layer, before and after", plots.size_by_layer(layers)))
        figures.append(_img("Bits per weight by layer", plots.bits_per_layer(layers)))
    if report.get("passes"):
        figures.append(_img("Fidelity per pass", plots.fidelity_per_pass(report.get("baseline", {}), report["passes"])))
    for target, profile in sorted(report.get("latency", {}).items()):
        if profile.get("kernels"):
            figures.append(_img(f"Latency by kernel ({target}, {profile.get('kind', 'measured')})",
                                plots.latency_by_kernel(profile["kernels"])))
    if report.get("search"):
        search = report["search"]
        figures.append(_img("Latency/size vs quality", plots.pareto(search["points"], search["x"], search["y"])))
    parts.extend(figures)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}figure{margin:1.5em 0}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgefold report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
    Path(path).write_text(page)
    return Path(path)
