"""Metadata keys edgefold writes into every exported model, and how to read them back."""

from __future__ import annotations

import enum
import functools
import os
from pathlib import Path

from edgefold.errors import EdgefoldError

TASK_KEY = "edgefold.task"
MODEL_KEY = "edgefold.model"  # built-in name, HF folder, or original file name
TOKENIZER_KEY = "edgefold.tokenizer"  # built-in name or HF folder with tokenizer files
SOURCE_KEY = "edgefold.source_sha256"  # content hash of what was exported


class Task(str, enum.Enum):
    """What a model does, which decides the metric it is evaluated with."""

    CAUSAL_LM = "causal-lm"
    SENTENCE_EMBEDDING = "sentence-embedding"
    IMAGE_CLASSIFIER = "image-classifier"
    DIGITS_CLASSIFIER = "digits-classifier"
    GENERIC = "generic"


def model_task(meta: dict[str, str]) -> Task:
    """The task recorded in a model's metadata; GENERIC when none or an unknown one is recorded."""
    try:
        return Task(meta.get(TASK_KEY, Task.GENERIC.value))
    except ValueError:
        return Task.GENERIC


@functools.lru_cache(maxsize=4)
def load_tokenizer(ref: str):
    """A Hugging Face tokenizer for a built-in model name or a model folder (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    from edgefold.models import builtin

    if ref in builtin.TOKENIZER_LOADERS:
        return builtin.TOKENIZER_LOADERS[ref]()
    folder = Path(ref)
    if not folder.is_dir():
        raise EdgefoldError(f"tokenizer not found: {ref} (a built-in model name or a model folder)")
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise EdgefoldError(f"cannot load a tokenizer from {folder}: {str(exc).splitlines()[0]}") from None
