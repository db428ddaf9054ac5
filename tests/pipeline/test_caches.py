"""Caches that cannot serve a stale or foreign entry: keys, recorded sources, verified files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _linear_model(path, scale: float) -> None:
    weight = numpy_helper.from_array(np.full((4, 3), scale, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def _output(handle) -> np.ndarray:
    _, outputs = handle.reference_io()
    return outputs["y"]


def test_import_cache_sees_a_file_edited_in_place(tmp_path, monkeypatch):
    from edgefold.export import export_model

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "net.onnx"
    _linear_model(path, 1.0)
    first = export_model(str(path))
    _linear_model(path, 2.0)  # same name, same folder, new content
    second = export_model(str(path))
    assert first.source_sha256 != second.source_sha256
    assert first.path != second.path
    np.testing.assert_allclose(_output(second), 2.0 * _output(first), rtol=1e-6)


def test_same_file_name_in_two_folders_are_two_models(tmp_path, monkeypatch):
    from edgefold.export import export_model

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _linear_model(tmp_path / "a" / "model.onnx", 1.0)
    _linear_model(tmp_path / "b" / "model.onnx", 3.0)
    a, b = export_model(str(tmp_path / "a" / "model.onnx")), export_model(str(tmp_path / "b" / "model.onnx"))
    assert a.source_sha256 != b.source_sha256
    assert export_model(str(tmp_path / "a" / "model.onnx")).path == a.path  # and each is reused


def test_cache_key_keeps_sources_and_versions_apart():
    from edgefold.export.sources import cache_key
    from edgefold.versions import export_versions

    # A source field named like a tool must not be overwritten by that tool's version.
    assert cache_key("onnx", {"onnx": "aaa"}) != cache_key("onnx", {"onnx": "bbb"})
    assert cache_key("onnx", {"content": "x"}) != cache_key("export", {"content": "x"})
    assert "onnx" in export_versions()


def test_cached_entry_for_another_key_is_not_served(tmp_path, monkeypatch):
    from edgefold.export import export_model
    from edgefold.export.execute import INFO_FILE, load_cached

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "net.onnx"
    _linear_model(path, 1.0)
    handle = export_model(str(path))
    folder = handle.path.parent
    assert load_cached(folder, handle.source_sha256) is not None
    assert load_cached(folder, "0" * 64) is None
    info = json.loads((folder / INFO_FILE).read_text())
    info["source_sha256"] = "f" * 64  # an entry that records another source
    (folder / INFO_FILE).write_text(json.dumps(info))
    again = export_model(str(path))  # rebuilt, not served
    assert again.source_sha256 == handle.source_sha256
    assert json.loads((folder / INFO_FILE).read_text())["source_sha256"] == handle.source_sha256


def test_compiled_build_cache_copies_and_verifies(tmp_path, monkeypatch):
    from edgefold.targets.tvm import compiled_cache

    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))
    artifact = tmp_path / "artifact"
    (artifact / "lib").mkdir(parents=True)
    (artifact / "lib" / "decode.so").write_bytes(b"library")
    (artifact / "weights.bin").write_bytes(b"weights")
    files = {"lib/decode.so": artifact / "lib" / "decode.so", "weights.bin": artifact / "weights.bin"}
    compiled_cache.store("k" * 64, {"label": "decode"}, files)
    entry, folder = compiled_cache.load("k" * 64)
    assert (folder / "weights.bin").stat().st_ino != (artifact / "weights.bin").stat().st_ino  # a copy, not a link
    (artifact / "weights.bin").write_bytes(b"edited in the artifact")  # cannot reach the cache
    assert compiled_cache.load("k" * 64) is not None
    (folder / "weights.bin").write_bytes(b"poisoned")  # the cache itself edited: entry refused
    assert compiled_cache.load("k" * 64) is None
    shutil.rmtree(folder / "lib")
    assert compiled_cache.load("k" * 64) is None
