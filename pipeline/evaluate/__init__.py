"""Task metrics on real data, chosen by the task recorded in the model's metadata.

| task               | metrics                                   | primary (higher is better) |
|--------------------|-------------------------------------------|----------------------------|
| causal-lm          | perplexity (Wikipedia, 8192 tokens)       | perplexity (no)            |
| sentence-embedding | lee_spearman (Lee corpus, 1,225 pairs)    | lee_spearman (yes)         |
| image-classifier   | top1_agreement, kl vs a reference model   | top1_agreement (yes)       |
|                    | (without a reference: entropy)            |                            |
| digits-classifier  | accuracy (+ top1_agreement, kl vs ref)    | accuracy (yes)             |
| generic            | none                                      | none                       |

Every metric is deterministic: fixed data, fixed order, no sampling.
"""

from __future__ import annotations

import os

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold.models.metadata import TOKENIZER_KEY, Task, model_task

__all__ = ["PRIMARY_METRICS", "evaluate", "primary_metric", "resolve_task"]

PERPLEXITY_CHUNK = 512

PRIMARY_METRICS: dict[Task, tuple[str, bool]] = {
    Task.CAUSAL_LM: ("perplexity", False),
    Task.SENTENCE_EMBEDDING: ("lee_spearman", True),
    Task.IMAGE_CLASSIFIER: ("top1_agreement", True),
    Task.DIGITS_CLASSIFIER: ("accuracy", True),
}


def resolve_task(task: Task | str) -> Task:
    """The Task for a Task or its name; unknown names are an error listing the known tasks."""
    if isinstance(task, Task):
        return task
    try:
        return Task(task)
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise EdgefoldError(f"unknown task {task!r} (known: {known})") from None


def primary_metric(task: Task | str) -> tuple[str, bool] | None:
    """(metric name, higher_is_better) for a task; None for a generic model (no task metric)."""
    return PRIMARY_METRICS.get(resolve_task(task))


def evaluate(
    model_path: str | os.PathLike,
    *,
    reference_path: str | os.PathLike | None = None,
    tokens: int = 8192,
    images=None,
    task: Task | str | None = None,
    tokenizer: str | None = None,
) -> dict[str, float]:
    """The task metrics of one ONNX model.

    `task` and `tokenizer` override the model's `edgefold.task` / `edgefold.tokenizer`
    metadata. `reference_path` is the uncompressed model that classifier agreement is
    measured against; `images` replaces the sample photos (HxWx3 uint8 photos or a
    preprocessed float32 NCHW batch).
    """
    meta = onnx_io.metadata(model_path)
    task = resolve_task(task) if task is not None else model_task(meta)
    tokenizer = tokenizer or meta.get(TOKENIZER_KEY) or None

    if task is Task.CAUSAL_LM:
        from edgefold.evaluate.perplexity import perplexity

        _need_tokenizer(tokenizer, model_path, task)
        chunk = min(PERPLEXITY_CHUNK, tokens)  # a quick run with fewer tokens scores one shorter window
        return {"perplexity": perplexity(onnx_io.session(model_path), tokenizer, tokens=tokens, chunk=chunk)}

    if task is Task.SENTENCE_EMBEDDING:
        from edgefold.evaluate.similarity import lee_spearman

        _need_tokenizer(tokenizer, model_path, task)
        return {"lee_spearman": lee_spearman(onnx_io.session(model_path), tokenizer)}

    if task is Task.IMAGE_CLASSIFIER:
        from edgefold.evaluate import vision

        session = onnx_io.session(model_path)
        if reference_path is None:
            # Agreement with itself would be a meaningless 1.0; report the one
            # reference-free signal instead and leave the primary metric absent.
            return {"entropy": vision.mean_entropy(session, images)}
        return vision.compare_classifiers(onnx_io.session(reference_path), session, images)

    if task is Task.DIGITS_CLASSIFIER:
        from edgefold.evaluate import vision

        session = onnx_io.session(model_path)
        result = {"accuracy": vision.digits_accuracy(session)}
        if reference_path is not None:
            result.update(vision.digits_agreement(onnx_io.session(reference_path), session))
        return result

    return {}


def _need_tokenizer(tokenizer, model_path, task: Task) -> None:
    if not tokenizer:
        raise EdgefoldError(
            f"{model_path}: a {task.value} model needs a tokenizer, but it has no {TOKENIZER_KEY} metadata "
            "(pass tokenizer=<built-in name or model folder>)"
        )
