"""`edgefold compile` / `edgefold run`: TVM builds that match onnxruntime, tuning reuse,
byte-identical rebuilds, low-bit weights kept packed, arm64 and CUDA libraries.

Tuning databases go to a temporary EDGEFOLD_CACHE; models come from the session
fixtures (the export cache) or are tiny synthetic graphs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefold.errors import EdgefoldError

sys.path.insert(0, str(Path(__file__).parent))
from lowbit_models import matmul_nbits_model, weight_formats_model  # noqa: E402

pytest.importorskip("tvm")

HAVE_CROSS = shutil.which("aarch64-linux-gnu-g++") is not None
HAVE_QEMU = shutil.which("qemu-aarch64-static") is not None
ELF_MACHINE = {183: "aarch64", 62: "x86_64"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache for tuning databases; the aarch64 runtime is shared with the real cache."""
    from edgefold.atomic import cache_root

    real = cache_root()
    folder = tmp_path / "cache"
    folder.mkdir()
    if (real / "aarch64-runtime").exists():
        (folder / "aarch64-runtime").symlink_to(real / "aarch64-runtime")
    monkeypatch.setenv("EDGEFOLD_CACHE", str(folder))
    return folder


def _report(folder: Path) -> dict:
    return json.loads((folder / "compile-report.json").read_text())


def _hashes(folder: Path) -> dict[str, str]:
    from edgefold.hashing import sha256_file

    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "compile-report.json"}


def _elf_machine(path: Path) -> str:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return ELF_MACHINE.get(int.from_bytes(header[18:20], "little"), "other")


