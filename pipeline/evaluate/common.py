"""Small helpers the metric modules share: sessions, tokenizers, input shapes."""

from __future__ import annotations

import os

import numpy as np

from edgefold import onnx_io
from edgefold.errors import EdgefoldError


def as_session(session_or_path):
    """An onnxruntime session, opening a path if given one."""
    if isinstance(session_or_path, (str, os.PathLike)):
        return onnx_io.session(session_or_path)
    return session_or_path


def as_tokenizer(tokenizer_or_ref):
    """A tokenizer object, loading a built-in name or model folder if given a string."""
    if tokenizer_or_ref is None:
        raise EdgefoldError("this metric needs a tokenizer (edgefold.tokenizer metadata or tokenizer=...)")
    if isinstance(tokenizer_or_ref, (str, os.PathLike)):
        from edgefold.models.metadata import load_tokenizer

        return load_tokenizer(str(tokenizer_or_ref))
    return tokenizer_or_ref


def input_named(session, name: str):
    """The session's input with this name, or None."""
    for entry in session.get_inputs():
        if entry.name == name:
            return entry
    return None


def first_input(session):
    """The session's first declared input."""
    return session.get_inputs()[0]


def output_name(session, preferred: str) -> str:
    """`preferred` if the session has an output of that name, else the name of its first output."""
    names = [o.name for o in session.get_outputs()]
    return preferred if preferred in names else names[0]


def fixed_batch(session) -> int | None:
    """The batch size the model's first input is fixed to, or None when it is dynamic."""
    shape = first_input(session).shape
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return shape[0]
    return None


def fixed_dim(session, input_name: str, axis: int) -> int | None:
    """Size the model fixes for `axis` of the named input (or its first input); None when that dim is dynamic."""
    entry = input_named(session, input_name) or first_input(session)
    shape = entry.shape or []
    if len(shape) > axis and isinstance(shape[axis], int) and shape[axis] > 0:
        return shape[axis]
    return None


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def batches(n: int, size: int):
    """(start, stop) index ranges that cover `n` items in batches of at most `size`."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
