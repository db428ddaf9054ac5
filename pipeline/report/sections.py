"""The sections of report.html, each a function report -> HTML ("" when it has nothing to show).

Every section is a `<section id=...>` (summary, gates, latency, layers, passes, search), so a
test or a reader's link can find it. The summary's numbers come from `summary_rows`, the
function that prints the console table, so the page and the console never disagree.
"""

from __future__ import annotations

from typing import Any

from edgefold.report import plots
from edgefold.summary import size_text
from edgefold.report.markup import details, img, paragraph, records, section, table


def summary(report: dict[str, Any]) -> str:
    """Summary section: size/quality/speed table, the sample text and the artifact's files; "" without a summary."""
    from edgefold.summary import summary_columns, summary_rows

    data = report.get("summary") or {}
    if "size_bytes" not in data:  # a search page, or a report from before the summary existed
        return ""
    parts = [table(["", *summary_columns(data), "change"], summary_rows(data), cls="summary")]
    if data.get("sample"):
        sample = data["sample"]
        speed = f" ({sample['tokens_per_s']:.0f} tokens/s)" if sample.get("tokens_per_s") else ""
        parts.append(paragraph(f"sample{speed}: {' '.join((sample['prompt'] + sample['text']).split())}", "sample"))
    files = [(f["path"], size_text(f["bytes"]), f["role"]) for f in data.get("files", [])]
    parts.append(paragraph(f"artifact {data.get('folder', '')}:"))
    parts.append(table(["file", "size", "what it is"], files, cls="files"))
    return section("summary", "Summary", parts)


def gates(report: dict[str, Any]) -> str:
    """Gates section: each gate's measurement, limit and verdict; "" for a report without gates."""
    if "gates" not in report:
        return ""
    rows = report["gates"]
    if not rows:
        return section("gates", "Gates", [paragraph("the recipe sets no gates")])
    verdict = "all gates pass" if all(g["passed"] for g in rows) else "GATES FAILED"
    return section("gates", f"Gates: {verdict}", [records(rows, ["name", "measured", "limit", "passed", "detail"])])


def latency(report: dict[str, Any]) -> str:
    """Latency section: onnxruntime vs the artifact, the decode step by kernel, and what the latency gates measured;
    "" when there is nothing measured."""
    data, kernels = report.get("summary") or {}, report.get("kernels")
    parts = []
    compare = []
    if "decode" in data:
        context = f" at context {data['decode']['context']}" if data["decode"].get("context") else ""
        compare.append((f"decode ms/token{context}", data["decode"]["onnxruntime_ms"], data["decode"]["edgefold_ms"]))
    if "prefill" in data:
        compare.append((f"prefill {data['prefill']['tokens']} tokens", data["prefill"]["onnxruntime_ms"],
                        data["prefill"]["edgefold_ms"]))
    if compare:
        where = (data.get("decode") or data.get("prefill"))["onnxruntime_model"]
        parts.append(img(f"onnxruntime ({where} model) vs the edgefold artifact",
                         plots.onnxruntime_vs_edgefold(compare)))
    if kernels:
        parts.append(paragraph(
            f"decode step {kernels['step_ms']:.2f} ms at context {kernels['context']}; reading its weights "
            f"({kernels['weight_bytes'] / 1e6:.1f} MB a token) at {kernels['bandwidth_gbps']:.1f} GB/s takes "
            f"{kernels['roofline_ms']:.2f} ms, so the step runs at {kernels['vs_roofline']:.2f}x the roofline. "
            f"Bandwidth {kernels['bandwidth_source']}; {kernels['note']}."))
        parts.append(img("Decode step by kernel", plots.kernel_times(kernels["kernels"], kernels["bandwidth_gbps"],
                                                                        kernels.get("isa"))))
        rows = [(k["name"], k["calls"], round(k["ms"], 3), f"{100 * k['share']:.1f}%",
                 f"{k['bytes'] / 1e6:.2f}" if k.get("bytes") else "", round(k["gbps"], 1) if k.get("gbps") else "",
                 f"{100 * k['bandwidth_share']:.0f}%" if k.get("bandwidth_share") else "")
                for k in kernels["kernels"]]
        parts.append(details(f"{len(rows)} kernels", table(
            ["kernel", "calls", "ms", "share of step", "MB read", "GB/s", "of bandwidth"], rows)))
    measured = report.get("latency") or {}  # what the latency gates measured
    if measured:
        parts.append(paragraph("measured for the latency gates:"))
        parts.append(table(["target", "kind", "median ms", "p90 ms"],
                           [(t, p.get("kind"), p.get("median_ms"), p.get("p90_ms")) for t, p in sorted(measured.items())]))
        for target, profile in sorted(measured.items()):
            if profile.get("kernels"):
                parts.append(img(f"Latency by kernel ({target}, {profile.get('kind', 'measured')})",
                                 plots.latency_by_kernel(profile["kernels"])))
    return section("latency", "Latency", parts) if parts else ""


def layers(report: dict[str, Any]) -> str:
    """Weights-by-layer section: bytes and bits per weight before and after; "" without layer rows."""
    rows = report.get("layers") or []
    if not rows:
        return ""
    parts = [img("Weight bytes by layer, before and after", plots.size_by_layer(rows))]
    if any(r["params_after"] for r in rows):
        parts.append(img("Bits per weight by layer", plots.bits_per_layer(rows)))
    table_rows = [(r["name"], r["kind"], r.get("dtype", ""), r["params_before"], r["params_after"],
                   f"{r['bytes_before'] / 1e6:.3f}", f"{r['bytes_after'] / 1e6:.3f}", round(r["bits_after"], 2))
                  for r in rows]
    parts.append(details(f"{len(rows)} weights (each once; a tied embedding and lm_head are one)", table(
        ["weight", "read as", "codes", "params before", "params after", "MB before", "MB after", "bits"], table_rows)))
    return section("layers", "Weights by layer", parts)


def passes(report: dict[str, Any]) -> str:
    """Passes section: size and fidelity after each pass, with a plot; "" when no pass ran."""
    rows = report.get("passes") or []
    if not rows:
        return ""
    return section("passes", "Passes", [
        records(rows, ["name", "params", "file_bytes", "fidelity", "metrics", "seconds"]),
        img("Fidelity per pass", plots.fidelity_per_pass(report.get("baseline", {}), rows))])


def search(report: dict[str, Any]) -> str:
    """Search section: the configurations tried, the Pareto front and the chosen one; "" for a build report."""
    data = report.get("search")
    if not data:
        return ""
    x, y = data["x"], data["y"]
    rows = [(p["folder"], p["setting"], p[x], p.get(y), p.get("gates_passed"), p.get("pareto"),
             p == data.get("best")) for p in data["points"]]
    return section("search", "Search", [
        img(f"{x} vs {y}: configurations tried and the Pareto front", plots.pareto(data["points"], x, y)),
        table(["folder", "setting", x, y, "gates pass", "on the front", "chosen"], rows)])


SECTIONS = (summary, gates, latency, layers, passes, search)  # in page order; each id is its function's name
