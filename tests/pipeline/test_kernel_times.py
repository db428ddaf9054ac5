"""The build's per-kernel decode profile (report.html's latency section) on a real compiled LLM."""

from __future__ import annotations

import json

import pytest

from edgefold import onnx_io
from edgefold.measure.kernel_times import llm_kernel_times
from edgefold.passes.base import PassContext
from edgefold.passes.registry import create_pass


def test_no_profile_without_an_llm_library_for_this_host(tmp_path):
    assert llm_kernel_times(tmp_path, {"final": {}}) is None  # not compiled
    graph = {"library_kind": "x86_64", "buckets": [{"kind": "graph", "label": "batch1", "function": "main"}]}
    assert llm_kernel_times(tmp_path, {"compile": graph}) is None  # the generic path (a CNN)
    phone = {"library_kind": "aarch64", "buckets": [{"kind": "llm", "label": "decode", "function": "decode"}]}
    assert llm_kernel_times(tmp_path, {"compile": phone}) is None  # runs on the device, not here


def test_decode_step_by_kernel_of_a_compiled_llm(tied_llama, tmp_path, cli):
    pytest.importorskip("tvm")
    outcome = create_pass("quantize", {"format": "int4-g32-min-s8"}).run(onnx_io.load(tied_llama),
                                                                          PassContext(model_path=tied_llama))
    model = onnx_io.save(outcome.model, tmp_path / "q" / "model.onnx")
    artifact = tmp_path / "artifact"
    compiled = cli("compile", model, "--profile", "host", "--seq", "1", "--kv-cache", "32", "--trials", "0",
                   "--no-check", "-o", artifact)
    assert compiled.code == 0, compiled.err
    profile = llm_kernel_times(artifact, json.loads((artifact / "manifest.json").read_text()))

    assert profile["step_ms"] > 0 and profile["bandwidth_gbps"] > 0 and profile["isa"]
    assert profile["roofline_ms"] == pytest.approx(profile["weight_bytes"] / profile["bandwidth_gbps"] / 1e6)
    names = [k["name"] for k in profile["kernels"]]
    assert not [n for n in names if n.startswith("vm.builtin.")]  # the VM's bookkeeping is not a kernel
    assert any(n.startswith("attention_") for n in names) and any(n.startswith("gemv_") for n in names)
    # the tied lm_head streams 1.6 MB of int4 codes a token: its GB/s and share of the bandwidth are there
    (head,) = [k for k in profile["kernels"] if k["name"].startswith("gemv_") and "49152x64" in k["name"]]
    assert head["bytes"] > 1.5e6 and head["gbps"] == pytest.approx(head["bytes"] / (head["ms"] * 1e6))
    assert head["bandwidth_share"] == pytest.approx(head["gbps"] / profile["bandwidth_gbps"])
    json.dumps(profile)  # it goes into report.json as is
