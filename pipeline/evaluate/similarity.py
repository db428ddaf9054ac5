"""Sentence-embedding quality: Spearman correlation with human similarity on the Lee corpus.

Each of the 50 Lee documents is embedded once (truncated to `MAX_TOKENS`, batched with
padding and an attention mask); the cosine similarity of every one of the 1,225 pairs
is ranked against the human scores.
"""

from __future__ import annotations

import numpy as np

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.evaluate import common
from edgefold.evaluate.data import lee_documents, lee_pair_indices

# all-MiniLM-L6-v2's sentence-transformers max_seq_length; every Lee document fits (<= 154 tokens).
MAX_TOKENS = 256
BATCH = 16


def embed(session, tokenizer, texts: list[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """float64 [len(texts), dim] embeddings, L2-normalised."""
    session = common.as_session(session)
    tokenizer = common.as_tokenizer(tokenizer)
    ids_name = "input_ids" if common.input_named(session, "input_ids") is not None else common.first_input(session).name
    seq = common.fixed_dim(session, ids_name, 1)
    batch = common.fixed_batch(session) or BATCH
    pad_to = "max_length" if seq is not None else "longest"
    out_name = common.output_name(session, "embedding")
    vectors = []
    for start, stop in progress.track(list(common.batches(len(texts), batch)), "embedding"):
        chunk = list(texts[start:stop])
        real = len(chunk)
        chunk += [""] * (batch - real) if common.fixed_batch(session) else []
        enc = tokenizer(
            chunk, padding=pad_to, truncation=True, max_length=seq or max_tokens, return_tensors="np"
        )
        mask = enc["attention_mask"].astype(np.int64)
        feeds = {ids_name: enc["input_ids"].astype(np.int64), "attention_mask": mask}
        if "token_type_ids" in enc:
            feeds["token_type_ids"] = enc["token_type_ids"].astype(np.int64)
        out = np.asarray(onnx_io.run(session, feeds)[out_name], dtype=np.float64)
        if out.ndim == 3:  # token embeddings: mean-pool over real tokens
            weights = mask[:, :, None].astype(np.float64)
            out = (out * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        if out.ndim != 2:
            raise EdgefoldError(f"embedding output {out_name} has shape {out.shape}; expected [batch, dim]")
        vectors.append(out[:real])
    emb = np.concatenate(vectors)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def lee_spearman(session, tokenizer) -> float:
    """Spearman rho between pairwise cosine similarity and human Lee scores (1,225 pairs)."""
    from scipy.stats import spearmanr

    emb = embed(session, tokenizer, lee_documents())
    rows, cols, human = lee_pair_indices()
    cosine = np.einsum("ij,ij->i", emb[rows], emb[cols])
    return float(spearmanr(cosine, human).statistic)
