"""`edgefold profile`: measured (onnxruntime) and estimated (roofline) latency."""

from __future__ import annotations

import json

import pytest

from edgefold.measure import measure


def test_onnxruntime_profile_has_kernel_breakdown(effnet_onnx):
    result = measure("onnxruntime", effnet_onnx, repeats=3)
    forward = result.shapes["forward"]
    assert forward["kind"] == "measured"
    assert forward["min_ms"] <= forward["median_ms"] <= forward["p90_ms"]
    kernels = forward["kernels"]
    assert kernels and all(k["ms"] > 0 for k in kernels)
    assert sum(k["share"] for k in kernels) <= 1.0 + 1e-9
    assert any(k["op"] == "Conv" for k in kernels)
    assert forward["peak_rss_mb"] > 0


def test_estimate_uses_the_target_profile(effnet_onnx):
    phone = measure("estimate", effnet_onnx, device="mobile-arm64", repeats=3).shapes["forward"]
    gpu = measure("estimate", effnet_onnx, device="server-gpu", repeats=3).shapes["forward"]
    assert phone["kind"] == gpu["kind"] == "estimated"
    assert phone["calibration"] > 0
    # an H100-class profile has 100x the bandwidth and compute of the phone
    assert gpu["median_ms"] * 50 < phone["median_ms"]
    assert {k["bound"] for k in phone["kernels"]} <= {"memory", "compute"}


@pytest.mark.slow
def test_llm_profile_reports_decode_and_prefill_tokens_per_second(cli, smollm2_onnx):
    result = cli("profile", smollm2_onnx, "--repeats", "2", "--json")
    assert result.code == 0, result.err
    shapes = json.loads(result.out)["shapes"]
    assert set(shapes) == {"decode", "prefill"}
    assert shapes["decode"]["tokens"] == 1 and shapes["prefill"]["tokens"] == 128
    assert shapes["prefill"]["tokens_per_s"] > shapes["decode"]["tokens_per_s"]
    assert "model.lm_head (MatMul)" in {k["name"] for k in shapes["decode"]["kernels"]}


def test_unknown_target_is_a_clear_error(cli, digits_onnx):
    result = cli("profile", digits_onnx, "--target", "phone")
    assert result.code == 2 and "unknown profiling target" in result.err
