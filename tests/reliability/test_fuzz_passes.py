"""Every registered pass on seeded fuzzed graphs, through the real runner.

Each case is `edgefold compress GRAPH --pass SPEC -o OUT --no-eval`. It must end in a
valid model (exit 0, the full onnx.checker passes, onnxruntime runs it to finite
outputs) or a clean refusal (exit 2, exactly one `edgefold: error:` line, no
traceback, no output folder and no staging leftovers) — never a crash. A valid model
must also stay above the default fidelity floor, and a pass that removed nothing must
say so (`removed: 0`, a note, a warning line). Counts per pass (valid, of which no-op,
refused, crash) go to fuzz-counts.json and one summary line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from edgefold import onnx_io
from edgefold.passes.registry import available_passes
from graphs import GraphSpec, build, fuzz_specs, write

SEED = 20250101
GRAPHS = 12  # mlp, swiglu, conv in turn; every fourth one unnamed
CASES_PER_PASS = 8  # consecutive graphs: every pass sees every kind, named and unnamed
PROFILES = ("host", "host", "mobile-arm64")  # channel multiples 8 and 16


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# Options each pass is fuzzed with (values from its Config in passes/*.py). A pass
# without an entry here runs with its defaults.
def _cleanup(rng):
    return {"fuse_batchnorm": _pick(rng, [False, True])}


def _quantize(rng):
    options = _pick(rng, [{"format": "int8"}, {"format": "int4", "block": 32}, {"format": "int4-g32-sym"},
                          {"format": "fp16"}, {"format": "int8", "block": 0}, {"avg_bits": 4.5}, {"avg_bits": 6}])
    return {**options, "min_elements": _pick(rng, [0, 16, 1024]), "emit": _pick(rng, ["onnx", "onnxruntime"])}


def _fold(rng):
    return {"ratio": _pick(rng, [0.1, 0.2, 0.3, 0.5, 0.7]), "method": _pick(rng, ["fold", "fold", "magnitude", "random"]),
            "merge": _pick(rng, ["auto", "mean", "anchor"]), "allocation": _pick(rng, ["auto", "uniform"]),
            "channel_multiple": _pick(rng, [None, 1, 1, 4])}


def _slice(rng):
    method = _pick(rng, ["magnitude", "random", "policy", "activation"])  # activation: needs a known task
    options = {"ratio": _pick(rng, [0.1, 0.2, 0.3, 0.5, 0.7]), "method": method,
               "allocation": _pick(rng, ["uniform", "spectrum"]), "channel_multiple": _pick(rng, [None, 1, 4])}
    if method == "policy":
        options["episodes"] = 2  # a policy per hidden size is trained: keep it short
    return options


def _dip(rng):
    return {"sparsity": _pick(rng, [0.1, 0.25, 0.5, 0.75, 0.9])}


FUZZ_OPTIONS = {"cleanup": _cleanup, "quantize": _quantize, "fold": _fold, "slice": _slice, "dip": _dip}


@dataclass
class Case:
    graph: GraphSpec
    pass_name: str
    options: dict
    profile: str

    @property
    def spec(self) -> str:
        values = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.options.items() if v is not None]
        return self.pass_name + (":" + ",".join(values) if values else "")

    @property
    def name(self) -> str:
        return f"{self.graph.name} --pass {self.spec} --profile {self.profile}"


def fuzz_cases() -> list[Case]:
    rng = np.random.default_rng(SEED)
    graphs = fuzz_specs(GRAPHS, seed=SEED)
    cases = []
    for number, pass_name in enumerate(available_passes()):
        options = FUZZ_OPTIONS.get(pass_name, lambda _rng: {})
        for index in range(CASES_PER_PASS):
            graph = graphs[(number * CASES_PER_PASS + index) % GRAPHS]
            cases.append(Case(graph, pass_name, options(rng), _pick(rng, PROFILES)))
    return cases


def _finite_run(model_path, graph_proto) -> None:
    from edgefold.export.onnx_import import synthetic_inputs

    outputs = onnx_io.run(onnx_io.session(model_path), synthetic_inputs(graph_proto, seed=1))
    assert outputs and all(np.all(np.isfinite(v)) for v in outputs.values()), "non-finite outputs"


def run_case(cli, case: Case, folder, index: int) -> tuple[str, str]:
    """('valid' | 'noop' | 'refused' | 'crash', detail) for one case; 'noop' is a valid model
    from a pass that removed nothing (and said so)."""
    source = write(case.graph, folder / "graphs")
    out = folder / "out" / f"case{index:03d}"
    try:
        result = cli("compress", source, "--pass", case.spec, "--profile", case.profile, "-o", out, "--no-eval")
    except BaseException as exc:  # the CLI let an exception out: that is a crash
        return "crash", f"{type(exc).__name__}: {exc}"
    errors = [line for line in result.err.splitlines() if line.startswith("edgefold: error:")]
    if "Traceback" in result.err or result.code not in (0, 2):
        return "crash", f"exit {result.code}: {result.err.strip().splitlines()[-1] if result.err.strip() else ''}"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    if result.code == 2:
        if len(errors) != 1 or out.exists() or leftovers:
            return "crash", f"unclean refusal: {len(errors)} error lines, output exists {out.exists()}, {leftovers}"
        return "refused", errors[0]
    try:
        onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
        _finite_run(out / "model.onnx", onnx.load(str(source)))
        manifest = json.loads((out / "manifest.json").read_text())
        [record] = manifest["passes"]
        assert record["name"] == case.pass_name
        assert record["fidelity"]["cosine"] >= 0.5, "below the default fidelity floor"
    except Exception as exc:
        return "crash", f"exit 0 but the output is broken: {type(exc).__name__}: {str(exc)[:200]}"
    # No silent no-op: every pass reports what it removed, and a zero comes with a note and a warning.
    removed = record["stats"].get("removed")
    if removed is None:
        return "crash", "exit 0 without `removed` in the pass's stats"
    if removed == 0:
        if not record["stats"].get("note") or f"warning: {case.pass_name} removed nothing" not in result.err:
            return "crash", "a silent no-op: removed 0 without a note and a warning"
        return "noop", record["stats"]["note"]
    return "valid", ""


def test_every_pass_on_fuzzed_graphs(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    cases = fuzz_cases()
    assert {c.pass_name for c in cases} == set(available_passes())
    counts = {name: {"valid": 0, "noop": 0, "refused": 0, "crash": 0} for name in available_passes()}
    results, crashes = [], []
    for index, case in enumerate(cases):
        outcome, detail = run_case(cli, case, tmp_path, index)
        counts[case.pass_name][outcome] += 1
        counts[case.pass_name]["valid"] += outcome == "noop"  # a no-op is a valid model too
        results.append({"case": case.name, "outcome": outcome, "detail": detail})
        if outcome == "crash":
            crashes.append(f"{case.name}: {detail}")
    (tmp_path / "fuzz-counts.json").write_text(json.dumps({"seed": SEED, "cases": len(cases), "counts": counts,
                                                           "results": results}, indent=2))
    summary = "; ".join(f"{name} {c['valid']} valid ({c['noop']} no-op) / {c['refused']} refused / {c['crash']} crash"
                        for name, c in counts.items())
    with capsys.disabled():
        print(f"\nfuzz: {len(cases)} cases (seed {SEED}): {summary}")
    assert not crashes, "\n".join(crashes)


def test_fuzz_cases_are_deterministic():
    first, second = fuzz_cases(), fuzz_cases()
    assert [c.name for c in first] == [c.name for c in second]
    for spec in {c.graph for c in first}:
        assert build(spec).SerializeToString() == build(spec).SerializeToString()


@pytest.mark.parametrize("kind", ["mlp", "swiglu", "conv"])
def test_unnamed_graphs_have_no_node_names(kind):
    spec = GraphSpec(kind=kind, seed=3, width=7, inner=9, layers=2, named=False, depthwise=True)
    assert all(node.name == "" for node in build(spec).graph.node)
    assert all(node.name for node in build(spec.renamed(True)).graph.node)
