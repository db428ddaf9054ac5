"""Measured activation statistics from a few real samples (quantize, slice).

The model runs once per sample in onnxruntime with the wanted tensors added as graph
outputs; each gets its mean square per channel (the last axis, axis 1 for NCHW). For
quantize these are the inputs of its weight readers (an embedding table gets the token
counts, plus one, so unseen tokens still count); for slice, the FFN intermediates.

The samples are not the evaluation data: text models read the Lee
*background* corpus (the evaluation uses the Wikipedia dump and the 50 Lee documents),
digits the training split. Image models have only the evaluation photos, so they read
those mirrored; that overlap is why calibration is optional and off by default. Text
models can read the user's own text instead (`calibration_text`: a UTF-8 file, one
document per line).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold.models.metadata import TOKENIZER_KEY, Task, load_tokenizer, model_task

TEXT_TOKENS = 256  # at most this many tokens per calibration document


@dataclass
class CalibrationRun:
    """What a calibration actually read, for the pass stats (and so the manifest)."""

    samples: int = 0  # documents/batches run (a corpus may hold fewer than asked)
    text_sha256: str | None = None  # of the user's documents that were run (calibration_text)
    inputs_sha256: str | None = None  # of every model input fed, in order: what makes a rerun reproducible

    def stats(self) -> dict:
        """The calibration's entries for a pass's stats: samples run, the digest of the model inputs fed,
        and the digest of the user's text if any."""
        extra = {"calibration_text_sha256": self.text_sha256} if self.text_sha256 else {}
        fed = {"calibration_inputs_sha256": self.inputs_sha256} if self.inputs_sha256 else {}
        return {"calibration_samples": self.samples, **fed, **extra}


def read_calibration_text(path: str | Path, who: str) -> list[str]:
    """A user's calibration text: UTF-8 (a BOM is fine), one document per non-empty line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise EdgefoldError(f"{who}: cannot read calibration_text {path}: {error}") from None
    documents = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not documents:
        raise EdgefoldError(f"{who}: calibration_text {path} has no text (one document per line)")
    return documents


def require_calibration_text(path: str | None) -> None:
    """Config-time check shared by the passes' `calibration_text` options (a pydantic validator error)."""
    if path is not None and not Path(path).is_file():
        raise ValueError(f"calibration_text {path}: no such file")


def calibration_feeds(model_path: Path, samples: int, who: str, fallback: str,
                      text_file: str | Path | None = None, run: CalibrationRun | None = None) -> list[dict[str, np.ndarray]]:
    """Model inputs for `samples` calibration documents/batches; `run` (if given) records the
    digest of a user's documents actually used."""
    meta = onnx_io.metadata(model_path)
    task = model_task(meta)
    if text_file is not None and task not in (Task.CAUSAL_LM, Task.SENTENCE_EMBEDDING):
        raise EdgefoldError(f"{who}: calibration_text needs a text model (causal-lm or sentence-embedding)")
    if task in (Task.CAUSAL_LM, Task.SENTENCE_EMBEDDING):
        tokenizer = load_tokenizer(meta.get(TOKENIZER_KEY) or "")
        if text_file is not None:
            documents = read_calibration_text(text_file, who)[:samples]
            if run is not None:
                run.text_sha256 = hashlib.sha256("\n".join(documents).encode("utf-8")).hexdigest()
        else:
            from gensim.test.utils import datapath

            with open(datapath("lee_background.cor"), "rb") as f:
                documents = [line.decode("latin1").strip() for line in f if line.strip()][:samples]
        feeds = []
        for text in documents:
            ids = tokenizer(text, add_special_tokens=task is Task.SENTENCE_EMBEDDING, truncation=True,
                            max_length=TEXT_TOKENS)["input_ids"]
            ids = np.asarray([ids], dtype=np.int64)
            feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        return feeds
    if task is Task.IMAGE_CLASSIFIER:
        from edgefold.datasets import sample_photos
        from edgefold.datasets import image_batch

        photos = [np.ascontiguousarray(p[:, ::-1]) for p in sample_photos()[:samples]]
        return [{"image": image_batch([p]).astype(np.float32)} for p in photos]
    if task is Task.DIGITS_CLASSIFIER:
        from edgefold.datasets import digits_split

        train, _, _, _ = digits_split()
        return [{"image": np.asarray(train[i * 8:(i + 1) * 8], np.float32)} for i in range(samples)]
    raise EdgefoldError(f"{who}: calibration needs a model with a known task (causal-lm, sentence-embedding, "
                        f"image or digits classifier); {fallback}")


def measure_energy(model_path: Path | None, sites, samples: int,
                   text_file: str | Path | None = None) -> CalibrationRun:
    """Set `reader.energy` of every reader of `sites` from real samples (in place)."""
    wanted = sorted({r.activation.name for s in sites for r in s.readers if r.activation is not None})
    sums, counts, run = _accumulate(model_path, wanted, samples, "quantize",
                                    "drop act_scale and use sensitivity=data-free", text_file=text_file)
    for site in sites:
        rows = site.value.const_value.shape[0]
        for reader in site.readers:
            name = reader.activation.name if reader.activation is not None else None
            if name not in sums:
                continue
            width = site.value.const_value.shape[reader.axis]
            if reader.kind == "gather":
                ids = sums[name]
                reader.energy = np.bincount(ids.astype(np.int64), minlength=rows)[:rows] + 1.0
            elif sums[name].shape == (width,):
                reader.energy = sums[name] / counts[name]
    return run


