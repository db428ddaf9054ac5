"""One weight of a linear or embedding, as the model stores it, in [out N, in K] orientation.

The LLM kernels read weights packed, never expanded to fp32. Every format the quantize
pass writes (and onnxruntime's MatMulNBits) comes out of `lowbit.collapse_decoders` as
one `edgefold.Decode` node; here that node (or a plain fp32 initializer, or a Transpose
of one) becomes a `StoredWeight`:

    w[n, k] = scale[n, k // block] * (codes[n, k] - bias - zero[n, k // block]) + minimum[n, k // block]

with unsigned codes (4- or 8-bit; signed codes are shifted by `bias`), and how the scale
and minimum were stored (fp32, fp16, or 8-bit codes times a per-row step), so the kernel
can read the same bytes. Float weights (fp32, fp16, fp8 e4m3 bits) keep their values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgefold.targets.tvm.lowbit import DOMAIN, OP, SideCodes


class Unsupported(Exception):
    """The graph is not in a form the LLM kernels take (the generic compile path runs instead)."""


@dataclass
class SideTensor:
    """A per-block scale or minimum: exact float32 values plus the form they were stored in."""

    values: np.ndarray  # float32 [N, KB]
    storage: str  # "f32", "f16" or "u8"
    codes: np.ndarray | None = None  # uint8 [N, KB] when storage == "u8"
    step: np.ndarray | None = None  # float32 [N]: value = (codes - zero) * step
    zero: np.ndarray | None = None  # uint8 [N] or None

    @property
    def nbytes(self) -> int:
        """Bytes the values take in their stored form."""
        per = {"f32": 4, "f16": 2, "u8": 1}[self.storage]
        return self.values.size * per


@dataclass
class StoredWeight:
    """A weight [N, K] as the model stores it: float values, or codes with scale, zero and minimum."""

    name: str
    n: int
    k: int
    kind: str  # "fp32", "fp16", "fp8" (e4m3 bits) or "int" (codes)
    data: np.ndarray  # [N, K]: float32 | float16 | uint8 bits | uint8 unsigned codes
    bits: int = 32  # 4 or 8 for "int"
    block: int = 0  # along K; == k for one scale per row
    bias: int = 0  # subtracted from every code (8 for signed int4, 128 for signed int8)
    scale: SideTensor | None = None
    zero: np.ndarray | None = None  # uint8 [N, KB]
    minimum: SideTensor | None = None
    source: dict = field(default_factory=dict)  # how it was read (for notes)

    @property
    def blocks(self) -> int:
        """Number of scale blocks per row along K."""
        return -(-self.k // self.block) if self.block else 1

    def dequantize(self) -> np.ndarray:
        """float32 [N, K], computed the way onnxruntime's DequantizeLinear does."""
        if self.kind == "fp32":
            return self.data.astype(np.float32)
        if self.kind == "fp16":
            return self.data.astype(np.float32)
        if self.kind == "fp8":
            import ml_dtypes

            return self.data.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        blocks = self.blocks
        padded = blocks * self.block
        codes = np.zeros((self.n, padded), np.int16)
        codes[:, :self.k] = self.data
        codes = (codes - self.bias).reshape(self.n, blocks, self.block)  # broadcast per block, no repeat
        if self.zero is not None:
            codes = codes - self.zero.astype(np.int16)[:, :, None]
        w = codes.astype(np.float32) * self.scale.values[:, :, None]
        if self.minimum is not None:
            w = w + self.minimum.values[:, :, None]
        return np.ascontiguousarray(w.reshape(self.n, padded)[:, :self.k], dtype=np.float32)

    def stored_bytes(self) -> int:
        """Bytes the weight takes as stored: codes or values plus scales, zeros and minimums."""
        if self.kind in ("fp32", "fp16", "fp8"):
            return self.data.nbytes
        total = self.n * self.k * self.bits // 8 + self.scale.nbytes
        if self.zero is not None:
            total += self.zero.size * self.bits // 8
        if self.minimum is not None:
            total += self.minimum.nbytes
        return total

