"""Sentence-embedding quality: Spearman correlation with human similarity on the Lee corpus.

Each of the 50 Lee documents is embedded once (truncated to `MAX_TOKENS`, batched with
padding and an attention mask); the cosine similarity of every one of the 1,225 pairs
is ranked against the human scores.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.evaluate import common
from edgefold.datasets import LEE_DOCUMENTS, lee_documents, lee_pair_indices

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
    _, _, human = lee_pair_indices()
    return float(spearmanr(pair_similarities(emb), human).statistic)


class SpearmanDifference(NamedTuple):
    """Lee Spearman of one model minus another's, with a 95% paired-bootstrap interval."""

    observed: float  # Spearman(a) - Spearman(b) on the 1,225 pairs
    low: float  # 2.5th percentile of the paired bootstrap
    high: float  # 97.5th percentile


def _check_embeddings(*embeddings: np.ndarray) -> None:
    first = embeddings[0]
    for emb in embeddings:
        if emb.ndim != 2 or emb.shape[0] != LEE_DOCUMENTS or emb.shape != first.shape:
            raise EdgefoldError(f"Lee embeddings must be [{LEE_DOCUMENTS}, dim] and alike; got "
                                f"{', '.join(str(e.shape) for e in embeddings)}")


def pair_similarities(emb: np.ndarray) -> np.ndarray:
    """Cosine similarity of the 1,225 Lee pairs, from the 50 L2-normalised document embeddings."""
    _check_embeddings(emb)
    rows, cols, _ = lee_pair_indices()
    return np.einsum("ij,ij->i", emb[rows], emb[cols])


def pair_fidelity(emb: np.ndarray, reference: np.ndarray) -> float:
    """Spearman rho between a compressed encoder's Lee pair similarities and the original's.

    Human-score Spearman can rise after pruning (a perturbation may happen to help this
    50-document set); this asks only whether the similarity ranking was preserved.
    """
    from scipy.stats import spearmanr

    _check_embeddings(emb, reference)
    return float(spearmanr(pair_similarities(emb), pair_similarities(reference)).statistic)


def spearman_difference(emb_a: np.ndarray, emb_b: np.ndarray, draws: int = 1000, seed: int = 0) -> SpearmanDifference:
    """Lee Spearman(a) - Spearman(b), with a 95% paired-bootstrap interval over the 50 documents.

    Pairs share documents, so the documents (not the 1,225 pairs) are resampled; a
    resampled document pair that is one document twice is left out.
    """
    from scipy.stats import spearmanr

    _check_embeddings(emb_a, emb_b)
    if draws < 1:
        raise EdgefoldError(f"bootstrap draws must be at least 1, got {draws}")
    rows, cols, human = lee_pair_indices()
    similarities = [pair_similarities(emb_a), pair_similarities(emb_b)]
    observed = spearmanr(similarities[0], human).statistic - spearmanr(similarities[1], human).statistic
    grids = []
    for values in (*similarities, human):
        grid = np.zeros((LEE_DOCUMENTS, LEE_DOCUMENTS))
        grid[rows, cols] = values
        grids.append(grid + grid.T)
    upper_i, upper_j = np.triu_indices(LEE_DOCUMENTS, 1)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(draws):
        picked = rng.choice(LEE_DOCUMENTS, LEE_DOCUMENTS, replace=True)
        i, j = picked[upper_i], picked[upper_j]
        distinct = i != j
        i, j = i[distinct], j[distinct]
        score_a = spearmanr(grids[0][i, j], grids[2][i, j]).statistic
        score_b = spearmanr(grids[1][i, j], grids[2][i, j]).statistic
        differences.append(score_a - score_b)
    low, high = np.percentile(differences, [2.5, 97.5])
    return SpearmanDifference(float(observed), float(low), float(high))
