"""`quantize`: weight-only quantization, one format for every weight or mixed under a budget.

    --pass quantize:format=int8                 int8, one scale per output channel
    --pass quantize:format=int4,block=128       int4, a scale and zero point per 128 inputs
    --pass quantize:format=int4-g32-sym         int4, symmetric (no zero point)
    --pass quantize:avg_bits=4.5                mixed: formats chosen per weight
    --pass quantize:size_mb=80                  mixed: the whole file within 80 MB

Weights read by MatMul/Gemm/Conv, embedding tables read by Gather, and weights read
through a Transpose into a MatMul (a tied lm_head) are quantized once and dequantized
once by standard ONNX `DequantizeLinear` (see passes/quantize/quant_formats.py) whose
output feeds every original reader, so a tied embedding stays one tensor in the file.
With `emit=onnxruntime`, int4 weights of plain MatMuls become onnxruntime's
`MatMulNBits` (com.microsoft) instead, which runs faster there but only there.

Formats per weight under a budget come from a per-weight sensitivity (data-free, or with
`sensitivity=calibration` measured on a few real samples) and an exact knapsack
(passes/quantize/bit_allocation.py). `act_scale=0.5` rescales weights after norms by their
measured input energy first (passes/quantize/act_scaling.py). `method=gptq` rounds each
MatMul/Gemm weight column by column against its inputs' Hessian on calibration samples,
with the same scales as round-to-nearest (passes/quantize/gptq.py). Details: docs/quantize.md.

Only formats the device profile lists are allowed (fp8 needs a profile with fp8).
Budgets count every byte a weight stores (codes, scales, zero points) and are never
exceeded; a budget that even the smallest allowed formats cannot meet is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir
import pydantic

from edgefold import onnx_io, progress
from edgefold.errors import EdgefoldError
from edgefold.passes.base import GraphPass, PassConfig, PassContext, PassOutcome
from edgefold.passes.quantize import quant_formats as qf
from edgefold.passes.quantize.gptq import gptq_quantize
from edgefold.passes.quantize.quant_graph import emit_dequantize, emit_matmul_nbits, nbits_bytes, nbits_ready, nbits_storage
from edgefold.passes.quantize.bit_allocation import Option, Reader, allocate, relative_error
from edgefold.passes.common.reporting import nothing_removed
from edgefold.passes.registry import register_pass

# Candidates for mixed precision when the user names none (filtered by the profile).
# Each candidate costs one quantization per weight; symmetric int4 is left out (on SmolLM2
# it loses to asym at every block size) and `min` only at block 32 (at 64/128 asym, which
# represents 0 exactly, does better).
DEFAULT_CANDIDATES = ("fp32", "fp16", "fp8", "int8", "int8-g32", "int4-g32-min", "int4-g32-min-s8",
                      "int4-g32-min-s8t", "int4-g64-asym-s8t", "int4-g128-asym", "int4-g128-asym-s8t")
SAMPLE_ELEMENTS = 2_000_000  # sensitivity of bigger weights is measured on evenly spaced output channels
GRAPH_BYTES_PER_WEIGHT = 4096  # graph text a quantized weight adds (nodes, names; measured <= 4 KB); size_mb reserves it


class QuantizeConfig(PassConfig):
    """Options of `quantize`: one format for every weight, or a budget (avg_bits, size_mb) for mixed precision."""

    RENAMED: ClassVar[dict[str, str]] = {"target": "emit"}  # `target` meant a device everywhere else
    PATH_OPTIONS: ClassVar[tuple[str, ...]] = ("calibration_text",)

    format: str | None = pydantic.Field(
        None, description="one format for every weight: fp32, fp16, fp8, int8, int8-gN, int4-gN-sym|asym|min[-s8|-s8t]")
    block: int | None = pydantic.Field(default=None, ge=0, description="int4/int8 block size; 0 = per channel")
    scheme: Literal["sym", "asym", "min"] | None = pydantic.Field(
        None, description="int4 offset: sym (none), asym (zero point), min (a float minimum per block)")
    avg_bits: float | None = pydantic.Field(
        default=None, gt=0, description="mixed precision: formats per weight so the average is at most this many bits")
    size_mb: float | None = pydantic.Field(
        default=None, gt=0, description="mixed precision: formats per weight so the whole file fits in this many MB")
    formats: list[str] | None = pydantic.Field(
        None, description="mixed-precision candidates (default: the profile's formats among fp32 ... int4-g128)")
    embedding: str | None = pydantic.Field(
        None, description="format for embedding tables read by Gather: a format name, or keep (fp32)")
    exclude: list[str] = pydantic.Field(
        default_factory=list, description="initializer names containing any of these stay fp32")
    min_elements: int = pydantic.Field(default=1024, ge=0, description="smaller weights stay fp32")
    # Off by default: on SmolLM2 it lowers the error but raises perplexity (clipped outliers matter more).
    search: bool = pydantic.Field(
        False, description="int4: also try narrower ranges per block, keep the least squared error")
    sensitivity: Literal["data-free", "calibration"] = pydantic.Field(
        "data-free", description="how mixed precision ranks weights: from the weights alone, or with their measured "
                                 "input energy on calibration text")
    # Activation-aware scaling (AWQ-like): multiply the weight rows after a norm by s_i = E[x_i^2]^(alpha/2)
    # and divide the norm's scale by s_i: the same function in fp32, but inputs that carry most
    # signal get finer steps.
    act_scale: float | None = pydantic.Field(
        default=None, gt=0, le=1, description="AWQ-like rescaling strength alpha in (0, 1] before quantizing "
                                              "(uses calibration samples)")
    method: Literal["rtn", "gptq"] = pydantic.Field(
        "rtn", description="how int4/int8 codes are rounded: rtn (round to nearest, data-free) or gptq (column by "
                           "column against the inverse Hessian of each MatMul/Gemm weight's inputs on calibration "
                           "samples, each rounding error moved onto the columns not yet rounded; same scales)")
    # On by default: on SmolLM2 int4-g128-asym (2,048 tokens) GPTQ in input order gave perplexity
    # 37.2 and act_order 31.3, against 35.1 for round-to-nearest.
    act_order: bool = pydantic.Field(
        True, description="gptq: round the inputs with the largest Hessian diagonal first")
    damping: float = pydantic.Field(
        default=0.01, gt=0, le=1, description="gptq: fraction of the Hessian's mean diagonal added to it")
    calibration_samples: int = pydantic.Field(default=32, ge=1, description="calibration documents run")
    calibration_text: str | None = pydantic.Field(
        None, description="text models: this UTF-8 file (one document per line) instead of the Lee background corpus")
    emit: Literal["onnx", "onnxruntime"] = pydantic.Field(
        "onnx", description="onnx: standard DequantizeLinear; onnxruntime: int4 MatMuls as com.microsoft MatMulNBits")
    plot: bool = pydantic.Field(True, description="write a bits-per-layer plot beside the model")

    @pydantic.model_validator(mode="after")
    def _one_mode(self):
        modes = [k for k in ("format", "avg_bits", "size_mb") if getattr(self, k) is not None]
        if len(modes) > 1:
            raise ValueError(f"give one of format, avg_bits, size_mb (got {', '.join(modes)})")
        if (self.block is not None or self.scheme is not None) and self.format is None:
            raise ValueError("block/scheme go with format=...; for mixed precision list formats=[...]")
        if self.formats is not None and self.format is not None:
            raise ValueError("formats=[...] lists mixed-precision candidates; it does not go with format=")
        if self.method == "gptq" and self.act_scale is not None:
            raise ValueError("method=gptq measures its inputs on the model as given; it does not go with act_scale")
        if self.calibration_text is not None:
            # Measured energy shapes the model only through act_scale or a mixed-precision budget.
            mixed_calibrated = self.sensitivity == "calibration" and (self.avg_bits is not None or self.size_mb is not None)
            if self.act_scale is None and not mixed_calibrated and self.method != "gptq":
                raise ValueError("calibration_text is read only with act_scale, method=gptq, or "
                                 "sensitivity=calibration with avg_bits/size_mb")
            from edgefold.passes.common.calibration import require_calibration_text

            require_calibration_text(self.calibration_text)
        return self

    def input_files(self) -> list[str]:
        """The calibration text file, when one is given."""
        return [self.calibration_text] if self.calibration_text is not None else []


@dataclass
class ReaderSite:
    """One node reading a weight: the weight axis its input energy weighs, and that input."""

    axis: int  # weight axis the reader's input energy runs along
    activation: ir.Value | None  # the input whose energy weighs that axis (token ids for a Gather)
    kind: str  # matmul, gemm, conv, gather
    energy: np.ndarray | None = None
    share: float = 1.0  # fraction of the model's signal that passes through this reader


@dataclass
class WeightSite:
    """One weight to quantize: its initializer, layout, readers and candidate formats."""

    name: str
    value: ir.Value
    layout: qf.Layout
    readers: list[ReaderSite]
    table: bool = False  # read by a Gather (an embedding)
    matmul_only: bool = False  # read only by plain MatMul as input B (MatMulNBits can replace it)
    options: list[Option] = field(default_factory=list)


# ---------------------------------------------------------------- finding the weights


def find_sites(model: ir.Model, *, min_elements: int, exclude: list[str]) -> list[WeightSite]:
    """fp32 initializers that every reader reads as a weight, with their layout."""
    sites = []
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.dtype != ir.DataType.FLOAT or value.is_graph_input() or value.is_graph_output():
            continue
        if math.prod(tensor.shape) < max(min_elements, 1) or any(part in name for part in exclude):
            continue
        site = _site(name, value, len(tensor.shape))
        if site is not None:
            sites.append(site)
    return sites


def _site(name: str, value: ir.Value, ndim: int) -> WeightSite | None:
    layouts, readers, kinds = set(), [], []
    for use in value.uses():
        node, index = use.node, use.idx
        op = node.op_type if node.domain in ("", "ai.onnx") else None
        if op == "MatMul" and index == 1 and ndim == 2:
            layouts.add((1, 0))
            readers.append(ReaderSite(0, node.inputs[0], "matmul"))
        elif op == "Gemm" and index == 1 and ndim == 2:
            trans_b = node.attributes.get_int("transB", 0)
            layouts.add((0, 1) if trans_b else (1, 0))
            activation = node.inputs[0] if not node.attributes.get_int("transA", 0) else None
            readers.append(ReaderSite(1 if trans_b else 0, activation, "gemm"))
        elif op == "Conv" and index == 1 and ndim >= 3:
            layouts.add((0, 1))
            grouped = node.attributes.get_int("group", 1) != 1
            readers.append(ReaderSite(1, None if grouped else node.inputs[0], "conv"))
        elif op == "Gather" and index == 0 and ndim == 2 and node.attributes.get_int("axis", 0) == 0:
            layouts.add((0, 1))
            readers.append(ReaderSite(0, node.inputs[1], "gather"))
        elif op == "Transpose" and index == 0 and ndim == 2 and tuple(node.attributes.get_ints("perm", [1, 0])) == (1, 0):
            matmuls = [u.node for u in node.outputs[0].uses()]
            if not matmuls or any(m.op_type != "MatMul" or m.domain not in ("", "ai.onnx") for m in matmuls):
                return None
            if any(u.idx != 1 for u in node.outputs[0].uses()) or node.outputs[0].is_graph_output():
                return None
            layouts.add((0, 1))
            readers.extend(ReaderSite(1, m.inputs[0], "matmul") for m in matmuls)
        else:
            return None
        kinds.append(op)
    if len(layouts) != 1:
        return None
    out_axis, in_axis = layouts.pop()
    return WeightSite(name, value, qf.Layout(out_axis, in_axis), readers, table="Gather" in kinds,
                      matmul_only=set(kinds) == {"MatMul"} and len(kinds) == 1)


def _sample(weight: np.ndarray, site: WeightSite, readers: list[Reader]):
    """A deterministic subset of output channels of a big weight (blocks stay whole), and its readers."""
    step = math.ceil(weight.size / SAMPLE_ELEMENTS)
    if step <= 1:
        return weight, readers
    axis = site.layout.out_axis
    keep = np.arange(0, weight.shape[axis], step)
    sample = np.take(weight, keep, axis=axis)
    sliced = [Reader(r.axis, r.energy[keep] if r.axis == axis and r.energy is not None else r.energy, r.share)
              for r in readers]
    return sample, sliced


def _importance(site: WeightSite) -> np.ndarray | None:
    """Input energy along the weight's input axis (summed over readers), to weigh quantization error."""
    energies = [r.energy / max(float(r.energy.mean()), 1e-30) for r in site.readers
                if r.axis == site.layout.in_axis and r.energy is not None]
    return np.sum(energies, axis=0) if energies else None


