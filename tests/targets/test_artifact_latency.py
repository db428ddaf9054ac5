"""`edgefold profile <artifact>` on a compiled library: host (Relax VM, per-kernel times)
and remote through a real TVM RPC tracker and server started on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("tvm")
pytest.importorskip("tornado")  # TVM's RPC tracker runs on tornado


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def loopback_tracker():
    """A tracker and one server registered under key `loop`, both on 127.0.0.1."""
    from tvm import rpc

    port = _free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the tracker, then for the server to register
            try:
                summary = rpc.connect_tracker("127.0.0.1", port).summary()
            except Exception:  # noqa: BLE001 - not listening yet
                summary = None
            if summary is not None and server is None:
                server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                           "--tracker", f"127.0.0.1:{port}", "--key", "loop"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if summary is not None and summary.get("queue_info", {}).get("loop", {}).get("free", 0) > 0:
                break
            if time.monotonic() > deadline:
                pytest.fail("the loopback RPC tracker/server did not come up in 60 s")
            time.sleep(0.5)
        yield f"rpc://127.0.0.1:{port}/loop"
    finally:
        for process in (server, tracker):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


@pytest.fixture
def digits_artifact(digits_onnx, tmp_path, monkeypatch):
    from edgefold.targets.tvm import compile_model

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "artifact"
    compile_model(digits_onnx, "host", output=folder, trials=0, latency=False)
    return folder


def test_host_profile_has_kernels_and_percentiles(cli, digits_artifact):
    result = cli("profile", digits_artifact, "--repeats", "20", "--json")
    assert result.code == 0, result.err
    (shape,) = json.loads(result.out)["shapes"].values()
    assert shape["min_ms"] <= shape["median_ms"] <= shape["p90_ms"]
    names = [k["name"] for k in shape["kernels"]]
    assert any(name.startswith("fused_conv2d") for name in names), names
    assert all(0 <= k["share"] <= 1.5 for k in shape["kernels"]) and shape["peak_rss_mb"] > 0
    text = cli("profile", digits_artifact, "--repeats", "5")
    assert text.code == 0 and "p90" in text.out and "fused_conv2d" in text.out


def test_rpc_profile_is_within_30_percent_of_local(cli, digits_artifact, loopback_tracker):
    remote = cli("profile", digits_artifact, "--target", loopback_tracker, "--repeats", "50", "--json")
    assert remote.code == 0, remote.err
    local = cli("profile", digits_artifact, "--target", "host", "--repeats", "50", "--json")
    remote_ms = json.loads(remote.out)["shapes"]["batch1"]["median_ms"]
    local_ms = json.loads(local.out)["shapes"]["batch1"]["median_ms"]
    assert abs(remote_ms - local_ms) <= 0.3 * local_ms, (remote_ms, local_ms)


def test_profile_errors_are_one_line(cli, digits_artifact, digits_onnx, tmp_path):
    port = _free_port()  # nothing listens there
    result = cli("profile", digits_artifact, "--target", f"rpc://127.0.0.1:{port}/phone")
    assert result.code == 2 and "RPC tracker" in result.err
    assert cli("profile", digits_artifact, "--target", "rpc://nowhere").code == 2
    result = cli("profile", tmp_path, "--target", "host")
    assert result.code == 2 and "edgefold compile" in result.err