def read_weight(value: ir.Value, role: str, side_codes: dict[str, SideCodes]) -> StoredWeight:
    """The weight behind `value`: a MatMul's B operand (role "matmul", stored [K, N] or read
    through a transpose) or a Gather table (role "table", rows are tokens)."""
    producer = value.producer()
    if value.const_value is not None and producer is None:
        array = value.const_value.numpy()
        return _float_weight(value.name, array, transposed=(role == "table"))
    if producer is not None and producer.op_type == "Transpose" and producer.inputs[0] is not None \
            and producer.inputs[0].const_value is not None and role == "matmul":
        perm = list(producer.attributes.get_ints("perm", [1, 0]))
        if perm != [1, 0]:
            raise Unsupported(f"{value.name}: transpose {perm}")
        return _float_weight(producer.inputs[0].name, producer.inputs[0].const_value.numpy(), transposed=True)
    if producer is not None and producer.op_type == OP and producer.domain == DOMAIN:
        return _decoded_weight(producer, role, side_codes)
    raise Unsupported(f"weight {value.name} is computed by {producer.op_type if producer else 'nothing'}")


def _float_weight(name: str, array: np.ndarray, *, transposed: bool) -> StoredWeight:
    """An fp32/fp16 initializer: stored [K, N] for a MatMul, [N, K] when `transposed`."""
    if array.ndim != 2 or array.dtype not in (np.float32, np.float16):
        raise Unsupported(f"{name}: a {array.dtype} weight of shape {array.shape}")
    nk = array if transposed else array.T
    kind = "fp32" if array.dtype == np.float32 else "fp16"
    return StoredWeight(name, nk.shape[0], nk.shape[1], kind, np.ascontiguousarray(nk), source={"from": "initializer"})


def _attr(node: ir.Node, name: str, default=0):
    attribute = node.attributes.get(name)
    if attribute is None:
        return default
    value = attribute.value
    return value.decode() if isinstance(value, bytes) else value