def _residual_branch_weights(analysis) -> dict[str, float]:
    """Weights inside the branches of a residual stream carry 1/branches of the signal.

    A transformer block adds its attention and MLP outputs to the residual stream, so an
    error there is one of 2 x layers small updates, while the embedding and the output
    head carry the whole signal. Without this, a relative error would count the same in
    a block's k_proj as in the tied lm_head, which measurably it does not.
    """
    if analysis is None:
        return {}
    groups = {g.name: g for g in list(getattr(analysis, "ffns", [])) + list(getattr(analysis, "attentions", []))}
    shares: dict[str, float] = {}
    for tie in getattr(analysis, "ties", []):
        if tie.kind != "residual-stream" or not tie.members:
            continue
        for member in tie.members:
            group = groups.get(member)
            refs = []
            if group is not None and hasattr(group, "producers"):
                refs = list(group.producers) + [group.consumer]
            elif group is not None:
                refs = [group.q, group.k, group.v, group.o]
            for ref in refs:
                shares[ref.weight] = 1.0 / len(tie.members)
    return shares


def _norm_energy(activation: ir.Value | None, width: int) -> np.ndarray | None:
    """Data-free input energy: the squared scale of the norm that produces the input, if any."""
    producer = activation.producer() if activation is not None else None
    if producer is None:
        return None
    if producer.op_type == "Mul":
        for operand in producer.inputs:
            data = operand.const_value if operand is not None else None
            if data is not None and tuple(data.shape) == (width,):
                return np.square(data.numpy().astype(np.float64))
    if producer.op_type == "LayerNormalization":
        scale, bias = (producer.inputs + (None, None))[1:3]
        if scale is not None and scale.const_value is not None and tuple(scale.const_value.shape) == (width,):
            energy = np.square(scale.const_value.numpy().astype(np.float64))
            if bias is not None and bias.const_value is not None:
                energy = energy + np.square(bias.const_value.numpy().astype(np.float64))
            return energy
    return None


