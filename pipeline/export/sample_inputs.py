"""Real inputs for each task, used to verify exports and as reference data.

Text comes from the evaluation corpora (gensim's Wikipedia dump, the Lee corpus),
images from scikit-image's sample photos, digits from scikit-learn. The first set is
the export example (batch 2); the others use other shapes to prove dynamic axes work.
"""

from __future__ import annotations

import numpy as np

from edgefold.models.metadata import Task, load_tokenizer


def _token_windows(tokenizer, lengths: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    from edgefold.datasets import wikipedia_text

    ids = tokenizer(wikipedia_text()[:20000], add_special_tokens=False)["input_ids"]
    sets, offset = [], 0
    for batch, seq in lengths:
        rows = []
        for _ in range(batch):
            rows.append(ids[offset : offset + seq])
            offset += seq
        sets.append({"input_ids": np.asarray(rows, dtype=np.int64)})
    return sets


def _sentence_batches(tokenizer, sizes: list[int]) -> list[dict[str, np.ndarray]]:
    from edgefold.datasets import lee_documents

    documents = lee_documents()
    sets, offset = [], 0
    for size, max_length in sizes:
        batch = documents[offset : offset + size]
        offset += size
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        sets.append({"input_ids": encoded["input_ids"].astype(np.int64),
                     "attention_mask": encoded["attention_mask"].astype(np.int64)})
    return sets


def _image_batches(sizes: list[int]) -> list[dict[str, np.ndarray]]:
    from edgefold.datasets import sample_photos
    from edgefold.datasets import image_batch

    photos = sample_photos()
    sets, offset = [], 0
    for size in sizes:
        sets.append({"image": image_batch(photos[offset : offset + size]).astype(np.float32)})
        offset += size
    return sets


def _digit_batches(sizes: list[int]) -> list[dict[str, np.ndarray]]:
    from edgefold.datasets import digits_split

    _, _, test_images, _ = digits_split()
    sets, offset = [], 0
    for size in sizes:
        sets.append({"image": np.asarray(test_images[offset : offset + size], dtype=np.float32)})
        offset += size
    return sets


def real_input_sets(task: Task, tokenizer_ref: str | None) -> list[dict[str, np.ndarray]]:
    """Two or more input sets of different shapes; the first is the export example."""
    if task is Task.CAUSAL_LM:
        return _token_windows(load_tokenizer(tokenizer_ref), [(2, 16), (1, 48), (3, 7)])
    if task is Task.SENTENCE_EMBEDDING:
        return _sentence_batches(load_tokenizer(tokenizer_ref), [(2, 32), (3, 64)])
    if task is Task.IMAGE_CLASSIFIER:
        return _image_batches([2, 3])
    if task is Task.DIGITS_CLASSIFIER:
        return _digit_batches([2, 5])
    raise ValueError(f"no real inputs for task {task}")
