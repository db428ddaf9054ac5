"""The `quantize` pass (weight-only quantization): read top to bottom in this order.

- `quantize.py`: the pass: options (`QuantizeConfig`), which weights, which formats, stats.
- `quant_formats.py`: the formats: quantizing, dequantizing and the bytes of one weight.
- `bit_allocation.py`: per-weight sensitivity and the mixed-precision allocator.
- `act_scaling.py`: optional activation-aware rescaling before quantizing (AWQ-like).
- `gptq.py`: optional error-compensated rounding against calibration Hessians.
- `quant_graph.py`: writing the quantized weights and their decode into the ONNX graph.

Calibration samples come from `passes/common/calibration.py` (shared with `slice`).
"""

from edgefold.passes.quantize.quantize import QuantizeConfig, QuantizePass

__all__ = ["QuantizeConfig", "QuantizePass"]
