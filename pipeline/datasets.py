"""Real evaluation data, read from installed packages (never downloaded, never copied).

Every reader here is deterministic and cached: the same call gives the same data in every
run, so metrics compare across runs and across machines. `image_batch` turns photos into
a classifier's input the same way every time.

- `wikipedia_text`: gensim's shortened English Wikipedia dump, wiki markup filtered.
- `lee_pairs`: the Lee et al. (2005) news corpus, 50 documents, 1,225 human-rated pairs.
- `sample_photos`: 9 scikit-image / matplotlib colour photos plus 7 fixed crops of each (72).
- `digits_split`: scikit-learn's 8x8 digits with a fixed stratified 75/25 split.
- `image_batch`: photos preprocessed for an ImageNet classifier (NCHW float32).
"""

from __future__ import annotations

import bz2
import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from edgefold.errors import EdgefoldError

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_CORPUS = "lee.cor"
LEE_SIMILARITIES = "similarities0-1.txt"
LEE_DOCUMENTS = 50
LEE_PAIRS = LEE_DOCUMENTS * (LEE_DOCUMENTS - 1) // 2  # 1,225


def _gensim_data(name: str) -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise EdgefoldError("evaluation data needs the package gensim: pip install gensim") from None
    path = Path(datapath(name))
    if not path.is_file():
        raise EdgefoldError(f"gensim test data file missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def wikipedia_text() -> str:
    """All pages of gensim's shortened enwiki dump, in file order, as plain text.

    Protocol (fixed, so perplexities compare across the project): every page from
    `extract_pages`, markup removed by `filter_wiki`, bold/italic quote marks stripped,
    pages empty after stripping whitespace dropped, pages joined with blank lines.
    """
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    pages = []
    with bz2.open(_gensim_data(WIKI_DUMP), "rb") as f:
        for _title, text, _pageid in extract_pages(f):
            text = filter_wiki(text or "").replace("'''", "").replace("''", "").strip()
            if text:
                pages.append(text)
    if not pages:
        raise EdgefoldError(f"no pages in {WIKI_DUMP}")
    return "\n\n".join(pages)


@functools.lru_cache(maxsize=1)
def _lee_documents() -> tuple[str, ...]:
    with open(_gensim_data(LEE_CORPUS), "rb") as f:  # latin-1, one document per line
        return tuple(line.decode("latin1").strip() for line in f if line.strip())


@functools.lru_cache(maxsize=1)
def _lee() -> tuple[tuple[str, str, float], ...]:
    documents = _lee_documents()
    scores = np.loadtxt(_gensim_data(LEE_SIMILARITIES))
    if len(documents) != LEE_DOCUMENTS or scores.shape != (LEE_DOCUMENTS, LEE_DOCUMENTS):
        raise EdgefoldError(
            f"Lee corpus has {len(documents)} documents and a {scores.shape} score matrix; expected {LEE_DOCUMENTS}"
        )
    # The file holds the upper triangle (1 on the diagonal, 0 below); gensim's own Lee
    # test reads it the same way: np.triu_indices(50, 1), row-major order.
    rows, cols = np.triu_indices(LEE_DOCUMENTS, 1)
    pairs = tuple((documents[i], documents[j], float(scores[i, j])) for i, j in zip(rows, cols))
    assert len(pairs) == LEE_PAIRS
    return pairs


def lee_documents() -> list[str]:
    """The 50 Lee documents, in file order."""
    return list(_lee_documents())


def lee_pairs() -> list[tuple[str, str, float]]:
    """(doc_a, doc_b, human similarity in [0, 1]) for all 1,225 pairs of the 50 documents."""
    return list(_lee())


def lee_pair_indices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same pairs as document indices: (i, j, human score), so each document is embedded once."""
    rows, cols = np.triu_indices(LEE_DOCUMENTS, 1)
    scores = np.array([score for _, _, score in _lee()])
    return rows, cols, scores


# --- photos ----------------------------------------------------------------------------

# scikit-image colour photographs shipped inside the wheel (the others need pooch + network).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
# matplotlib's only colour photograph (Minduka_Present_Blue_Pack.png is 128 px clip art).
_MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
# (scale of the shorter side, anchor) for the crops taken from every photo.
_CROPS = (
    (0.6, "top-left"),
    (0.6, "top-right"),
    (0.6, "bottom-left"),
    (0.6, "bottom-right"),
    (0.6, "center"),
    (0.8, "center"),
    (0.4, "center"),
)


def _base_photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    photos: list[tuple[str, np.ndarray]] = []
    for name in _SKIMAGE_PHOTOS:
        try:
            photos.append((name, getattr(skimage.data, name)()))
        except Exception:  # a file not in this wheel (needs pooch): skip, the set stays fixed per install
            continue
    try:
        left, _right, _disparity = skimage.data.stereo_motorcycle()
        photos.append(("motorcycle", left))
    except Exception:
        pass
    try:
        from matplotlib import cbook

        for name in _MATPLOTLIB_PHOTOS:
            try:
                with cbook.get_sample_data(name) as f:
                    photos.append((name, _read_image(f)))
            except Exception:
                continue
    except ImportError:
        pass
    out = []
    for name, image in photos:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] < 3:
            continue
        if image.dtype != np.uint8:  # matplotlib reads PNGs as float in [0, 1]
            image = np.clip(np.round(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
        out.append((name, np.ascontiguousarray(image[:, :, :3])))
    return out


def _read_image(f) -> np.ndarray:
    from PIL import Image

    with Image.open(f) as img:
        return np.asarray(img.convert("RGB"))


def _crop(image: np.ndarray, scale: float, anchor: str) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(1, int(round(min(h, w) * scale)))
    top = {"top": 0, "bottom": h - side}.get(anchor.split("-")[0], (h - side) // 2)
    left = {"left": 0, "right": w - side}.get(anchor.split("-")[-1], (w - side) // 2)
    return np.ascontiguousarray(image[top : top + side, left : left + side])


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    images = []
    for _name, image in _base_photos():
        images.append(image)
        images.extend(_crop(image, scale, anchor) for scale, anchor in _CROPS)
    if not images:
        raise EdgefoldError("no sample photos found (scikit-image provides them: pip install scikit-image)")
    for image in images:
        image.setflags(write=False)
    return tuple(images)


def sample_photos() -> list[np.ndarray]:
    """HxWx3 uint8 photos: each base photo, then its fixed crops (read-only arrays)."""
    return list(_photos())


# --- digits ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _digits(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    arrays = (x_train, y_train, x_test, y_test)
    for a in arrays:
        a.setflags(write=False)
    return arrays


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 [N, 1, 8, 8] in [0, 1], int64 labels."""
    return _digits(seed)


# ---------------------------------------------------------------- image preprocessing
# RGB, shorter side resized to 256 (PIL bilinear, antialiased when shrinking), centre crop
# 224, then (pixel - 127) / 128 per channel (inception style, as the TF Lite checkpoints
# of EfficientNet-Lite were trained; see evaluate/vision.py), NCHW float32.

IMAGE_SIZE = 224
CROP_FRACTION = 0.875  # 224 / 256
# Per-channel mean and std on 0..255 pixels (inception style, as the TF Lite checkpoints).
PIXEL_MEAN = np.array([127.0, 127.0, 127.0], dtype=np.float32)
PIXEL_STD = np.array([128.0, 128.0, 128.0], dtype=np.float32)


def preprocess(photo: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One HxWx3 uint8 RGB photo -> float32 [3, size, size], normalised."""
    from PIL import Image

    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise EdgefoldError(f"expected an HxWx3 uint8 RGB image, got {photo.dtype} {photo.shape}")
    h, w = photo.shape[:2]
    short = int(round(size / CROP_FRACTION))
    scale = short / min(h, w)
    new_w, new_h = max(short, int(round(w * scale))), max(short, int(round(h * scale)))
    img = Image.fromarray(photo).resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = (np.asarray(img, dtype=np.float32) - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def image_batch(photos: Sequence[np.ndarray], size: int = IMAGE_SIZE) -> np.ndarray:
    """float32 [N, 3, size, size] for a list of HxWx3 uint8 photos."""
    return np.stack([preprocess(p, size) for p in photos]).astype(np.float32)
