"""report.html: one self-contained page (plots embedded as PNG data URIs).

It opens with the build's summary, then one `<section>` each for gates, latency, weights
by layer, passes and (after `edgefold search`) the search (report/sections.py). Each <img>
marks itself loaded (`data-loaded`) so a headless browser test can tell that every plot
really decoded, not just that the tag is there.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from edgefold.report.sections import SECTIONS

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}table.summary td:not(:first-child){text-align:right}"
         "figure{margin:1.5em 0}img{max-width:100%}nav a{margin-right:1em}section{margin-top:2em}"
         "p.sample{font-family:monospace;background:#f4f4f4;padding:.5em}")


def write_html(path: Path, report: dict[str, Any]) -> Path:
    """Write a build or search report as a self-contained report.html at `path`; returns the path."""
    command = "build" if "gates" in report else "search"
    title = f"edgefold {command}: {report['model']['name']} for {report['profile']}"
    sections = [(fn.__name__, text) for fn in SECTIONS if (text := fn(report))]
    nav = "".join(f'<a href="#{key}">{key}</a>' for key, _ in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>"
            f"{''.join(text for _, text in sections)}</body></html>\n")
    Path(path).write_text(page)
    return Path(path)
