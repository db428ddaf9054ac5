"""Causal-LM perplexity on the project's fixed Wikipedia protocol.

The first `tokens` tokens of `data.wikipedia_text()` (tokenized without BOS) are split
into non-overlapping `chunk`-token windows; each window is scored independently and
perplexity is exp of the mean next-token NLL over all `chunk - 1` predicted positions of
every window. Log-softmax is taken in float64, so the number depends only on the model's
logits.
"""

from __future__ import annotations

import math

import numpy as np

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.evaluate import common
from edgefold.datasets import wikipedia_text

# Logits are chunk x vocab floats (512 x 49152 x 4 B = 100 MB for SmolLM2): run a few
# windows at a time when the batch dimension is dynamic, not all of them.
MAX_BATCH = 4


def wikipedia_tokens(tokenizer, tokens: int) -> np.ndarray:
    """The first `tokens` token ids of the Wikipedia text (no special tokens), int64.

    Tokenizes a growing prefix of the text instead of all 3 MB: pre-tokenization is
    local, so with a safety margin of tokens past the cut the first `tokens` ids are
    the same as those of the whole text.
    """
    tokenizer = common.as_tokenizer(tokenizer)
    text = wikipedia_text()
    margin = 256
    length = max(4096, tokens * 8)
    while True:
        ids = tokenizer(text[:length], add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens + margin or length >= len(text):
            break
        length *= 2
    if len(ids) < tokens:
        raise EdgefoldError(f"the Wikipedia text has only {len(ids)} tokens; asked for {tokens}")
    return np.asarray(ids[:tokens], dtype=np.int64)


def chunk_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Next-token NLL per predicted position: logits [seq, vocab], ids [seq] -> [seq - 1]."""
    logp = common.log_softmax64(logits[:-1])
    return -np.take_along_axis(logp, ids[1:, None].astype(np.int64), axis=-1)[:, 0]


def _feeds(session, ids: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {common.first_input(session).name: ids}
    if common.input_named(session, "attention_mask") is not None:
        feeds["attention_mask"] = np.ones_like(ids)
    if common.input_named(session, "position_ids") is not None:
        feeds["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
    return feeds


def perplexity(session, tokenizer, tokens: int = 8192, chunk: int = 512) -> float:
    """exp(mean next-token NLL) over tokens // chunk windows of the Wikipedia text."""
    if chunk < 2 or tokens < chunk:
        raise EdgefoldError(f"perplexity needs chunk >= 2 and tokens >= chunk (got tokens={tokens}, chunk={chunk})")
    session = common.as_session(session)
    n_chunks = tokens // chunk
    windows = wikipedia_tokens(tokenizer, n_chunks * chunk).reshape(n_chunks, chunk)
    seq = common.fixed_dim(session, common.first_input(session).name, 1)
    if seq is not None and seq != chunk:
        raise EdgefoldError(f"the model's sequence length is fixed to {seq}; perplexity needs {chunk}")
    batch = common.fixed_batch(session)
    if batch is not None and batch != 1:
        raise EdgefoldError(f"the model's batch size is fixed to {batch}; perplexity needs 1 or dynamic")
    step = 1 if batch == 1 else MAX_BATCH
    logits_name = common.output_name(session, "logits")

    total = 0.0
    count = 0
    groups = list(common.batches(n_chunks, step))
    for start, stop in progress.track(groups, "perplexity"):
        ids = windows[start:stop]
        logits = onnx_io.run(session, _feeds(session, ids))[logits_name]
        if logits.ndim != 3 or logits.shape[:2] != ids.shape:
            raise EdgefoldError(f"causal-LM output {logits_name} has shape {logits.shape}; expected [batch, seq, vocab]")
        for row in range(ids.shape[0]):
            nll = chunk_nll(logits[row], ids[row])
            total += float(nll.sum())
            count += nll.size
        del logits
    return math.exp(total / count)
