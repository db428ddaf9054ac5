"""Turn what the user names (built-in, HF folder, torch module) into an export plan.

A plan knows how to build the torch module, its input/output names and dynamic axes,
real inputs for verification, and a fingerprint of everything the result depends on
(the cache key).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgefold.errors import EdgefoldError
from edgefold.hashing import sha256_file, sha256_files, sha256_json
from edgefold.models import builtin
from edgefold.models.metadata import Task
from edgefold.versions import export_versions

# Bump when the export code changes what it writes, to invalidate cached exports.
EXPORT_FORMAT_VERSION = 1
# Bump when the layout of cache keys changes (2: sources and versions under separate keys).
CACHE_KEY_SCHEMA = 2
OPSET = 21


@dataclass
class ExportPlan:
    """How to export one model: build its torch module, its input/output names and dynamic axes, real inputs,
    and a fingerprint of what the result depends on."""

    name: str
    task: Task
    tokenizer: str | None
    build_module: Callable[[], Any]  # -> torch.nn.Module in eval mode
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    input_sets: Callable[[], list[dict[str, np.ndarray]]]  # first = export example
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def cache_key(self) -> str:
        """Key of this export in the cache, from the plan's fingerprint."""
        return cache_key("export", self.fingerprint)


def cache_key(kind: str, source: Any) -> str:
    """The export cache's key: what was exported and the tools that did it, under separate
    keys so that no source field can shadow a tool version (or the other way round)."""
    return sha256_json({"schema": CACHE_KEY_SCHEMA, "kind": kind, "source": source, "versions": export_versions(),
                        "format": EXPORT_FORMAT_VERSION, "opset": OPSET})


_TEXT_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _inputs_for(task: Task, tokenizer: str | None) -> Callable[[], list[dict[str, np.ndarray]]]:
    from edgefold.export.sample_inputs import real_input_sets

    return lambda: real_input_sets(task, tokenizer)


def builtin_plan(name: str) -> ExportPlan:
    """Export plan for a built-in model by name (smollm2-135m, minilm-l6, efficientnet-lite0, digits-cnn)."""
    from edgefold.export import wrappers

    entry = builtin.BUILTINS[name]
    weights = entry.weight_files()
    fingerprint: dict[str, Any] = {"builtin": name, "weights": sha256_files(weights) if weights else None}
    if name == "smollm2-135m":
        return ExportPlan(name, entry.task, entry.tokenizer, lambda: wrappers.CausalLMLogits(builtin.load_smollm2()),
                          ["input_ids"], ["logits"], {"input_ids": _TEXT_AXES["input_ids"]},
                          _inputs_for(entry.task, entry.tokenizer), fingerprint)
    if name == "minilm-l6":
        return ExportPlan(name, entry.task, entry.tokenizer, lambda: wrappers.SentenceEmbedding(builtin.load_minilm()),
                          ["input_ids", "attention_mask"], ["embedding"], dict(_TEXT_AXES),
                          _inputs_for(entry.task, entry.tokenizer), fingerprint)
    if name == "efficientnet-lite0":
        return ExportPlan(name, entry.task, None, builtin.load_efficientnet_lite0, ["image"], ["logits"],
                          {"image": {0: "batch"}}, _inputs_for(entry.task, None), fingerprint)
    if name == "digits-cnn":
        from edgefold.models import digits_cnn

        fingerprint["code"] = sha256_file(Path(digits_cnn.__file__))
        return ExportPlan(name, entry.task, None, lambda: digits_cnn.train_digits_cnn(seed=0), ["image"], ["logits"],
                          {"image": {0: "batch"}}, _inputs_for(entry.task, None), fingerprint)
    raise EdgefoldError(f"unknown built-in model {name!r}")


def hf_folder_plan(folder: Path) -> ExportPlan:
    """A Hugging Face model folder: causal LMs, sentence-transformers, plain encoders."""
    from edgefold.export import wrappers

    config_path = folder / "config.json"
    if not config_path.exists():
        raise EdgefoldError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgefoldError(f"{config_path} is not valid JSON: {exc}") from None
    architectures = config.get("architectures") or []
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    fingerprint = {"hf_folder": sha256_files(files, root=folder)}
    tokenizer = str(folder.resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def load(auto_class: str):
        def build():
            import torch
            import transformers

            cls = getattr(transformers, auto_class)
            try:
                return cls.from_pretrained(folder, dtype=torch.float32).eval()
            except Exception as exc:
                raise EdgefoldError(f"cannot load {folder} with {auto_class}: {str(exc).splitlines()[0]}") from None
        return build

    name = folder.resolve().name
    if any(a.endswith("ForCausalLM") for a in architectures):
        load_lm = load("AutoModelForCausalLM")
        return ExportPlan(name, Task.CAUSAL_LM, tokenizer, lambda: wrappers.CausalLMLogits(load_lm()),
                          ["input_ids"], ["logits"], {"input_ids": _TEXT_AXES["input_ids"]},
                          _inputs_for(Task.CAUSAL_LM, tokenizer), fingerprint)
    load_encoder = load("AutoModel")
    if (folder / "modules.json").exists() or (folder / "config_sentence_transformers.json").exists():
        return ExportPlan(name, Task.SENTENCE_EMBEDDING, tokenizer, lambda: wrappers.SentenceEmbedding(load_encoder()),
                          ["input_ids", "attention_mask"], ["embedding"], dict(_TEXT_AXES),
                          _inputs_for(Task.SENTENCE_EMBEDDING, tokenizer), fingerprint)
    if config.get("model_type") in {"bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra"}:
        return ExportPlan(name, Task.GENERIC, tokenizer, lambda: wrappers.HiddenStates(load_encoder()),
                          ["input_ids", "attention_mask"], ["last_hidden_state"], dict(_TEXT_AXES),
                          _inputs_for(Task.SENTENCE_EMBEDDING, tokenizer), fingerprint)
    raise EdgefoldError(
        f"unsupported model in {folder}: architectures {architectures or '?'} "
        "(supported: *ForCausalLM, sentence-transformers and BERT-family encoders)"
    )


def module_plan(module, example_inputs: dict[str, Any], *, name: str, task: Task, tokenizer: str | None,
                output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None,
                check_inputs: list[dict[str, Any]] | None) -> ExportPlan:
    """A user's torch.nn.Module, with their example inputs (numpy or torch)."""
    import torch

    def as_numpy(feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in feeds.items()}

    examples = [as_numpy(example_inputs)] + [as_numpy(f) for f in (check_inputs or [])]
    state = {k: sha256_bytes_of(v) for k, v in module.state_dict().items()}
    fingerprint = {
        "module": type(module).__module__ + "." + type(module).__qualname__,
        "state": sha256_json(state),
        "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in examples[0].items()},
        "dynamic_axes": dynamic_axes or {},
        "task": task.value,
    }
    return ExportPlan(name, task, tokenizer, lambda: module.eval(), list(example_inputs), output_names,
                      dynamic_axes or {}, lambda: examples, fingerprint)


def sha256_bytes_of(tensor) -> str:
    """Hex sha256 of a torch tensor's raw bytes."""
    from edgefold.hashing import sha256_bytes

    return sha256_bytes(tensor.detach().cpu().contiguous().numpy().tobytes())
