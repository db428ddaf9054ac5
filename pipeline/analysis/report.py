"""Human-readable tables for an Analysis (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefold.analysis.groups import Analysis


def print_table(analysis: Analysis, console: Console | None = None) -> None:
    """Per-layer table, prunable groups, counts and the left-as-is list."""
    console = console or Console()
    unit = analysis.totals.get("macs_per", "token")

    layers = Table(title="Layers", title_justify="left", show_lines=False)
    for column, justify in (("#", "right"), ("layer", "left"), ("kind", "left"), ("shape", "left"),
                            ("params", "right"), ("bytes", "right"), (f"MACs/{unit}", "right")):
        layers.add_column(column, justify=justify)
    for i, row in enumerate(analysis.layers):
        label = escape(row.label or row.name)
        if row.note:
            label += f" [dim]({escape(row.note)})[/dim]"
        layers.add_row(str(i), label, row.kind, "x".join(map(str, row.shape)),
                       human(row.params), human_bytes(row.bytes), human(row.macs))
    totals = analysis.totals
    layers.add_section()
    layers.add_row("", "[bold]total[/bold]", "", "", human(totals.get("params", 0)),
                   human_bytes(totals.get("bytes", 0)), human(totals.get("macs", 0)))
    console.print(layers)

    if analysis.ffns or analysis.attentions or analysis.conv_groups:
        groups = Table(title="Prunable groups", title_justify="left")
        for column in ("group", "layer", "kind", "channels", "detail"):
            groups.add_column(column)
        for f in analysis.ffns:
            groups.add_row(f.name, escape(f.layer_label), f"ffn {f.kind}", f"{f.hidden}->{f.intermediate}", f.activation)
        for a in analysis.attentions:
            groups.add_row(a.name, escape(a.layer_label), "attention", f"{a.num_heads}q/{a.num_kv_heads}kv x {a.head_dim}",
                           escape(f"kv groups {a.kv_groups}") + (", rope" if a.rope else ""))
        for c in analysis.conv_groups:
            parts = (c.batchnorm and "bn", c.activation, None if c.prunable else "[red]left as is[/red]")
            detail = ", ".join(x for x in parts if x)
            kind = "depthwise conv" if c.depthwise else "conv"
            groups.add_row(c.name, escape(c.layer_label), kind, str(c.out_channels), detail)
        console.print(groups)

    counts = Table(title="Counts", title_justify="left", show_header=False)
    counts.add_column("what")
    counts.add_column("count", justify="right")
    for key, value in analysis.summary().items():
        counts.add_row(key.replace("_", " "), str(value))
    console.print(counts)

    if analysis.left_as_is:
        console.print("[bold]Left as is[/bold]")
        for line in analysis.left_as_is:
            console.print(f"  - {line}", markup=False, highlight=False)


def human(n: int | float) -> str:
    """Count with a k/M/G suffix and two decimals (e.g. 1.23M); plain integer below 1000."""
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def human_bytes(n: int | float) -> str:
    """Byte count in binary units with one decimal (e.g. 1.5 MiB); plain bytes below 1 KiB."""
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
