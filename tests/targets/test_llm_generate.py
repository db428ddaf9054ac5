"""`edgefold run ARTIFACT --prompt`: greedy text from a compiled LLM equals onnxruntime's greedy
continuation, on the host and from the aarch64 runner under qemu; sampling options behave."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tvm")

PROMPT = "The three largest cities in Germany are"
NEW_TOKENS = 8


def _onnxruntime_greedy(model_path, prompt_ids, steps):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ids = list(prompt_ids)
    for _ in range(steps):
        logits = session.run(None, {"input_ids": np.array([ids], np.int64)})[0][0, -1]
        ids.append(int(np.argmax(logits)))
    return ids[len(prompt_ids):]


def test_host_and_qemu_generate_onnxruntimes_greedy_text(tied_llama, tmp_path, cli):
    from edgefold.models.metadata import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    want = tokenizer.decode(_onnxruntime_greedy(tied_llama, prompt_ids, NEW_TOKENS), skip_special_tokens=True)

    host = tmp_path / "host"
    assert cli("compile", tied_llama, "--profile", "host", "--seq", "1", "--kv-cache", "64",
               "-o", host).code == 0
    run = cli("run", host, "--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS)
    assert run.code == 0, run.err
    assert run.out.rstrip("\n") == PROMPT + want
    assert "tokens/s" in run.err and "greedy" in run.err

    if shutil.which("qemu-aarch64-static") is None or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("qemu-aarch64-static or aarch64-linux-gnu-g++ missing (.ci/run installs both)")
    phone = tmp_path / "phone"
    compiled = cli("compile", tied_llama, "--profile", "mobile-arm64", "--seq", "1", "--kv-cache", "64",
                   "-o", phone)
    assert compiled.code == 0, compiled.err
    assert json.loads((phone / "manifest.json").read_text())["compile"]["library_kind"] == "aarch64"
    run = cli("run", phone, "--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS)
    assert run.code == 0, run.err
    assert run.out.rstrip("\n") == PROMPT + want
    assert "qemu" in run.err
    sampled = cli("run", phone, "--prompt", PROMPT, "--temperature", "0.7")
    assert sampled.code == 2 and "greedily" in sampled.err


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    from edgefold.targets.tvm.llm.generate import Sampling, make_sampler

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert make_sampler(Sampling()) is None  # temperature 0: greedy

    def draw(sampling, n=400):
        sampler = make_sampler(sampling)
        return [sampler(logits) for _ in range(n)]

    seeded = draw(Sampling(temperature=1.0, seed=7))
    assert seeded == draw(Sampling(temperature=1.0, seed=7))  # same seed, same text
    assert set(seeded) == {0, 1, 2, 3}
    assert set(draw(Sampling(temperature=1.0, top_k=2, seed=1))) == {0, 1}
    assert set(draw(Sampling(temperature=1.0, top_p=0.8, seed=1))) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    counts = np.bincount(draw(Sampling(temperature=1.0, seed=3), 4000), minlength=4) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_run_without_prompt_rejects_sampling_flags(cli, tmp_path):
    result = cli("run", tmp_path, "--temperature", "0.5")
    assert result.code == 2 and "--prompt" in result.err


def test_prompt_on_a_non_llm_artifact_is_a_clear_error(cli, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"compile": {"buckets": [{"label": "seq128"}]}}))
    result = cli("run", tmp_path, "--prompt", "hi")
    assert result.code == 2 and "no compiled LLM" in result.err
