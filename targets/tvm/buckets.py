"""Static shapes: one compiled module per input shape ("bucket").

TVM's ONNX importer cannot follow the causal-mask shape arithmetic of a dynamic
sequence axis, and tuned kernels are shape-specific anyway, so every symbolic dimension
is fixed before import. Causal LMs get a decode bucket (one token) and prefill buckets;
encoders get a sequence bucket; everything else runs at batch 1.

A causal LM's decode bucket has a fixed-size KV cache (`kv_cache` slots, default
256): it compiles the one-token graph that `kv_cache.make_decode_graph` derives from
the model (inputs input_ids [1, 1], position [1], past_key_l / past_value_l), so its
shapes are known only once that graph exists (`decode_bucket`). `kv_cache=0` compiles
the plain one-token forward instead (no cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgefold import onnx_io
from edgefold.errors import EdgefoldError

_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}
DEFAULT_LM_SEQS = (1, 128)
DEFAULT_KV_CACHE = 256
DEFAULT_ENCODER_SEQ = 128
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass(frozen=True)
class Bucket:
    """One static input shape a model is compiled for: its label, input shapes and dtypes, KV-cache slots."""

    label: str  # "decode", "prefill128", "seq128", "batch1": names files and tuning databases
    shapes: dict[str, tuple[int, ...]] = field(hash=False)
    dtypes: dict[str, str] = field(hash=False)
    kv_cache: int = 0  # decode with a KV cache of this many slots (0: no cache)

    def describe(self) -> str:
        """The bucket's inputs in words, e.g. `input_ids[1x128]`, for logs and reports."""
        if self.kv_cache:
            return f"input_ids[1x1], KV cache of {self.kv_cache} tokens"
        return ", ".join(f"{k}[{'x'.join(map(str, v))}]" for k, v in self.shapes.items())

    def to_json(self) -> dict:
        """The bucket as a JSON-ready dict (label, shapes, dtypes, kv_cache when set)."""
        data = {"label": self.label, "shapes": {k: list(v) for k, v in self.shapes.items()}, "dtypes": self.dtypes}
        if self.kv_cache:
            data["kv_cache"] = self.kv_cache
        return data


def decode_bucket(decode_graph, kv_cache: int) -> Bucket:
    """The decode bucket with every input of the KV-cache graph (all static)."""
    inputs = graph_inputs(decode_graph)
    return Bucket("decode", {i.name: tuple(int(d) for d in i.dims) for i in inputs},
                  {i.name: i.dtype for i in inputs}, kv_cache)


@dataclass(frozen=True)
class GraphInput:
    """A graph input of an ONNX model: name, dims (int, symbolic name or None) and dtype."""

    name: str
    dims: tuple[int | str | None, ...]  # int, symbolic name, or None (unknown)
    dtype: str


def graph_inputs(model_path) -> list[GraphInput]:
    """The real inputs of an ONNX model (initializers excluded), in graph order."""
    proto = onnx_io.load_proto(model_path)
    initializers = {t.name for t in proto.graph.initializer}
    found = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        found.append(GraphInput(value.name, dims, _ONNX_DTYPES.get(tensor.elem_type, "float32")))
    return found


def parse_shape_overrides(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """`name=1x128` strings from the command line."""
    shapes = {}
    for spec in specs or []:
        match = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+(?:x\d+)*)\s*", spec)
        if not match:
            raise EdgefoldError(f"bad --shape {spec!r}: use NAME=DxDx... (e.g. input_ids=1x128)")
        shapes[match.group(1)] = tuple(int(d) for d in match.group(2).split("x"))
    return shapes


def plan_buckets(model_path, task: str, *, seqs: list[int] | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None, kv_cache: int = DEFAULT_KV_CACHE) -> list[Bucket]:
    """The static shapes to compile for this model."""
    inputs = graph_inputs(model_path)
    if not inputs:
        raise EdgefoldError(f"{model_path} has no graph inputs to compile for")
    dtypes = {i.name: i.dtype for i in inputs}
    if shapes:
        unknown = set(shapes) - set(dtypes)
        if unknown:
            raise EdgefoldError(f"--shape names unknown inputs {sorted(unknown)} (inputs: {', '.join(dtypes)})")
        for entry in inputs:
            _check_override(entry, shapes.get(entry.name))
        fixed = {i.name: shapes.get(i.name) or _batch_one(i, None) for i in inputs}
        return [Bucket(_label(fixed), fixed, dtypes)]
    text = [i for i in inputs if i.name in _TEXT_INPUTS]
    if text and task == "causal-lm":
        lengths = list(seqs or DEFAULT_LM_SEQS)
        if kv_cache < 0:
            raise EdgefoldError(f"the KV cache size must be >= 0 (got {kv_cache})")
        return [Bucket("decode" if s == 1 else f"prefill{s}", {i.name: _batch_one(i, s) for i in inputs}, dtypes,
                       kv_cache if s == 1 else 0)
                for s in _positive(lengths)]
    if text:
        lengths = list(seqs or [DEFAULT_ENCODER_SEQ])
        return [Bucket(f"seq{s}", {i.name: _batch_one(i, s) for i in inputs}, dtypes) for s in _positive(lengths)]
    if seqs:
        raise EdgefoldError("--seq applies to text models; use --shape NAME=DxD... for this model")
    fixed = {i.name: _batch_one(i, None) for i in inputs}
    return [Bucket("batch1", fixed, dtypes)]


def _check_override(entry: GraphInput, shape: tuple[int, ...] | None) -> None:
    if shape is None:
        return
    if len(shape) != len(entry.dims):
        raise EdgefoldError(f"--shape {entry.name}: the input has {len(entry.dims)} dimensions, got {len(shape)}")
    for axis, (dim, size) in enumerate(zip(entry.dims, shape)):
        if isinstance(dim, int) and dim > 0 and dim != size:
            raise EdgefoldError(f"--shape {entry.name}: axis {axis} is fixed to {dim} in the model, got {size}")


def _positive(lengths: list[int]) -> list[int]:
    if not lengths or any(s < 1 for s in lengths):
        raise EdgefoldError(f"sequence lengths must be >= 1 (got {lengths})")
    return sorted(set(lengths))


def _batch_one(entry: GraphInput, seq: int | None) -> tuple[int, ...]:
    """Batch 1, the sequence length on axis 1 of text inputs; other symbolic dims are an error."""
    dims = []
    for axis, dim in enumerate(entry.dims):
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
        elif axis == 0:
            dims.append(1)
        elif axis == 1 and seq is not None:
            dims.append(seq)
        else:
            raise EdgefoldError(f"input {entry.name!r} has a dynamic axis {axis} ({dim or '?'}); "
                                f"give its size with --shape {entry.name}=...")
    return tuple(dims)


def _label(shapes: dict[str, tuple[int, ...]]) -> str:
    first = next(iter(shapes.values()))
    return "shape" + "x".join(map(str, first))
