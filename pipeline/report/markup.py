"""The few HTML pieces report.html is made of: sections, tables, embedded plots."""

from __future__ import annotations

import base64
import html
from typing import Any, Iterable


def img(title: str, png: bytes) -> str:
    """A PNG as a data URI; `data-loaded` is set once the browser has decoded it (the browser test reads it)."""
    data = base64.b64encode(png).decode()
    return (f'<figure><img alt="{html.escape(title)}" class="plot" onload="this.dataset.loaded=1" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(title)}</figcaption></figure>')


def fmt(value: Any) -> str:
    """A value as table-cell text: yes/no, floats to 4 significant digits, dicts as `key value` pairs."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """An HTML table with this header and rows (cells escaped); `cls` is its CSS class."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def records(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """An HTML table of dicts, one row each, showing `columns` in order."""
    return table(columns, ([r.get(c) for c in columns] for r in rows))


def section(key: str, title: str, parts: list[str]) -> str:
    """An HTML section with anchor `key` and heading `title` around `parts`."""
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def paragraph(text: str, cls: str = "") -> str:
    """An HTML paragraph of escaped text; `cls` is its CSS class."""
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>"


def details(label: str, content: str) -> str:
    """A collapsed HTML block that shows `content` when `label` is clicked."""
    return f"<details><summary>{html.escape(label)}</summary>{content}</details>"
