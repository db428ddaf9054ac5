"""report.html tells the whole story: it opens with the build summary, then gates, latency (onnxruntime
vs the artifact, time and bandwidth per kernel), weights by layer, passes, and after a search the
Pareto chart; every section's plots decode in a real browser, and the summary's numbers are those
of report.json and manifest.json.

The build folder is made by hand (a full SmolLM2 build takes minutes): a really quantized small
tied Llama for the model file and the per-layer rows, and for everything measured (latencies,
kernels) values as a SmolLM2 build on a 2-core x86 host records them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.report.assemble import layer_sizes, write_reports
from edgefold.model_stats import file_bytes
from edgefold.passes.base import PassContext
from edgefold.passes.registry import create_pass
from edgefold.report import write_html
from edgefold.summary import COMPILE_REPORT, build_summary, summary_columns

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BUILD_SECTIONS = ["summary", "gates", "latency", "layers", "passes"]

# A SmolLM2-135M decode step on a 2-core AVX-512 VNNI host (edgefold profile), trimmed to four kernels.
KERNELS = {
    "isa": "avx512-vnni", "context": 128, "repeats": 8, "step_ms": 9.32, "weight_bytes": 78873600,
    "roofline_ms": 7.78, "vs_roofline": 1.2, "bandwidth_gbps": 10.14, "kernels_ms": 8.12,
    "bandwidth_source": "measured on this machine (TVM streaming read, 2 threads, best of 3)",
    "note": "per-kernel times: VM call instrument, its own cost per call measured and subtracted",
    "kernels": [
        {"name": "gemv_int4_b32_su8_min8_mu8_3072x576_norm_set_avx512_vnni", "calls": 30, "ms": 2.65, "share": 0.284,
         "bytes": 31334400, "gbps": 11.8, "bandwidth_share": 0.97},
        {"name": "gemv_int4_b32_su8_min8_mu8_576x1536_swiglu_acc_avx512_vnni", "calls": 29, "ms": 1.5, "share": 0.161,
         "bytes": 14699520, "gbps": 9.8, "bandwidth_share": 0.97},
        {"name": "attention_h9_kv3_d64_l256_q960_c576_avx512_vnni", "calls": 30, "ms": 0.96, "share": 0.103},
        {"name": "embed_int4_b32_su8_min8_mu8_49152x576_t1", "calls": 1, "ms": 0.003, "share": 0.0003},
    ],
}
SEARCH = {
    "cost": "file_mb", "quality": "perplexity", "higher_is_better": False, "x": "file_mb", "y": "perplexity",
    "output": "out", "points": [
        {"setting": {"quantize.avg_bits": 4.5}, "folder": "search/00", "latency_ms": 305.0, "file_mb": 77.1,
         "perplexity": 23.12, "gates_passed": True, "pareto": True},
        {"setting": {"quantize.avg_bits": 6.0}, "folder": "search/01", "latency_ms": 310.2, "file_mb": 102.6,
         "perplexity": 22.95, "gates_passed": True, "pareto": True},
        {"setting": {"quantize.avg_bits": 8.0}, "folder": "search/02", "latency_ms": 330.9, "file_mb": 136.4,
         "perplexity": 22.99, "gates_passed": True, "pareto": False}]}
SEARCH["best"] = SEARCH["points"][0]


@pytest.fixture(scope="module")
def built(tied_llama, tmp_path_factory) -> Path:
    """An artifact folder as `edgefold build` leaves it, with report.json/html and search.html."""
    folder = tmp_path_factory.mktemp("report") / "out"
    (folder / "lib").mkdir(parents=True)
    outcome = create_pass("quantize", {"avg_bits": 4.5, "formats": ["int8", "int4-g32-min-s8t", "int4-g128-asym"]}).run(
        onnx_io.load(tied_llama), PassContext(model_path=tied_llama))
    onnx_io.save(outcome.model, folder / "model.onnx")
    layers = layer_sizes(analyse(onnx_io.load(tied_llama)), analyse(onnx_io.load(folder / "model.onnx")))
    (folder / "lib" / "decode.so").write_bytes(b"\0" * 180_000)
    (folder / "lib" / "prefill128.so").write_bytes(b"\0" * 190_000)
    (folder / "weights.bin").write_bytes(b"\0" * 1_700_000)
    (folder / COMPILE_REPORT).write_text(json.dumps({"buckets": {
        "decode": {"latency": {"context": 128, "onnxruntime_model": "compiled", "onnxruntime_ms": 305.156, "tvm_ms": 8.999}},
        "prefill128": {"latency": {"onnxruntime_model": "compiled", "onnxruntime_ms": 549.534, "tvm_ms": 172.865}}}}))
    final_bytes = file_bytes(folder / "model.onnx")
    quantize = {"name": "quantize", "config": {"avg_bits": 4.5}, "stats": {"avg_bits": outcome.stats["avg_bits"]},
                "params": 3_200_000, "file_bytes": final_bytes, "macs": 0, "model_sha256": "0" * 64,
                "fidelity": {"cosine": 0.98, "max_abs_error": 13.6, "max_abs_reference": 36.0},
                "metrics": {"perplexity": 23.1243}}
    manifest = {"model": {"name": "small-llama", "task": "causal-lm", "params": 3_200_000,
                          "file_bytes": file_bytes(tied_llama)},
                "profile": {"name": "host"}, "baseline": {"perplexity": 22.8145}, "passes": [quantize],
                "final": {"params": 3_200_000, "file_bytes": final_bytes, "metrics": {"perplexity": 23.1243}},
                "compile": {"library_kind": "x86_64", "buckets": []}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sample = {"prompt": "The three largest cities in Germany are", "text": " Berlin, Hamburg and Munich.",
              "tokens": 7, "tokens_per_s": 101.3}
    gates = [{"name": "max_artifact_mb", "measured": final_bytes / 1e6, "limit": 100.0, "passed": True,
              "detail": f"max_artifact_mb: {final_bytes / 1e6:.3f} within 100"}]
    write_reports(folder, manifest=manifest, records=[], gates=gates,
                  latency={"onnxruntime": {"kind": "measured", "median_ms": 310.2, "p90_ms": 320.4}},
                  layers=layers, export_info={}, seconds_total=12.0, reused=False,
                  summary=build_summary(folder, manifest, sample=sample), kernels=KERNELS)
    write_html(folder / "search.html", {"model": {"name": "small-llama"}, "profile": "host", "passes": [],
                                        "search": SEARCH})
    return folder


class _Sections(HTMLParser):
    """Section ids in order, each with its images' (alt, loaded) and its tables' cell text."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self._current: dict | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._current = self.sections.setdefault(attrs["id"], {"images": [], "rows": [], "text": []})
        elif self._current is None:
            return
        elif tag == "img":
            self._current["images"].append((attrs.get("alt"), attrs.get("data-loaded") == "1"))
        elif tag == "tr":
            self._current["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "section":
            self._current = None
        elif tag in ("td", "th") and self._cell is not None and self._current is not None:
            self._current["rows"][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._current is not None:
            self._current["text"].append(data)


def _sections(page: str) -> dict[str, dict]:
    parser = _Sections()
    parser.feed(page)
    return parser.sections


def _browser_dom(page: Path, profile: Path) -> str:
    """The page's DOM after headless Chromium loaded it (images decoded, onload handlers run)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_every_section_and_its_plots_load_in_chromium(built, tmp_path):
    sections = _sections(_browser_dom(built / "report.html", tmp_path / "chrome"))
    assert list(sections) == BUILD_SECTIONS  # the page opens with the summary
    alts = {key: [alt for alt, _ in section["images"]] for key, section in sections.items()}
    assert alts["latency"] == ["onnxruntime (compiled model) vs the edgefold artifact", "Decode step by kernel"]
    assert alts["layers"] == ["Weight bytes by layer, before and after", "Bits per weight by layer"]
    assert alts["passes"] == ["Fidelity per pass"]
    for key, section in sections.items():
        assert all(loaded for _, loaded in section["images"]), f"a plot in section {key} did not decode"
    assert "all gates pass" in "".join(sections["gates"]["text"])

    search = _sections(_browser_dom(built / "search.html", tmp_path / "chrome"))
    assert list(search) == ["search"]
    (image,) = search["search"]["images"]
    assert image == ("file_mb vs perplexity: configurations tried and the Pareto front", True)


def test_summary_in_html_has_the_numbers_of_report_json_and_manifest(built):
    report = json.loads((built / "report.json").read_text())
    manifest = json.loads((built / "manifest.json").read_text())
    summary = report["summary"]
    page = (built / "report.html").read_text()
    assert page.index('<section id="summary">') < page.index("<section", page.index('<section id="summary">') + 1)
    table = _sections(page)["summary"]["rows"]
    assert table[0] == ["", *summary_columns(summary), "change"]  # what ran on each side, as on the console
    rows = {row[0]: row[1:] for row in table if row}

    mb = manifest["model"]["file_bytes"] / 1e6, manifest["final"]["file_bytes"] / 1e6
    assert summary["size_bytes"] == {"before": manifest["model"]["file_bytes"], "after": manifest["final"]["file_bytes"]}
    assert rows["model file"][:2] == [f"{mb[0]:.1f} MB", f"{mb[1]:.1f} MB"]
    assert rows["model file"][2] == f"{mb[0] / mb[1]:.2f}x smaller"

    ppl = manifest["baseline"]["perplexity"], manifest["final"]["metrics"]["perplexity"]
    assert (summary["metric"]["before"], summary["metric"]["after"]) == ppl
    assert rows["perplexity"] == [f"{ppl[0]:.2f}", f"{ppl[1]:.2f}", f"{ppl[1] - ppl[0]:+.2f}"]

    decode = json.loads((built / "compile-report.json").read_text())["buckets"]["decode"]["latency"]
    assert (summary["decode"]["onnxruntime_ms"], summary["decode"]["edgefold_ms"]) == (decode["onnxruntime_ms"],
                                                                                    decode["tvm_ms"])
    (label,) = [key for key in rows if key.startswith("decode ms/token")]
    assert "context 128" in label
    assert rows[label][:2] == [f"{decode['onnxruntime_ms']:.2f}", f"{decode['tvm_ms']:.2f}"]

    files = {row[0]: row[1] for row in _sections(page)["summary"]["rows"] if len(row) == 3}
    def size(count):
        return "" if count is None else f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"

    assert {entry["path"]: size(entry["bytes"]) for entry in summary["files"]}.items() <= files.items()
    assert files["weights.bin"] == "1.7 MB" and files["report.html"] == ""
    data = built / "model.onnx.data"
    assert files["model.onnx.data"] == size(data.stat().st_size) and data.stat().st_size > 1e6
    assert "Berlin, Hamburg and Munich." in page