def channel_mean_squares(model_path: Path | None, names: list[str], samples: int, who: str,
                         fallback: str, axis: int | None = None,
                         text_file: str | Path | None = None) -> tuple[dict[str, np.ndarray], CalibrationRun]:
    """Mean square per channel of every float tensor in `names` over the calibration samples,
    and what was run. `axis` is the channel axis; None means axis 1 of 4-D tensors (NCHW) and
    the last axis otherwise."""
    sums, counts, run = _accumulate(model_path, sorted(set(names)), samples, who, fallback, axis, text_file)
    return {name: sums[name] / counts[name] for name in sums}, run


def input_hessians(model_path: Path | None, names: list[str], samples: int, who: str, fallback: str,
                   text_file: str | Path | None = None) -> tuple[dict[str, np.ndarray], CalibrationRun]:
    """Mean x x^T (width x width, float64) over the calibration tokens of every float tensor in
    `names` (channels on the last axis): the Hessian GPTQ rounds a layer's weight against."""
    sums, counts, run = _accumulate(model_path, sorted(set(names)), samples, who, fallback, text_file=text_file,
                                    statistic=_gram)
    return {name: sums[name] / counts[name] for name in sums}, run


def input_moments(model_path: Path | None, names: list[str], samples: int, who: str, fallback: str,
                  text_file: str | Path | None = None) -> tuple[dict[str, np.ndarray], CalibrationRun]:
    """E[[x, 1] [x, 1]^T] ((width + 1)-square, float64) over the calibration tokens of every float
    tensor in `names` (channels on the last axis): second moments, means (last row) and 1 in one
    matrix, what a least-squares re-fit with a bias reads (`lsq_repair`)."""
    sums, counts, run = _accumulate(model_path, sorted(set(names)), samples, who, fallback, text_file=text_file,
                                    statistic=_augmented_gram)
    return {name: sums[name] / counts[name] for name in sums}, run


def _gram(value: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, float]:
    flat = value.astype(np.float64).reshape(-1, value.shape[-1])
    return flat.T @ flat, flat.shape[0]


def _augmented_gram(value: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, float]:
    flat = value.astype(np.float64).reshape(-1, value.shape[-1])
    return _gram(np.hstack([flat, np.ones((flat.shape[0], 1))]))


def _accumulate(model_path: Path | None, wanted: list[str], samples: int, who: str, fallback: str,
                axis: int | None = None, text_file: str | Path | None = None, statistic=None):
    """Per-channel sums of squares (token ids: the ids themselves; or `statistic(value, axis)`)
    and counts of `wanted`, and what was run. `who`/`fallback` start and end the one-line errors."""
    statistic = statistic or _energy
    if model_path is None:
        raise EdgefoldError(f"{who}: calibration needs the model file; {fallback}")
    model_path = Path(model_path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, float] = {}
    run = CalibrationRun()
    fed = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        session = _session_with_outputs(model_path, wanted, Path(tmp))
        inputs = {i.name for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        for feed in calibration_feeds(model_path, samples, who, fallback, text_file, run):
            run.samples += 1
            feed = {k: v for k, v in feed.items() if k in inputs}
            for key in sorted(feed):
                fed.update(f"{key}:{feed[key].dtype}:{feed[key].shape};".encode())
                fed.update(np.ascontiguousarray(feed[key]).tobytes())
            values = session.run(outputs, feed)
            for name, value in zip(outputs, values):
                if name not in wanted:
                    continue
                total, count = statistic(value, axis)
                if np.issubdtype(value.dtype, np.integer):  # token ids: keep them all
                    total = np.concatenate([sums.get(name, np.zeros(0, np.int64)), total])
                else:
                    total = sums.get(name, 0) + total
                sums[name] = total
                counts[name] = counts.get(name, 0) + count
    run.inputs_sha256 = fed.hexdigest()
    return sums, counts, run


def _energy(value: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, float]:
    """Per-channel sum of squares and the count behind it (token ids: the ids themselves)."""
    if np.issubdtype(value.dtype, np.integer):
        return value.reshape(-1), 1.0
    x = value.astype(np.float64)
    if axis is not None:
        flat = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        return np.square(flat).sum(axis=0), flat.shape[0]
    if x.ndim == 4:  # NCHW: channels on axis 1
        return np.square(x).sum(axis=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3]
    flat = x.reshape(-1, x.shape[-1])
    return np.square(flat).sum(axis=0), flat.shape[0]


def _session_with_outputs(model_path: Path, names: list[str], tmp: Path):
    """A session on the same graph with `names` as extra outputs, on a copy of the external data.

    A copy, not a hard link: while a link exists the source has two links, and onnx_ir then
    refuses to load it (its hard-link guard), which broke any other job reading the same
    cached export at that moment. The copy costs ~0.3 s for SmolLM2's 538 MB.
    """
    proto = onnx.load(str(model_path), load_external_data=False)
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    data = onnx_io.data_path_for(model_path)
    if data.exists():  # onnxruntime refuses external data that resolves outside the model's folder
        shutil.copyfile(data, tmp / data.name)
    path = tmp / model_path.name
    onnx.save(proto, str(path))
    return onnx_io.session(path)
