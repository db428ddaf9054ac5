"""Image-classifier metrics: agreement with a reference model on real photos, digits accuracy.

Images are preprocessed by `edgefold.datasets.image_batch` (shorter side 256, centre crop
224, (pixel - 127) / 128). Normalisation: efficientnet_lite_pytorch's README shows torchvision's ImageNet
`Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])`, but that text is copied from
efficientnet_pytorch (B0-B7); the Lite0 weights are converted straight from Google's
TF EfficientNet-Lite checkpoints, which were trained with inception-style
MEAN_RGB = 127, STDDEV_RGB = 128 ("edge models use inception-style mean and stddev for
better post-quantization"). The weights agree: on the sample photos the stem
BatchNorm's running variance matches the stem-conv output variance to a median ratio
of 0.90 with 127/128, against 4.4 with the ImageNet mean/std.
"""

from __future__ import annotations

import numpy as np

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.evaluate import common
from edgefold.datasets import IMAGE_SIZE, digits_split, image_batch, sample_photos

BATCH = 16


def _input_size(session) -> int:
    name = common.first_input(session).name
    h, w = common.fixed_dim(session, name, 2), common.fixed_dim(session, name, 3)
    if h is not None and w is not None and h != w:
        raise EdgefoldError(f"image input must be square, the model wants {h}x{w}")
    return h or w or IMAGE_SIZE


def logits(session, images: np.ndarray, description: str = "classifying") -> np.ndarray:
    """float32 [N, classes] logits, running in batches (or one at a time for a fixed batch of 1)."""
    session = common.as_session(session)
    name = common.first_input(session).name
    out_name = common.output_name(session, "logits")
    fixed = common.fixed_batch(session)
    step = fixed or BATCH
    outs = []
    for start, stop in progress.track(list(common.batches(len(images), step)), description):
        x = images[start:stop]
        real = len(x)
        if fixed and real < fixed:  # pad the last batch of a fixed-batch model
            x = np.concatenate([x, np.repeat(x[-1:], fixed - real, axis=0)])
        out = onnx_io.run(session, {name: np.ascontiguousarray(x, dtype=np.float32)})[out_name]
        outs.append(np.asarray(out).reshape(len(x), -1)[:real])
    return np.concatenate(outs)


def _images_for(session, images) -> np.ndarray:
    if images is None:
        images = sample_photos()
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
        return images
    return image_batch(list(images), _input_size(session))


def agreement(reference_logits: np.ndarray, candidate_logits: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and mean KL(softmax(ref) || softmax(cand)) in nats."""
    if reference_logits.shape != candidate_logits.shape:
        raise EdgefoldError(
            f"reference and candidate outputs differ in shape: {reference_logits.shape} vs {candidate_logits.shape}"
        )
    log_p = common.log_softmax64(reference_logits)
    log_q = common.log_softmax64(candidate_logits)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    top1 = reference_logits.argmax(axis=-1) == candidate_logits.argmax(axis=-1)
    return {"top1_agreement": float(top1.mean()), "kl": float(max(0.0, kl.mean()))}


def compare_classifiers(reference_session, candidate_session, images=None) -> dict[str, float]:
    """Agreement of a candidate with a reference classifier on the same images.

    `images`: None (the sample photos), a list of HxWx3 uint8 photos, or an already
    preprocessed float32 [N, C, H, W] batch.
    """
    reference_session = common.as_session(reference_session)
    candidate_session = common.as_session(candidate_session)
    batch = _images_for(reference_session, images)
    ref = logits(reference_session, batch, "reference")
    cand = logits(candidate_session, batch, "candidate")
    return agreement(ref, cand)


def mean_entropy(session, images=None) -> float:
    """Mean predictive entropy (nats) of the softmax over the images: a reference-free signal."""
    session = common.as_session(session)
    log_p = common.log_softmax64(logits(session, _images_for(session, images)))
    return float(-(np.exp(log_p) * log_p).sum(axis=-1).mean())


def digits_accuracy(session, seed: int = 0) -> float:
    """Top-1 accuracy on the fixed digits test split (450 images)."""
    _, _, x_test, y_test = digits_split(seed)
    out = logits(session, x_test, "digits")
    return float((out.argmax(axis=-1) == y_test).mean())


def digits_agreement(reference_session, candidate_session, seed: int = 0) -> dict[str, float]:
    """Top-1 agreement and KL of a candidate against a reference on the fixed digits test split."""
    _, _, x_test, _ = digits_split(seed)
    return agreement(logits(reference_session, x_test, "reference"), logits(candidate_session, x_test, "candidate"))
