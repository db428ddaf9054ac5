"""NNCF's `compress_weights` on an ONNX model, run in .venv-bench (which has nncf; the main venv does not).

    .venv-bench/bin/python -m bench.anchors.run_nncf --model IN.onnx --out DIR --variant data-free|awq-se \
        [--feeds FEEDS.npz]

INT4 asymmetric, group 128 (64 where the input width is not a multiple of 128: NNCF's ADJUST
fallback), ratio 1.0 (every weight NNCF would put in 4 bits), NNCF's defaults otherwise: it keeps the embedding and the last layer in int8 (its backup mode), which is what a
user of `compress_weights` gets. `awq-se` adds AWQ and scale estimation on the calibration feeds
(an .npz written by bench/quantize.py: arrays named `<sample>:<input>`). Writes DIR/model.onnx
(+ .data) and prints one JSON line with the seconds NNCF took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _feeds(path: Path) -> list[dict]:
    import numpy as np

    data = np.load(path)
    samples: dict[int, dict] = {}
    for key in data.files:
        index, name = key.split(":", 1)
        samples.setdefault(int(index), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", choices=["data-free", "awq-se"], required=True)
    parser.add_argument("--feeds")
    args = parser.parse_args()

    import nncf
    import onnx

    model = onnx.load(args.model)
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    # SmolLM2's 576-wide inputs are not a multiple of 128: NNCF stops there unless told to adjust
    # (it then uses the largest power of two that divides, 64).
    options = {"mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": 128, "ratio": 1.0,
               "advanced_parameters": AdvancedCompressionParameters(
                   group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)}
    if args.variant == "awq-se":
        feeds = _feeds(Path(args.feeds))
        options.update(dataset=nncf.Dataset(feeds), subset_size=len(feeds), awq=True, scale_estimation=True)
    start = time.perf_counter()
    compressed = nncf.compress_weights(model, **options)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(compressed, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data")
    print(json.dumps({"seconds": seconds, "nncf": nncf.__version__}))


if __name__ == "__main__":
    main()
