"""Export: built-ins, HF folders, torch modules, existing .onnx files; verified and cached."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from edgefold.export import export_model, export_module
from edgefold.models.metadata import TASK_KEY, TOKENIZER_KEY, Task


def _input_dims(path):
    proto = onnx_io.load_proto(path)
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}


def test_efficientnet_export_is_verified_with_dynamic_batch(effnet_handle):
    proto = onnx_io.load_proto(effnet_handle.path)
    assert onnx_io.opset_version(proto) >= 21
    assert _input_dims(effnet_handle.path)["image"] == ["batch", 3, 224, 224]
    assert effnet_handle.task is Task.IMAGE_CLASSIFIER
    assert effnet_handle.info["max_abs_error_vs_torch"] < 1e-3
    # batch 2 (export example) and batch 3 were both compared with torch
    assert [s["image"][0] for s in effnet_handle.info["checked_shapes"]] == [2, 3]
    # BatchNorm stays explicit so the fold pass can repair its statistics
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 49
    # large weights live in the external data file
    assert onnx_io.data_path_for(effnet_handle.path).stat().st_size > 10_000_000


def test_minilm_export_has_dynamic_batch_and_sequence(minilm_handle):
    dims = _input_dims(minilm_handle.path)
    assert dims["input_ids"] == ["batch", "sequence"] and dims["attention_mask"] == ["batch", "sequence"]
    meta = onnx_io.metadata(minilm_handle.path)
    assert meta[TASK_KEY] == "sentence-embedding" and meta[TOKENIZER_KEY] == "minilm-l6"
    assert minilm_handle.info["max_abs_error_vs_torch"] < 1e-4


def test_smollm2_export(smollm2_handle):
    assert _input_dims(smollm2_handle.path)["input_ids"] == ["batch", "sequence"]
    assert smollm2_handle.task is Task.CAUSAL_LM
    assert smollm2_handle.info["max_abs_error_vs_torch"] < 0.05  # logits reach ~30
    assert smollm2_handle.info["min_cosine_vs_torch"] > 0.99999
    names = set(onnx_io.load(smollm2_handle.path).graph.initializers)
    assert "model.model.layers.0.mlp.gate_proj.weight" in names  # readable weight names


def test_second_export_comes_from_cache(effnet_handle):
    start = time.perf_counter()
    again = export_model("efficientnet-lite0")
    assert again.info["cached"] is True
    assert again.path == effnet_handle.path
    assert time.perf_counter() - start < 5


def test_digits_cnn_is_trained_and_exported(digits_handle):
    from edgefold.evaluate import evaluate

    assert digits_handle.task is Task.DIGITS_CLASSIFIER
    assert evaluate(digits_handle.path)["accuracy"] >= 0.95


class _TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(12, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_torch_module_export_through_the_api(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path))
    module = _TwoLayer()
    x = torch.randn(3, 12)
    handle = export_module(module, {"x": x}, name="two-layer", output_names=["y"],
                           dynamic_axes={"x": {0: "batch"}}, check_inputs=[{"x": torch.randn(5, 12)}])
    assert _input_dims(handle.path)["x"] == ["batch", 12]
    out = onnx_io.run(onnx_io.session(handle.path), {"x": np.random.rand(7, 12).astype(np.float32)})["y"]
    assert out.shape == (7, 4)
    assert handle.info["max_abs_error_vs_torch"] < 1e-5
    again = export_module(module, {"x": x}, name="two-layer", output_names=["y"], dynamic_axes={"x": {0: "batch"}},
                          check_inputs=[{"x": torch.randn(5, 12)}])
    assert again.info["cached"] is True


class _NotDeterministic(torch.nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def test_wrong_export_is_an_error_not_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path))
    with pytest.raises(EdgefoldError, match="differs from torch"):
        export_module(_NotDeterministic(), {"x": torch.zeros(2, 64)}, name="noisy", output_names=["y"])
    assert not any(p.name.startswith("noisy") for p in (tmp_path / "exports").iterdir())


def test_hf_folder_export(tmp_path, monkeypatch):
    from edgefold.models.builtin import minilm_dir

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path))
    handle = export_model(str(minilm_dir()))
    assert handle.task is Task.SENTENCE_EMBEDDING
    assert handle.info["max_abs_error_vs_torch"] < 1e-4


def test_existing_onnx_is_imported_and_opset_upgraded(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [weight])
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tiny.onnx"
    onnx.save(old, path)
    handle = import_and_check(path)
    assert onnx_io.opset_version(onnx_io.load_proto(handle.path)) == 21
    inputs, outputs = handle.reference_io()
    assert np.allclose(outputs["y"], np.maximum(inputs["x"] @ np.arange(12, dtype=np.float32).reshape(4, 3), 0))


def import_and_check(path):
    handle = export_model(str(path))
    onnx_io.check(handle.path)
    return handle
