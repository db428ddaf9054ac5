"""A numpy decode step of a `DecoderSpec`, and the check that the spec is the graph.

`check_against_onnxruntime` feeds the same tokens through onnxruntime's KV-cache decode
graph (`kv_cache.make_decode_graph`) and through `NumpyDecoder`; if the logits differ,
the graph was misread and the LLM path is not used. The kernels' tests use the same
reference.
"""

from __future__ import annotations


import numpy as np

from edgefold.targets.tvm.llm.spec import DecoderSpec, RmsNorm, Unsupported


def rms_norm(x: np.ndarray, norm: RmsNorm) -> np.ndarray:
    """RMSNorm of x over its last axis with `norm`'s weight and eps, in float32."""
    x = x.astype(np.float32)
    return (norm.weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(norm.eps)))).astype(np.float32)


def rope(x: np.ndarray, position: int, inv_freq: np.ndarray) -> np.ndarray:
    """rotate_half RoPE of x [heads, d] at `position` (float32 like the exported graph)."""
    freqs = (np.float32(position) * inv_freq).astype(np.float32)
    angles = np.concatenate([freqs, freqs])
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(np.float32)


class NumpyDecoder:
    """One token at a time, caches as numpy arrays [kv_heads, length, head_dim] per layer."""

    def __init__(self, spec: DecoderSpec, length: int):
        self.spec = spec
        self.length = length
        self._dense: dict[int, np.ndarray] = {}
        self.keys = [np.zeros((l.attention.num_kv_heads, length, l.attention.head_dim), np.float32) for l in spec.layers]
        self.values = [np.zeros_like(k) for k in self.keys]

    def _w(self, linear) -> np.ndarray:
        key = id(linear.weight)
        if key not in self._dense:
            self._dense[key] = linear.weight.dequantize()
        return self._dense[key]

    def _apply(self, linear, x: np.ndarray) -> np.ndarray:
        y = (self._w(linear) @ x).astype(np.float32)
        return y + linear.bias if linear.bias is not None else y

    def step(self, token: int, position: int) -> np.ndarray:
        """Logits after `token` at `position`, whose keys/values go into the decoder's cache."""
        spec = self.spec
        table = self._dense.setdefault(id(spec.embedding), spec.embedding.dequantize())
        x = table[token].astype(np.float32)
        for index, layer in enumerate(spec.layers):
            a = layer.attention
            h = rms_norm(x, layer.attn_norm)
            q = self._apply(a.q, h).reshape(a.num_heads, a.head_dim)
            k = self._apply(a.k, h).reshape(a.num_kv_heads, a.head_dim)
            v = self._apply(a.v, h).reshape(a.num_kv_heads, a.head_dim)
            if a.rope:
                q, k = rope(q, position, spec.inv_freq), rope(k, position, spec.inv_freq)
            self.keys[index][:, position] = k
            self.values[index][:, position] = v
            group = a.num_heads // a.num_kv_heads
            context = np.empty((a.num_heads, a.head_dim), np.float32)
            for head in range(a.num_heads):
                kv = head // group
                scores = (self.keys[index][kv, :position + 1] @ q[head]) * np.float32(a.scale)
                p = np.exp(scores - scores.max())
                context[head] = (p / p.sum()) @ self.values[index][kv, :position + 1]
            x = x + self._apply(a.o, context.reshape(-1))
            h = rms_norm(x, layer.mlp_norm)
            gate, up = self._apply(layer.mlp.gate, h), self._apply(layer.mlp.up, h)
            x = x + self._apply(layer.mlp.down, (gate / (1 + np.exp(-gate))) * up)
        return self._apply(spec.lm_head, rms_norm(x, spec.final_norm))


def check_against_onnxruntime(spec: DecoderSpec, decode_session, tokens: list[int], length: int,
                              tolerance: float = 2e-3) -> dict[str, float]:
    """Run `tokens` through both; raise Unsupported if the logits disagree."""
    names = [i.name for i in decode_session.get_inputs()]
    feeds = {}
    for value in decode_session.get_inputs():
        if value.name.startswith("past_"):
            feeds[value.name] = np.zeros([int(d) for d in value.shape], np.float32)
    outputs = [o.name for o in decode_session.get_outputs()]
    ours = NumpyDecoder(spec, length)
    worst = 0.0
    for position, token in enumerate(tokens):
        feeds["input_ids"] = np.array([[token]], np.int64)
        feeds["position"] = np.array([position], np.int64)
        result = dict(zip(outputs, decode_session.run(outputs, {k: v for k, v in feeds.items() if k in names})))
        want = result["logits"].reshape(-1)
        got = ours.step(token, position)
        error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
        worst = max(worst, error)
        if error > tolerance or int(got.argmax()) != int(want.argmax()):
            raise Unsupported(f"the decoder read from the graph differs from onnxruntime at step {position} "
                              f"(relative error {error:.2g})")
        for name in outputs:
            if name.startswith("present_"):
                feeds[name.replace("present_", "past_")] = result[name]
    return {"relative_error": worst, "steps": len(tokens)}
