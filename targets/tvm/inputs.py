"""Real inputs at a bucket's static shape, for checking a compiled library.

Causal LMs read consecutive windows of the Wikipedia evaluation text (so argmax
agreement is measured on real text), encoders the Lee corpus, images and digits the
model's own reference inputs. Inputs with no known source get deterministic random
values, so a check is repeatable either way.
"""

from __future__ import annotations

import numpy as np

from edgefold.targets.tvm.buckets import Bucket


def check_inputs(bucket: Bucket, task: str, tokenizer: str | None, reference: dict[str, np.ndarray],
                 count: int = 1) -> list[dict[str, np.ndarray]]:
    """`count` input sets for `bucket` (different data in each)."""
    names = list(bucket.shapes)
    if "input_ids" in names and tokenizer and task == "causal-lm":
        return _token_windows(bucket, tokenizer, count)
    if "input_ids" in names and tokenizer:
        return _sentences(bucket, tokenizer, count)
    sets = []
    for index in range(count):
        feeds = {}
        for name, shape in bucket.shapes.items():
            feeds[name] = _from_reference(reference.get(name), shape, index)
            if feeds[name] is None:
                feeds[name] = _random(shape, bucket.dtypes[name], seed=index)
        sets.append(feeds)
    return sets


def _token_windows(bucket: Bucket, tokenizer: str, count: int) -> list[dict[str, np.ndarray]]:
    from edgefold.evaluate.perplexity import wikipedia_tokens

    seq = bucket.shapes["input_ids"][1]
    ids = wikipedia_tokens(tokenizer, seq * count)
    sets = []
    for index in range(count):
        window = ids[index * seq:(index + 1) * seq][None, :]
        sets.append(_text_feeds(bucket, window, np.ones_like(window)))
    return sets


def _sentences(bucket: Bucket, tokenizer: str, count: int) -> list[dict[str, np.ndarray]]:
    from edgefold.datasets import lee_documents
    from edgefold.models.metadata import load_tokenizer

    seq = bucket.shapes["input_ids"][1]
    encoded = load_tokenizer(tokenizer)(lee_documents()[:count], padding="max_length", truncation=True,
                                        max_length=seq, return_tensors="np")
    return [_text_feeds(bucket, encoded["input_ids"][i:i + 1], encoded["attention_mask"][i:i + 1])
            for i in range(count)]


def _text_feeds(bucket: Bucket, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {}
    for name, shape in bucket.shapes.items():
        dtype = bucket.dtypes[name]
        if name == "input_ids":
            feeds[name] = ids.astype(dtype)
        elif name == "attention_mask":
            feeds[name] = mask.astype(dtype)
        elif name == "position_ids":
            feeds[name] = np.arange(shape[1], dtype=dtype)[None, :]
        else:
            feeds[name] = np.zeros(shape, dtype)
    return feeds


def _from_reference(array: np.ndarray | None, shape: tuple[int, ...], index: int) -> np.ndarray | None:
    """Sample `index` of the reference batch, when its shape fits the bucket."""
    if array is None or array.ndim != len(shape) or tuple(array.shape[1:]) != tuple(shape[1:]):
        return None
    if shape[0] != 1:
        return None
    return np.ascontiguousarray(array[index % array.shape[0]][None])


def _random(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        return rng.integers(0, 16, size=shape).astype(dtype)  # small: ids index tables of unknown size
    if dtype == "bool":
        return np.ones(shape, bool)
    return rng.standard_normal(shape).astype(dtype)
