"""Ctrl-C (SIGINT to the process group) and SIGTERM at any stage: one line, exit 130/143,
and nothing left behind (no output folder, no staging, no scratch, no tuning candidates)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EDGEFOLD = [sys.executable, "-m", "edgefold"]


def _start(args: list[str], cache: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "EDGEFOLD_CACHE": str(cache), "TMPDIR": str(cache.parent / "tmp")}
    (cache.parent / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen(EDGEFOLD + args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own process group, like a terminal's job


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"finished before {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"never reached {text!r}")


def _leftovers(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        if folder.exists():
            found += [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name
                      or p.name.startswith(("build-", "compile-", "tune-", "candidate-"))]
    return found


@pytest.fixture
def shared_exports(tmp_path, digits_onnx) -> Path:
    """A fresh cache for the child process that reuses this machine's exports (no re-export)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "exports").symlink_to(digits_onnx.parent.parent, target_is_directory=True)
    return cache


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_signal_during_tuning(tmp_path, shared_exports, signum, code, word):
    log, out = tmp_path / "log.txt", tmp_path / "out"
    process = _start(["compile", "digits-cnn", "--trials", "60", "-o", str(out)], shared_exports, log)
    _wait_for(log, "trial(s) each", process)
    time.sleep(1.0)  # inside MetaSchedule: builders and measurement workers running
    os.killpg(process.pid, signum)
    assert process.wait(timeout=120) == code
    text = log.read_text()
    assert text.strip().splitlines()[-1].startswith(f"edgefold: {word}")
    assert "Traceback" not in text and "Segmentation" not in text
    assert not out.exists()
    assert _leftovers(tmp_path, shared_exports / "work", shared_exports / "compiled", tmp_path / "tmp") == []


def test_sigint_during_a_pass(tmp_path, shared_exports):
    log, out = tmp_path / "log.txt", tmp_path / "out"
    process = _start(["compress", "digits-cnn", "--pass", "cleanup", "--pass", "quantize:format=int8",
                      "-o", str(out)], shared_exports, log)
    _wait_for(log, "pass 1/2", process)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert not out.exists()
    assert _leftovers(tmp_path, shared_exports / "work") == []


def test_killed_run_leftovers_are_cleaned_by_the_next_run(tmp_path, shared_exports):
    """SIGKILL cannot be handled: its staging and scratch folders go at the next start."""
    log, out = tmp_path / "log.txt", tmp_path / "out"
    process = _start(["compress", "digits-cnn", "--pass", "cleanup", "-o", str(out)], shared_exports, log)
    _wait_for(log, "pass 1/1", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    second = _start(["compress", "digits-cnn", "--pass", "cleanup", "--no-eval", "-o", str(out)], shared_exports,
                    tmp_path / "log2.txt")
    assert second.wait(timeout=240) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    assert _leftovers(tmp_path, shared_exports / "work") == []
    assert (out / "model.onnx").exists()
