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


def export_small_llama(name: str, vocab_size: int, intermediate_size: int, tokenizer: str | None = None) -> Path:
    """A 2-layer GQA Llama (hidden 64, 4 heads over 2 kv heads, tied embedding, random weights,
    seed 0), exported to ONNX through the export cache."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgefold.export import export_module
    from edgefold.export.wrappers import CausalLMLogits
    from edgefold.models.metadata import Task

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=intermediate_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=True, rms_norm_eps=1e-5)
    model = CausalLMLogits(LlamaForCausalLM(config).eval())
    ids = torch.tensor([[5, 17, 99, 3, 64, 21, 7, 120]])
    return export_module(model, {"input_ids": ids}, name=name, task=Task.CAUSAL_LM, tokenizer=tokenizer,
                         output_names=["logits"], dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
                         check_inputs=[{"input_ids": ids.numpy()}]).path


@pytest.fixture(scope="session")
def tied_llama() -> Path:
    """SmolLM2's vocabulary and tokenizer on the small Llama. The table is big enough (3.1M
    elements) that the exporter keeps one initializer for both readers of the tied embedding (one
    of at most 8192 elements is constant-folded into a transposed copy), as in SmolLM2."""
    return export_small_llama("small-llama", 49152, 96, tokenizer="smollm2-135m")


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    """The small Llama with a 128-token vocabulary and no tokenizer: quick to compile."""
    return export_small_llama("tiny-llama", 128, 80)


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
