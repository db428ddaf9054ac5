"""Shared fixtures: real models exported once per machine (the export cache makes
later sessions instant), and a CLI runner that captures exit code and output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _export(name: str):
    from edgefold.export import export_model

    return export_model(name)


@pytest.fixture(scope="session")
def smollm2_handle():
    return _export("smollm2-135m")


@pytest.fixture(scope="session")
def minilm_handle():
    return _export("minilm-l6")


@pytest.fixture(scope="session")
def effnet_handle():
    return _export("efficientnet-lite0")


@pytest.fixture(scope="session")
def digits_handle():
    return _export("digits-cnn")


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_handle) -> Path:
    return smollm2_handle.path


@pytest.fixture(scope="session")
def minilm_onnx(minilm_handle) -> Path:
    return minilm_handle.path


@pytest.fixture(scope="session")
def effnet_onnx(effnet_handle) -> Path:
    return effnet_handle.path


@pytest.fixture(scope="session")
def digits_onnx(digits_handle) -> Path:
    return digits_handle.path


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys):
    """Run `edgefold ...` in-process; returns exit code, stdout, stderr."""
    from edgefold.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