# ---------------------------------------------------------------- the pass


@register_pass
class QuantizePass(GraphPass):
    """`quantize`: weight-only int8/int4/fp8 quantization, one format for all or mixed under a bit budget."""

    name = "quantize"
    Config = QuantizeConfig
    summary = "weight-only int8/int4/fp8 quantization (DequantizeLinear), uniform or mixed under a bit budget"

    def run(self, model: ir.Model, context: PassContext) -> PassOutcome:
        """Replace weights in place by quantized codes and the nodes that dequantize them;
        stats give each weight's format, bytes before and after, and relative output error."""
        cfg = self.config
        allowed = list(getattr(context.profile, "weight_formats", None) or qf.KIND_BITS)
        profile_name = getattr(context.profile, "name", None)
        sites = find_sites(model, min_elements=cfg.min_elements, exclude=list(cfg.exclude))
        if not sites:
            why = f"no fp32 weight of at least {cfg.min_elements} elements to quantize (lower min_elements)"
            return PassOutcome(model, nothing_removed({"weights": 0}, "quantize", why))
        fixed = self._fixed_formats(sites, allowed, profile_name)
        self._scaled = 0
        self._calibration = None  # CalibrationRun when samples are measured
        self._measure_energy(model, sites, context)

        mixed = cfg.avg_bits is not None or cfg.size_mb is not None
        if mixed:
            chosen, budget = self._allocate(model, sites, fixed, allowed, profile_name, context)
        else:
            uniform = _format(cfg.format or "int8", cfg.block, cfg.scheme, allowed, profile_name)
            chosen = {s.name: fixed.get(s.name, _fallback(s, uniform)) for s in sites}
            budget = None

        hessians = self._hessians(sites, chosen, context) if cfg.method == "gptq" else {}
        rows, new_nodes, bytes_before, bytes_after = [], [], 0, 0
        for site in progress.track(sites, "quantizing weights"):
            fmt = chosen[site.name]
            weight = site.value.const_value.numpy()
            if site.name in hessians:
                q = gptq_quantize(weight, fmt, site.layout, hessians.pop(site.name), damping=cfg.damping,
                                  act_order=cfg.act_order, search=cfg.search, importance=_importance(site))
            else:
                q = qf.quantize(weight, fmt, site.layout, search=cfg.search, importance=_importance(site))
            error = relative_error(weight, q.dequantize(), self._readers(site))
            before = weight.nbytes
            use_nbits = cfg.emit == "onnxruntime" and site.matmul_only and nbits_ready(q)
            if fmt.kind != "fp32":
                emit = emit_matmul_nbits if use_nbits else emit_dequantize
                new_nodes += emit(model, site.name, site.value, q)
            after = nbits_bytes(q) if fmt.kind != "fp32" and use_nbits else q.nbytes
            bytes_before += before
            bytes_after += after
            rows.append([site.name, fmt.name, before, after, float(f"{error:.4g}")])
        if new_nodes:
            model.graph.insert_before(next(iter(model.graph)), new_nodes)
        _ensure_opsets(model, cfg.emit)

        stats = _stats(rows, bytes_before, bytes_after, budget, "mixed" if mixed else "uniform", cfg)
        stats["removed"] = bytes_before - bytes_after  # weight bytes
        quantized = sum(row[1] != "fp32" for row in rows)
        if not quantized:
            nothing_removed(stats, "quantize", f"every one of the {len(rows)} weights stays fp32")
        elif bytes_after >= bytes_before:  # scales and zero points outweigh the codes of tiny tensors
            nothing_removed(stats, "quantize", f"the {quantized} quantized weights take {bytes_after} bytes against "
                                               f"{bytes_before} in fp32 (raise min_elements)")
        if cfg.method == "gptq":
            stats["gptq_weights"] = self._gptq_weights
        if cfg.act_scale is not None:
            stats["act_scaled_norms"] = self._scaled
        if self._calibration is not None:
            stats.update(self._calibration.stats())
        if budget is not None and fixed:  # what the budget was spent on: the weights not pinned
            free = [r for r in rows if r[0] not in fixed]
            budget["avg_bits_allocated"] = round(8 * sum(r[3] for r in free) / max(sum(r[2] // 4 for r in free), 1), 4)
        if cfg.plot and context.workdir is not None:
            plot_bits(rows, Path(context.workdir) / "quantize-bits.png",
                      title=f"quantize: {stats['avg_bits']:.2f} bits/weight")
        return PassOutcome(model, stats)

    # ------------------------------------------------------------ choosing formats

    def _fixed_formats(self, sites, allowed, profile_name) -> dict[str, qf.Format]:
        """Weights whose format the user pinned (embedding=...)."""
        fixed = {}
        if self.config.embedding is not None:
            text = "fp32" if self.config.embedding == "keep" else self.config.embedding
            fmt = _format(text, None, None, allowed, profile_name)
            fixed.update({s.name: _fallback(s, fmt) for s in sites if s.table})
        return fixed

    def _readers(self, site: WeightSite) -> list[Reader]:
        return [Reader(r.axis, r.energy, r.share) for r in site.readers]

    def _allocate(self, model, sites, fixed, allowed, profile_name, context):
        cfg = self.config
        names = cfg.formats if cfg.formats is not None else [n for n in DEFAULT_CANDIDATES
                                                              if qf.parse_format(n).kind in allowed]
        candidates = [_format(n, None, None, allowed, profile_name) for n in names]
        if not candidates:
            raise EdgefoldError("quantize: no candidate formats left for mixed precision")
        for site in progress.track(sites, "measuring sensitivity"):
            weight = site.value.const_value.numpy()
            shape = tuple(weight.shape)
            scale_bytes = qf.block_scale_bytes(float(np.abs(weight).max(initial=0.0)))
            sample, readers = _sample(weight, site, self._readers(site))
            pool = [fixed[site.name]] if site.name in fixed else candidates
            for fmt in pool:
                fmt = _fallback(site, fmt)
                if any(o.format == fmt.name for o in site.options):
                    continue
                q = qf.quantize(sample, fmt, site.layout, search=cfg.search, importance=_importance(site))
                nbytes = qf.storage_bytes(shape, fmt, site.layout, scale_bytes)
                if cfg.emit == "onnxruntime" and site.matmul_only:
                    nbytes = nbits_storage(shape, fmt, site.layout) or nbytes
                site.options.append(Option(fmt.name, nbytes, relative_error(sample, q.dequantize(), readers)))

        weights = sum(math.prod(s.value.const_value.shape) for s in sites)
        if cfg.avg_bits is not None:
            # avg_bits is over the weights the allocator chooses for; pinned ones (embedding=...)
            # are outside it (size_mb, by contrast, is the whole file)
            pinned = sum(s.options[0].nbytes for s in sites if s.name in fixed)
            free = sum(math.prod(s.value.const_value.shape) for s in sites if s.name not in fixed)
            budget = int(math.floor(cfg.avg_bits * free / 8)) + pinned
            what = f"avg_bits={cfg.avg_bits:g}"
        else:
            other = sum(v.const_value.nbytes for n, v in model.graph.initializers.items()
                        if v.const_value is not None and n not in {s.name for s in sites})
            graph = _graph_bytes(context.model_path, model) + GRAPH_BYTES_PER_WEIGHT * len(sites)
            budget = int(math.floor(cfg.size_mb * 1e6)) - other - graph
            what = f"size_mb={cfg.size_mb:g}"
        smallest = sum(min(o.nbytes for o in s.options) for s in sites)
        if budget < smallest:
            if cfg.avg_bits is not None:
                least = 8 * (smallest - pinned) / max(free, 1)
                detail = f"the smallest allowed formats average {least:.3f} bits per weight"
            else:
                detail = f"the smallest allowed formats need a {(smallest + cfg.size_mb * 1e6 - budget) / 1e6:.2f} MB file"
            raise EdgefoldError(f"quantize: budget {what} is impossible: {detail} "
                                f"(formats: {', '.join(c.name for c in candidates)})")
        picks = allocate([s.options for s in sites], budget)
        chosen = {s.name: qf.parse_format(s.options[p].format) for s, p in zip(sites, picks)}
        return chosen, {"request": what, "budget_bytes": budget, "weights": weights,
                        "candidates": [c.name for c in candidates]}

    def _hessians(self, sites, chosen, context) -> dict[str, np.ndarray]:
        """Per 2-D weight going to an integer format: the mean x x^T of the inputs its
        MatMul/Gemm readers multiply along its input axis (summed over readers), measured on
        the calibration samples."""
        from edgefold.passes.common.calibration import input_hessians

        wanted: dict[str, list[str]] = {}
        for site in sites:
            if chosen[site.name].kind not in ("int4", "int8") or site.value.const_value.shape is None \
                    or len(site.value.const_value.shape) != 2:
                continue
            names = [r.activation.name for r in site.readers if r.kind in ("matmul", "gemm")
                     and r.activation is not None and r.axis == site.layout.in_axis]
            if names:
                wanted[site.name] = names
        self._gptq_weights = 0
        if not wanted:  # nothing to round against data (every weight float, or no MatMul reader)
            return {}
        measured, run = input_hessians(context.model_path, [n for names in wanted.values() for n in names],
                                       self.config.calibration_samples, "quantize",
                                       "use method=rtn (data-free)", self.config.calibration_text)
        if self._calibration is None:
            self._calibration = run
        hessians = {}
        for site_name, names in wanted.items():
            parts = [measured[n] for n in names if n in measured]
            if parts:
                hessians[site_name] = np.sum(parts, axis=0)
        self._gptq_weights = len(hessians)
        return hessians

    def _measure_energy(self, model, sites, context) -> None:
        """Fill every reader's input energy: norm scales (data-free) or measured (calibration)."""
        diluted = _residual_branch_weights(context.analysis)
        for site in sites:
            for reader in site.readers:
                if reader.kind != "gather":
                    width = site.value.const_value.shape[reader.axis]
                    reader.energy = _norm_energy(reader.activation, width)
                reader.share = diluted.get(site.name, 1.0)
        if self.config.sensitivity == "calibration" or self.config.act_scale is not None:
            from edgefold.passes.common.calibration import measure_energy

            self._calibration = measure_energy(context.model_path, sites, self.config.calibration_samples,
                                               self.config.calibration_text)
        if self.config.act_scale is not None:
            from edgefold.passes.quantize.act_scaling import scale_norm_inputs

            self._scaled = scale_norm_inputs(model, sites, self.config.act_scale)


def _format(text: str, block, scheme, allowed, profile_name) -> qf.Format:
    fmt = qf.parse_format(text, block=block, scheme=scheme)
    if fmt.kind not in allowed:
        where = f"profile {profile_name!r}" if profile_name else "this profile"
        raise EdgefoldError(f"quantize: {where} does not support {fmt.kind} weights "
                            f"(it supports {', '.join(allowed)})"
                            + ("; use a profile that lists fp8, e.g. --profile server-gpu" if fmt.kind == "fp8" else ""))
    return fmt


def _fallback(site: WeightSite, fmt: qf.Format) -> qf.Format:
    """The `min` scheme needs whole blocks; a weight with a ragged last block gets `asym`."""
    shape = tuple(site.value.const_value.shape)
    if qf.supports(shape, fmt, site.layout):
        return fmt
    return qf.Format(fmt.kind, fmt.block, "asym", fmt.scale_bits, fmt.step)


def _graph_bytes(model_path, model: ir.Model) -> int:
    """Bytes of the graph itself: the .onnx file less the weights stored inside it."""
    if model_path is None or not Path(model_path).exists():
        return 64 * 1024
    size = Path(model_path).stat().st_size
    if onnx_io.data_path_for(Path(model_path)).exists():
        return size  # weights are external; the few small ones inside count twice, which is safe
    inline = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    return max(size - inline, 0) + 4096


def _ensure_opsets(model: ir.Model, target: str) -> None:
    if model.opset_imports.get("", 0) < 21:
        model.opset_imports[""] = 21
    if target == "onnxruntime" and any(n.domain == "com.microsoft" for n in model.graph):
        model.opset_imports.setdefault("com.microsoft", 1)


# ---------------------------------------------------------------- reporting


def _stats(rows, bytes_before, bytes_after, budget, mode, cfg) -> dict:
    weights = sum(r[2] // 4 for r in rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    stats = {"mode": mode, "weights": weights, "tensors": len(rows), "bytes_before": bytes_before,
             "bytes_after": bytes_after, "avg_bits": round(8 * bytes_after / max(weights, 1), 4),
             "formats": dict(sorted(counts.items())),
             "sensitivity": ("calibration" if cfg.act_scale is not None else cfg.sensitivity) if mode == "mixed" else None,
             "total_error": float(f"{sum(r[4] for r in rows):.4g}"),
             "layers": rows}
    if budget is not None:
        stats["budget"] = budget
    return stats


def plot_bits(rows: list[list], path: Path, title: str = "bits per weight") -> Path:
    """Bar chart: stored bits per weight of every quantized tensor, in graph order, coloured by format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r[1] for r in rows})
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    bits = [8 * r[3] / max(r[2] // 4, 1) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.06), 3.2))
    ax.bar(range(len(rows)), bits, color=[colours[r[1]] for r in rows], width=1.0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in names]
    ax.legend(handles, names, fontsize=6, ncol=min(len(names), 6), loc="upper right")
    ax.set_xlabel("weight tensor (graph order)")
    ax.set_ylabel("stored bits / weight")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