def test_digits_tune_reuse_rebuild_and_run(digits_onnx, cache, tmp_path, cli):
    """Tuned host build matches onnxruntime; a second compile runs no trials and is byte-identical."""
    from edgefold.targets.tvm import compile_model

    first = compile_model(digits_onnx, "host", output=tmp_path / "a", trials=10, latency=False)
    tuning = _report(tmp_path / "a")["buckets"]["batch1"]["tuning"]
    assert tuning["tuned"] == tuning["tasks"] > 0 and tuning["trials"] > 0
    (bucket,) = first["compile"]["buckets"]
    assert bucket["fidelity"]["max_abs_error"] < 1e-4 and bucket["fidelity"]["argmax_agreement"] == 1.0
    assert bucket["tuned_kernels"] > 0
    assert (tmp_path / "a" / "tuning" / "batch1" / "database_tuning_record.json").stat().st_size > 0

    # Again, rebuilding everything: the database is reused (no trials), the bytes are the same.
    second = compile_model(digits_onnx, "host", output=tmp_path / "b", trials=10, latency=False, reuse=False)
    tuning = _report(tmp_path / "b")["buckets"]["batch1"]["tuning"]
    assert tuning["tuned"] == 0 and tuning["trials"] == 0 and tuning["reused"] == tuning["tasks"]
    assert second == first
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    # And with the build cache: nothing is imported, tuned or built.
    third = compile_model(digits_onnx, "host", output=tmp_path / "c", trials=10, latency=False)
    assert "reused_build" in _report(tmp_path / "c")["buckets"]["batch1"]
    assert third == first and _hashes(tmp_path / "c") == _hashes(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(manifest["files"]) == set(_hashes(tmp_path / "a")) - {"manifest.json"}

    result = cli("run", tmp_path / "a", "--json")
    assert result.code == 0, result.err
    row = json.loads(result.out)["batch1"]
    assert row["max_abs_error"] < 1e-4 and row["argmax_agreement"] == 1.0 and row["tvm_ms"] > 0


def test_interrupted_database_is_repaired(digits_onnx, cache, tmp_path):
    """A record cut off mid-write (a killed tuner) is dropped; finished kernels are not re-tuned."""
    from edgefold.targets.tvm import compile_model
    from edgefold.targets.tvm.tuning import TuningDatabase

    compile_model(digits_onnx, "host", output=tmp_path / "a", trials=5, check=False)
    (database,) = [TuningDatabase(p.parent) for p in cache.glob("tuning/*/*/database_tuning_record.json")]
    good = database.record_path.read_text()
    with open(database.record_path, "a") as handle:
        handle.write('[0, [[["SampleCategorical", [], [')  # what a kill leaves behind
    compile_model(digits_onnx, "host", output=tmp_path / "b", trials=5, check=False)
    assert database.record_path.read_text() == good
    assert _report(tmp_path / "b")["buckets"]["batch1"]["tuning"]["trials"] == 0


def test_low_bit_formats_match_onnxruntime_and_stay_packed(tmp_path, cache):
    """int4/uint4 blocks, int8, fp8, fp16, the min scheme and a tied int4 table: exact, packed, fused."""
    from edgefold.targets.tvm import compile_model

    model = weight_formats_model(tmp_path / "formats.onnx")
    manifest = compile_model(model, "host", output=tmp_path / "out", trials=0, latency=False,
                             shapes={"x": (1, 4, 64), "ids": (1, 4)})
    (bucket,) = manifest["compile"]["buckets"]
    assert bucket["fidelity"]["max_abs_error"] < 1e-4
    assert bucket["lowbit_weights"] == {"fp16": 1, "fp8e4m3": 1, "int4": 2, "int8": 1, "uint4": 2}
    # Packed: 4-bit codes are half a byte each, fp8/int8 one byte, fp16 two; fp32 would be 4.
    k, n, vocab = 64, 48, 40
    fp32_bytes = 4 * (6 * k * n + vocab * n)
    assert (tmp_path / "out" / "weights.bin").stat().st_size < 0.45 * fp32_bytes


def test_decode_is_fused_into_its_reader(tmp_path):
    from edgefold.targets.tvm import lowering
    from edgefold.targets.tvm.buckets import Bucket
    from edgefold.targets.tvm.importer import import_bucket

    model = weight_formats_model(tmp_path / "formats.onnx")
    bucket = Bucket("b", {"x": (1, 4, 64), "ids": (1, 4)}, {"x": "float32", "ids": "int64"})
    prepared = lowering.prepare(import_bucket(model, bucket, tmp_path / "work").mod)
    main_text = prepared["main"].script()
    assert "edgefold_decode" not in main_text.replace("fused_edgefold_decode", "")
    transform_text = prepared["main_transform_params"].script()
    assert "edgefold_decode" not in transform_text  # no weight is expanded to fp32 ahead of time


@pytest.mark.parametrize("with_zero", [True, False])
def test_matmul_nbits_matches_onnxruntime(tmp_path, cache, with_zero):
    from edgefold.targets.tvm import compile_model

    model = matmul_nbits_model(tmp_path / "nbits.onnx", with_zero=with_zero)
    manifest = compile_model(model, "host", output=tmp_path / "out", trials=0, latency=False,
                             shapes={"x": (1, 3, 64)})
    (bucket,) = manifest["compile"]["buckets"]
    assert bucket["lowbit_weights"] == {"matmul_nbits": 1}
    assert bucket["fidelity"]["max_abs_error"] < 1e-4


@pytest.mark.skipif(not HAVE_CROSS, reason="aarch64 cross compiler missing (apt-get install g++-aarch64-linux-gnu)")
def test_arm64_artifact_is_aarch64_and_runs_under_qemu(digits_onnx, cache, tmp_path, cli):
    from edgefold.targets.tvm import compile_model

    compile_model(digits_onnx, "host", output=tmp_path / "host", trials=5, check=False)  # schedules to borrow
    manifest = compile_model(digits_onnx, "mobile-arm64", output=tmp_path / "arm", trials=8)
    compiled = manifest["compile"]
    assert compiled["library_kind"] == "aarch64"
    assert _elf_machine(tmp_path / "arm" / compiled["buckets"][0]["library"]) == "aarch64"
    notes = " ".join(compiled["buckets"][0]["notes"])
    assert "no device to measure on" in notes and "transferred from this machine's host tuning" in notes
    assert compiled["buckets"][0]["tuned_kernels"] > 0
    if compiled["runner_binary"] is None:
        pytest.skip("the aarch64 TVM runtime could not be fetched (no network?)")
    assert _elf_machine(tmp_path / "arm" / compiled["runner_binary"]) == "aarch64"
    if not HAVE_QEMU:
        pytest.skip("qemu-aarch64-static missing (apt-get install qemu-user-static)")
    result = cli("run", tmp_path / "arm", "--json")
    assert result.code == 0, result.err
    row = json.loads(result.out)["batch1"]
    assert row["max_abs_error"] < 1e-4 and row["argmax_agreement"] == 1.0 and "qemu" in row["where"]


def test_cuda_library_builds_without_a_gpu(digits_onnx, cache, tmp_path, cli):
    from edgefold.targets.tvm import compile_model

    manifest = compile_model(digits_onnx, "server-gpu", output=tmp_path / "gpu", trials=8)
    compiled = manifest["compile"]
    library = tmp_path / "gpu" / compiled["buckets"][0]["library"]
    assert compiled["library_kind"] == "cuda" and _elf_machine(library) == "x86_64"
    assert b"__global__" in library.read_bytes()  # CUDA C embedded, compiled when loaded on the GPU
    if shutil.which("nvcc"):
        assert compiled["buckets"][0]["extra"] == ["lib/batch1.fatbin"]
    result = cli("run", tmp_path / "gpu")
    assert result.code == 2 and "GPU" in result.err


def test_missing_cross_compiler_names_the_package(digits_onnx, cache, tmp_path, monkeypatch, cli):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = cli("compile", digits_onnx, "--profile", "mobile-arm64", "-o", tmp_path / "out")
    assert result.code == 2
    assert "apt-get install g++-aarch64-linux-gnu" in result.err
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line_errors(digits_onnx, tmp_path, cli):
    assert "fixed to 1" in cli("compile", digits_onnx, "--shape", "image=1x2x8x8", "--trials", "0",
                               "-o", tmp_path / "out").err  # never the default dist/ in the working folder
    assert cli("compile", tmp_path / "missing.onnx").code == 2
    assert cli("run", tmp_path).code == 2


def test_weight_file_round_trip(tmp_path):
    from edgefold.targets.tvm.weights import read_weights, write_weights

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(7, dtype=np.int64),
              np.array([1, 2, 255], dtype=np.uint8)]
    write_weights(tmp_path / "w.bin", ["a", "b", "c"], arrays)
    back = read_weights(tmp_path / "w.bin")
    assert [n for n, _ in back] == ["a", "b", "c"]
    for (_, got), want in zip(back, arrays):
        assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-8])
    with pytest.raises(EdgefoldError, match="truncated"):
        read_weights(tmp_path / "cut.bin")



def test_build_cache_key_covers_the_kernel_subpackages(tmp_path):
    # A finished build is reused only while the compile code is unchanged; the LLM kernels
    # live in subpackages (kernels/, llm/), so an edit there must change the key too.
    from edgefold.targets.tvm.compiled_cache import code_hash

    (tmp_path / "kernels").mkdir()
    (tmp_path / "artifact.py").write_text("A = 1\n")
    kernel = tmp_path / "kernels" / "gemm.py"
    kernel.write_text("TILE = 4\n")
    before = code_hash(tmp_path)
    kernel.write_text("TILE = 8\n")
    edited = code_hash(tmp_path)
    assert edited != before
    (tmp_path / "kernels" / "__pycache__").mkdir()
    (tmp_path / "kernels" / "__pycache__" / "gemm.cpython-311.pyc").write_bytes(b"\0")
    assert code_hash(tmp_path) == edited  # bytecode is not source
    assert len(code_hash()) == 64
