"""Where models come from: the built-in real models and the metadata that travels
with every exported ONNX file (task, tokenizer) so later stages need no side files."""

from edgefold.models.metadata import (
    MODEL_KEY,
    SOURCE_KEY,
    TASK_KEY,
    TOKENIZER_KEY,
    Task,
    load_tokenizer,
    model_task,
)

__all__ = ["MODEL_KEY", "SOURCE_KEY", "TASK_KEY", "TOKENIZER_KEY", "Task", "load_tokenizer", "model_task"]
