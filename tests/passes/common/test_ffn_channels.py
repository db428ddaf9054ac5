"""The shared FFN channel surgery: identity is exact, slicing matches torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefold import onnx_io
from edgefold.analysis import analyse
from edgefold.export import export_module
from edgefold.passes.common.ffn_channels import remap_ffn, selection_maps


class SwiGLU(torch.nn.Module):
    def __init__(self, hidden=16, inner=24, bias=False):
        super().__init__()
        torch.manual_seed(0)
        self.gate = torch.nn.Linear(hidden, inner, bias=bias)
        self.up = torch.nn.Linear(hidden, inner, bias=bias)
        self.down = torch.nn.Linear(inner, hidden, bias=bias)

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class Plain(torch.nn.Module):
    def __init__(self, hidden=16, inner=24):
        super().__init__()
        torch.manual_seed(1)
        self.fc1 = torch.nn.Linear(hidden, inner)
        self.fc2 = torch.nn.Linear(inner, hidden)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _sliced_torch(module, keep):
    keep_t = torch.as_tensor(np.sort(keep))
    clone = type(module)()
    clone.load_state_dict(module.state_dict())
    with torch.no_grad():
        for name, layer in clone.named_children():
            if name in {"gate", "up", "fc1"}:
                layer.weight = torch.nn.Parameter(layer.weight[keep_t])
                if layer.bias is not None:
                    layer.bias = torch.nn.Parameter(layer.bias[keep_t])
            else:
                layer.weight = torch.nn.Parameter(layer.weight[:, keep_t])
    return clone.eval()


@pytest.mark.parametrize("module_cls", [SwiGLU, Plain])
def test_identity_map_is_exact_and_slicing_matches_torch(module_cls, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    module = module_cls().eval()
    x = torch.randn(2, 5, 16)
    handle = export_module(module, {"x": x}, name=module_cls.__name__, output_names=["y"],
                           dynamic_axes={"x": {0: "batch", 1: "seq"}})
    inputs, reference = handle.reference_io()
    for keep in (np.arange(24), np.array([0, 3, 4, 9, 17, 23, 11])):
        model = onnx_io.load(handle.path)
        [group] = analyse(model).ffns
        producer, consumer = selection_maps(keep, group.intermediate)
        remap_ffn(model, group, producer, consumer)
        path = onnx_io.save(model, tmp_path / f"{len(keep)}" / "model.onnx")
        onnx_io.check(path)
        got = onnx_io.run(onnx_io.session(path), inputs)["y"]
        if len(keep) == 24:
            np.testing.assert_array_equal(got, reference["y"])
        else:
            expected = _sliced_torch(module, keep)(torch.from_numpy(inputs["x"])).detach().numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5)
            assert [g.intermediate for g in analyse(onnx_io.load(path)).ffns] == [len(keep)]