def _decoded_weight(node: ir.Node, role: str, side_codes: dict[str, SideCodes]) -> StoredWeight:
    kind = _attr(node, "kind")
    shape = [int(d) for d in _attr(node, "shape", [])]
    axis, block = int(_attr(node, "axis", 0)), int(_attr(node, "block", 0))
    transpose = bool(_attr(node, "transpose", 0))
    has_zero, has_min = bool(_attr(node, "has_zero", 0)), bool(_attr(node, "has_min", 0))
    if len(shape) != 2:
        raise Unsupported(f"{node.name}: a {len(shape)}-D weight")
    name = node.inputs[0].name.removesuffix(".codes")
    # Which stored axis is K (the reduction): a MatMul reads [K, N] (or [N, K] through a transpose);
    # a table's rows are N.
    k_axis = (1 if transpose else 0) if role == "matmul" else 1
    to_nk = (lambda a: a) if k_axis == 1 else (lambda a: a.T)  # noqa: E731
    n, k = (shape[1 - k_axis], shape[k_axis])
    inputs = [v for v in node.inputs if v is not None]
    codes_value = inputs[0].const_value.numpy()
    if kind == "fp16":
        data = to_nk(np.asarray(codes_value, np.float16).reshape(shape))
        return StoredWeight(name, n, k, "fp16", np.ascontiguousarray(data), source={"from": "fp16"})
    if kind == "fp8e4m3":
        data = to_nk(np.asarray(codes_value).view(np.uint8).reshape(shape))
        scale = inputs[1].const_value.numpy().astype(np.float32)
        if not np.all(scale == 1.0):
            raise Unsupported(f"{node.name}: fp8 with a scale other than 1")
        return StoredWeight(name, n, k, "fp8", np.ascontiguousarray(data), source={"from": "fp8"})
    if kind not in ("int4", "uint4", "int8", "uint8"):
        raise Unsupported(f"{node.name}: weight kind {kind}")
    bits = 4 if kind.endswith("4") else 8
    signed = not kind.startswith("u")
    if bits == 4:
        raw = np.asarray(codes_value, np.uint8).reshape(-1)
        values = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(-1)[:shape[0] * shape[1]].reshape(shape)
        codes = ((values.astype(np.int16) ^ 8) if signed else values.astype(np.int16))  # int4 two's complement +8
    else:
        stored = np.asarray(codes_value).reshape(shape)
        codes = stored.astype(np.int16) + (128 if signed else 0)
    bias = (8 if bits == 4 else 128) if signed else 0
    codes = np.ascontiguousarray(to_nk(codes)).astype(np.uint8)
    # Scales and friends: blocked like the weight along `axis`, or one per index of `axis`.
    if block:
        if axis != k_axis:
            raise Unsupported(f"{node.name}: blocks run along the output axis")
        blk = block
    else:
        if axis == k_axis:
            raise Unsupported(f"{node.name}: one scale per input channel")
        blk = k
    kb = -(-k // blk)

    def side(value: ir.Value) -> SideTensor:
        array = value.const_value.numpy()
        flat = np.asarray(array, np.float32)
        nk_values = _per_block(to_nk(flat.reshape(_side_shape(shape, axis, block, kb))) if block else
                               flat.reshape(-1)[:, None], n, kb)
        record = side_codes.get(value.name)
        if record is not None:
            codes8 = record.codes.reshape(_side_shape(shape, axis, block, kb)) if block else record.codes.reshape(-1, 1)
            codes8 = _per_block(to_nk(codes8) if block else codes8, n, kb)
            step, zero = _per_row(record.step, record.axis, shape, k_axis, n), None
            if record.zero is not None:
                zero = _per_row(record.zero.astype(np.float32), record.axis, shape, k_axis, n).astype(np.uint8)
            if step is None or (record.zero is not None and zero is None):
                return SideTensor(nk_values, "f32")  # steps along another axis: keep the float values
            return SideTensor(nk_values, "u8", codes8.astype(np.uint8), step, zero)
        return SideTensor(nk_values, "f16" if array.dtype == np.float16 else "f32")

    scale = side(inputs[1])
    rest = inputs[2:]
    zero = None
    if has_zero:
        zvalue = rest.pop(0).const_value.numpy()
        if bits == 4:
            zraw = np.asarray(zvalue, np.uint8).reshape(-1)
            znib = np.stack([zraw & 0xF, zraw >> 4], axis=-1).reshape(-1)
            zvalues = znib[:int(np.prod(_side_shape(shape, axis, block, kb)) if block else n)]
            zvalues = ((zvalues.astype(np.int16) ^ 8) - 8) if signed else zvalues.astype(np.int16)
        else:
            zvalues = np.asarray(zvalue).astype(np.int16).reshape(-1)
        z = zvalues.reshape(_side_shape(shape, axis, block, kb)) if block else zvalues.reshape(-1, 1)
        z = _per_block(to_nk(z) if block else z, n, kb) + (bias if signed else 0)  # zero in code units
        if z.min() < 0 or z.max() > (15 if bits == 4 else 255):
            raise Unsupported(f"{node.name}: zero point out of range")
        zero = z.astype(np.uint8)
    minimum = side(rest.pop(0)) if has_min else None
    return StoredWeight(name, n, k, "int", codes, bits, blk, bias if zero is None else 0, scale, zero, minimum,
                        source={"from": kind, "transpose": transpose})


def _side_shape(shape: list[int], axis: int, block: int, kb: int) -> list[int]:
    out = list(shape)
    out[axis] = kb
    return out


def _per_block(array: np.ndarray, n: int, kb: int) -> np.ndarray:
    """[N, KB] from a side tensor already in [N, KB] (or [N, 1]) orientation."""
    array = np.asarray(array)
    if array.shape == (n, kb):
        return np.ascontiguousarray(array)
    if array.shape == (n, 1):
        return np.ascontiguousarray(np.repeat(array, kb, axis=1))
    raise Unsupported(f"side tensor of shape {array.shape}, expected {(n, kb)}")


def _per_row(values: np.ndarray, axis: int | None, shape: list[int], k_axis: int, n: int) -> np.ndarray | None:
    """A step (or zero) per output row: per-tensor values broadcast, per-row kept; None otherwise."""
    values = np.asarray(values, np.float32).reshape(-1)
    if axis is None or values.size == 1:
        return np.full(n, values[0], np.float32)
    if axis == 1 - k_axis and values.size == n:
        return values.astype(np.float32)
    return None
