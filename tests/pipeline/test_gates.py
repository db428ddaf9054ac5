"""Deployment gates: exit codes, JUnit, the HTML report, and incremental rebuilds."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest


def _recipe(tmp_path, model: str, gates: str, eval_on: bool = True) -> object:
    path = tmp_path / "recipe.toml"
    path.write_text(f'model = "{model}"\noutput = "out"\n[[passes]]\nname = "cleanup"\n'
                    f'[eval]\nenabled = {str(eval_on).lower()}\n[gates]\n{gates}\n')
    return path


def _junit_failures(folder):
    root = ET.parse(folder / "junit.xml").getroot()
    return {case.get("name"): case.find("failure") is not None for case in root.iter("testcase")}


def test_size_gate_just_below_fails_just_above_passes(cli, tmp_path, digits_onnx):
    probe = cli("build", _recipe(tmp_path, "digits-cnn", "max_artifact_mb = 1000"))
    assert probe.code == 0, probe.err
    size_mb = json.loads((tmp_path / "out" / "manifest.json").read_text())["final"]["file_bytes"] / 1e6

    failing = cli("check", _recipe(tmp_path, "digits-cnn", f"max_artifact_mb = {size_mb - 1e-6}"))
    assert failing.code == 1
    assert _junit_failures(tmp_path / "out") == {"max_artifact_mb": True}
    assert "FAIL max_artifact_mb" in failing.err and "over by" in failing.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["gates_passed"] is False and report["gates"][0]["measured"] > report["gates"][0]["limit"]

    passing = cli("check", _recipe(tmp_path, "digits-cnn", f"max_artifact_mb = {size_mb + 1e-6}"))
    assert passing.code == 0
    assert _junit_failures(tmp_path / "out") == {"max_artifact_mb": False}


def test_latency_and_quality_gates(cli, tmp_path, digits_onnx):
    cli("build", _recipe(tmp_path, "digits-cnn", "max_latency_ms = { onnxruntime = 10000 }"))
    measured = json.loads((tmp_path / "out" / "report.json").read_text())["latency"]["onnxruntime"]["median_ms"]
    slow = cli("check", _recipe(tmp_path, "digits-cnn", f"max_latency_ms = {{ onnxruntime = {measured / 20} }}"))
    assert slow.code == 1 and _junit_failures(tmp_path / "out") == {"max_latency_ms[onnxruntime]": True}
    fast = cli("check", _recipe(tmp_path, "digits-cnn",
                                f"max_latency_ms = {{ onnxruntime = {measured * 20} }}\nmin_accuracy = 0.95"))
    assert fast.code == 0, fast.err
    strict = cli("check", _recipe(tmp_path, "digits-cnn", "min_accuracy = 0.999"))
    assert strict.code == 1 and "under by" in strict.err


def test_tvm_latency_gate(cli, tmp_path, digits_onnx):
    """The build compiles with TVM; a gate on the compiled library's latency fails just below it."""
    assert cli("build", _recipe(tmp_path, "digits-cnn", "max_latency_ms = { tvm = 10000 }")).code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    measured = report["latency"]["tvm"]["median_ms"]
    assert report["latency"]["tvm"]["kernels"] and (tmp_path / "out" / "lib" / "batch1.so").exists()
    slow = cli("check", _recipe(tmp_path, "digits-cnn", f"max_latency_ms = {{ tvm = {measured / 20} }}"))
    assert slow.code == 1 and _junit_failures(tmp_path / "out") == {"max_latency_ms[tvm]": True}
    assert cli("check", _recipe(tmp_path, "digits-cnn", f"max_latency_ms = {{ tvm = {measured * 20} }}")).code == 0


def test_estimate_gate_prices_the_profile_file_beside_the_recipe(cli, tmp_path, digits_onnx, monkeypatch):
    """A recipe's profile path starts from the recipe's folder for every stage, the estimate gate too."""
    from edgefold.targets.profiles import BUILTIN_DIR

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "phone.toml").write_text((BUILTIN_DIR / "mobile-arm64.toml").read_text())
    recipe = _recipe(recipes, "digits-cnn", "max_latency_ms = { estimate = 10000 }", eval_on=False)
    recipe.write_text('profile = "phone.toml"\n' + recipe.read_text() + "[compile]\nenabled = false\n")
    monkeypatch.chdir(tmp_path)
    result = cli("build", "recipes/recipe.toml")
    assert result.code == 0, result.err
    report = json.loads((recipes / "out" / "report.json").read_text())
    assert report["profile"] == report["latency"]["estimate"]["profile"] == "phone"


def test_broken_gate_values_exit_2(cli, tmp_path):
    result = cli("build", _recipe(tmp_path, "digits-cnn", "min_accuracy = 3"))
    assert result.code == 2 and "gates.min_accuracy" in result.err
    result = cli("build", _recipe(tmp_path, "digits-cnn", "max_latency_ms = { phone = 3 }"))
    assert result.code == 2 and "unknown latency target" in result.err
    result = cli("build", _recipe(tmp_path, "digits-cnn", "max_latency_ms = { tvm = 3 }\n[compile]\nenabled = false"))
    assert result.code == 2 and "needs the TVM compile" in result.err
    assert not (tmp_path / "out").exists()


def test_second_build_is_reused_and_10x_faster(cli, tmp_path, effnet_onnx):
    recipe = _recipe(tmp_path, "efficientnet-lite0", "max_artifact_mb = 100")
    start = time.perf_counter()
    first = cli("build", recipe)
    first_seconds = time.perf_counter() - start
    assert first.code == 0, first.err
    start = time.perf_counter()
    second = cli("build", recipe)
    second_seconds = time.perf_counter() - start
    assert second.code == 0
    assert "reused" in second.err and "recipe, profile and tools unchanged" in second.err
    assert second_seconds * 10 <= first_seconds, (first_seconds, second_seconds)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["reused"] is True
    # a changed recipe is not reused
    changed = _recipe(tmp_path, "efficientnet-lite0", "max_artifact_mb = 100\nmin_top1_agreement = 0.5")
    third = cli("build", changed)
    assert third.code == 0 and "recipe, profile and tools unchanged" not in third.err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_html_renders_its_plots_in_chromium(cli, tmp_path, digits_onnx):
    assert cli("build", _recipe(tmp_path, "digits-cnn", "min_accuracy = 0.9")).code == 0
    page = tmp_path / "out" / "report.html"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    images = dom.count('class="plot"')
    assert images >= 3  # sizes by layer, bits per layer, fidelity per pass
    assert dom.count('data-loaded="1"') == images  # every plot decoded in the browser
    assert "all gates pass" in dom
