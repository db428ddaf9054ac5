"""Where the weight bytes are, and what one token costs in bytes and seconds.

Model of the phone (DIP paper's setting): the non-MLP weights (attention, norms,
embedding/lm_head) stay resident in DRAM and are read every token; the MLP weights
live in flash, and the rest of the DRAM weight budget caches MLP columns. Per token:

    flash bytes = MLP columns requested and not cached (misses)
    DRAM bytes  = non-MLP weights read + every MLP column used (hits, and misses after
                  they land in DRAM; the matmul reads them from there)
    seconds     = flash bytes / flash bandwidth + DRAM bytes / DRAM bandwidth

Decode is memory-bound (a few GFLOP per token against hundreds of MB of weights), so
compute is not modelled, and flash and DRAM transfers are not overlapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgefold.errors import EdgefoldError

GB = 1e9


@dataclass(frozen=True)
class MlpShape:
    """Sizes of one MLP: hidden and intermediate channels, and how many projections read the input."""

    hidden: int
    intermediate: int
    producers: int  # 2 for gated (gate + up), 1 for plain


@dataclass(frozen=True)
class WeightLayout:
    """Where a model's weight bytes are: MLP shapes, bytes per weight, non-MLP bytes resident and read per token."""

    mlps: tuple[MlpShape, ...]
    bytes_per_weight: float
    resident_bytes: int  # non-MLP weights kept in DRAM
    read_bytes: int  # non-MLP weights read per token (an embedding table: one row)

    def input_column_bytes(self, layer: int) -> float:
        """One MLP input channel: its row of every producer (gate and up)."""
        m = self.mlps[layer]
        return m.producers * m.intermediate * self.bytes_per_weight

    def intermediate_column_bytes(self, layer: int) -> float:
        """One intermediate channel: its row of the down projection."""
        return self.mlps[layer].hidden * self.bytes_per_weight

    @property
    def mlp_bytes(self) -> float:
        """Bytes of all MLP weights (gate, up and down of every layer)."""
        return sum((m.producers + 1) * m.hidden * m.intermediate for m in self.mlps) * self.bytes_per_weight

    def cache_fraction(self, dram_budget_bytes: float) -> float:
        """Share of the MLP weights the budget left after resident weights can cache."""
        spare = dram_budget_bytes - self.resident_bytes
        if spare < 0:
            raise EdgefoldError(f"DRAM budget {dram_budget_bytes / 1e6:.1f} MB is smaller than the non-MLP weights "
                                f"({self.resident_bytes / 1e6:.1f} MB), which must stay resident")
        return min(1.0, spare / self.mlp_bytes)


def weight_layout(model: ir.Model, groups, bytes_per_weight: float | None = None) -> WeightLayout:
    """Byte layout from the model's initializers; `bytes_per_weight` re-prices every
    floating-point weight (e.g. 2 for fp16, 0.5 for int4) instead of the stored dtype."""
    mlp_weights = {ref.weight for g in groups for ref in [*g.producers, g.consumer]}
    mlp_weights |= {ref.bias for g in groups for ref in [*g.producers, g.consumer] if ref.bias}
    stored = {value.const_value.dtype.itemsize for name, value in model.graph.initializers.items()
              if name in mlp_weights}
    if bytes_per_weight is None:
        if len(stored) != 1:
            raise EdgefoldError("MLP weights have mixed dtypes; pass bytes_per_weight")
        bytes_per_weight = float(stored.pop())
    resident = read = 0.0
    for name, value in model.graph.initializers.items():
        if name in mlp_weights:
            continue
        tensor = value.const_value
        count = math.prod(tensor.shape)
        size = count * (bytes_per_weight if tensor.dtype.is_floating_point() else tensor.dtype.itemsize)
        resident += size
        readers = {use.node.op_type for use in value.uses()}
        rows = tensor.shape[0] if len(tensor.shape) == 2 else 1
        read += size / rows if readers == {"Gather"} else size  # a lookup table reads one row
    shapes = tuple(MlpShape(g.hidden, g.intermediate, len(g.producers)) for g in groups)
    return WeightLayout(shapes, float(bytes_per_weight), int(resident), int(read))


@dataclass
class TokenBytes:
    """Per-token traffic (arrays over tokens)."""

    requested: np.ndarray  # MLP bytes the token's masks ask for
    flash: np.ndarray  # MLP bytes missing from the cache
    dram: np.ndarray  # all weight bytes read from DRAM

    @property
    def hit_rate(self) -> np.ndarray:
        """Share of requested MLP bytes found in DRAM."""
        return 1.0 - self.flash / np.maximum(self.requested, 1.0)

    def seconds(self, flash_gbps: float, dram_gbps: float) -> np.ndarray:
        """Seconds each token spends reading weights, given flash and DRAM bandwidths in GB/s."""
        return self.flash / (flash_gbps * GB) + self.dram / (dram_gbps * GB)

    def tokens_per_second(self, flash_gbps: float, dram_gbps: float) -> float:
        """Average decode speed in tokens/s over all tokens, given flash and DRAM bandwidths in GB/s."""
        return float(len(self.flash) / self.seconds(flash_gbps, dram_gbps).sum())


def token_bytes(layout: WeightLayout, counts) -> TokenBytes:
    """Bytes per token from per-layer column counts ([tokens, layers] arrays)."""
    u_in = np.array([layout.input_column_bytes(i) for i in range(len(layout.mlps))])
    u_mid = np.array([layout.intermediate_column_bytes(i) for i in range(len(layout.mlps))])
    requested = counts.request_in @ u_in + counts.request_mid @ u_mid
    hit = counts.hit_in @ u_in + counts.hit_mid @ u_mid
    return TokenBytes(requested=requested, flash=requested - hit, dram=requested + layout.read_bytes)
