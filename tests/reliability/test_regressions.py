"""Regression tests for the graph-robustness findings: unnamed nodes, external data outside
the model's folder, huge declared dims, silent no-ops, ratio rounding, the fidelity floor."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold import onnx_io
from edgefold.errors import EdgefoldError
from graphs import GraphSpec, build, write


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFOLD_CACHE", str(tmp_path / "cache"))


def _compress(cli, source, spec, out, *extra):
    return cli("compress", source, "--pass", spec, "-o", out, "--no-eval", *extra)


def _one_clean_error(result, *fragments):
    assert result.code == 2, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("edgefold: error:")]
    assert len(errors) == 1 and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _record(out):
    [record] = json.loads((out / "manifest.json").read_text())["passes"]
    return record


# ----------------------------------------------------------------- unnamed nodes


def test_load_names_unnamed_nodes_once_and_keeps_existing_names(tmp_path):
    spec = GraphSpec(kind="conv", seed=1, width=5, inner=0, layers=1, named=False)
    path = write(spec, tmp_path)
    first, second = onnx_io.load(path), onnx_io.load(path)
    names = [n.name for n in first.graph]
    assert all(names) and len(set(names)) == len(names)
    assert names == [n.name for n in second.graph]  # deterministic
    assert names[:2] == ["Conv_0", "BatchNormalization_1"]
    named = onnx_io.load(write(spec.renamed(True), tmp_path))
    assert [n.name for n in named.graph] == [n.name for n in build(spec.renamed(True)).graph.node]


def test_synthesised_names_never_collide_and_repeats_are_renamed():
    relu = lambda name, src, dst: helper.make_node("Relu", [src], [dst], name=name)  # noqa: E731
    graph = helper.make_graph(
        [relu("Relu_1", "x", "a"), relu("", "a", "b"), relu("dup", "b", "c"), relu("dup", "c", "d")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert onnx_io.name_nodes(model) == 2
    assert [n.name for n in model.graph] == ["Relu_1", "Relu_1_2", "dup", "Relu_3"]
    assert onnx_io.name_nodes(model) == 0  # already unique: nothing changes


def _outputs(path, seed=1):
    from edgefold.export.onnx_import import synthetic_inputs

    return onnx_io.run(onnx_io.session(path), synthetic_inputs(onnx_io.load_proto(path), seed=seed))


def _weights(path):
    model = onnx_io.load(path)
    return sorted(v.const_value.numpy().tobytes() for v in model.graph.initializers.values())


@pytest.mark.parametrize("kind, pass_spec", [
    ("conv", "fold:ratio=0.3,channel_multiple=1"),
    ("conv", "quantize:format=int8,min_elements=0"),
    ("swiglu", "fold:ratio=0.3"),
    ("swiglu", "dip:sparsity=0.5"),
    ("mlp", "slice:ratio=0.5,method=magnitude,channel_multiple=1"),
])
def test_unnamed_graph_is_compressed_exactly_like_its_named_twin(cli, tmp_path, kind, pass_spec):
    spec = GraphSpec(kind=kind, seed=4, width=16, inner=24, layers=2, named=True, depthwise=True, bias=True)
    results = {}
    for named in (True, False):
        out = tmp_path / f"out-{named}"
        result = _compress(cli, write(spec.renamed(named), tmp_path), pass_spec, out)
        assert result.code == 0, result.err
        results[named] = (_record(out), _outputs(out / "model.onnx"), _weights(out / "model.onnx"))
    (named_record, named_out, named_weights), (unnamed_record, unnamed_out, unnamed_weights) = results.values()
    assert named_record["stats"]["removed"] > 0
    for key in ("stats", "fidelity", "params", "macs"):
        assert named_record[key] == unnamed_record[key], key
    assert named_weights == unnamed_weights
    assert all(np.array_equal(named_out[k], unnamed_out[k]) for k in named_out)


def test_unnamed_graph_output_is_byte_identical_between_runs(cli, tmp_path):
    source = write(GraphSpec(kind="swiglu", seed=2, width=16, inner=24, layers=2, named=False), tmp_path)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert _compress(cli, source, "fold:ratio=0.3", out).code == 0
    for name in ("model.onnx", "manifest.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


# ----------------------------------------------------------------- external data


def _external_model(folder, location, *, length=True):
    """model.onnx in `folder` whose weight lives in `location` (written relative to folder)."""
    weight = numpy_helper.from_array(np.ones((32, 32), np.float32), "w")
    raw = weight.raw_data
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", **({"length": str(len(raw))} if length else {})}
    for key, value in entries.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path, raw


@pytest.mark.parametrize("where", ["absolute", "dotdot", "inner-dotdot", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(cli, tmp_path, where):
    outside = tmp_path / "secret.bin"
    folder = tmp_path / "model"
    location = {"absolute": str(outside), "dotdot": "../secret.bin", "inner-dotdot": "sub/../../secret.bin",
                "symlink": "link.bin"}[where]
    path, raw = _external_model(folder, location)
    outside.write_bytes(raw)
    if where == "symlink":
        (folder / "link.bin").symlink_to(outside)
    for result in (cli("inspect", path), _compress(cli, path, "cleanup", tmp_path / "out")):
        _one_clean_error(result, "points outside the model's folder", repr(location))
    assert not (tmp_path / "out").exists()


def test_external_data_location_is_refused_before_any_file_is_touched(tmp_path):
    # Nothing exists there: a stat would say "missing"; the refusal comes first.
    path, _ = _external_model(tmp_path / "model", "/nonexistent/dir/weights.bin")
    with pytest.raises(EdgefoldError, match="points outside"):
        onnx_io.load(path)


def test_external_data_without_a_length_and_a_hard_linked_data_file(tmp_path):
    path, raw = _external_model(tmp_path / "model", "w.bin", length=False)
    (path.parent / "w.bin").write_bytes(raw)
    model = onnx_io.load(path)  # no length: the tensor's own size is what must be there
    assert model.graph.initializers["w"].const_value.numpy().sum() == 32 * 32
    os.link(path.parent / "w.bin", tmp_path / "second-link.bin")
    with pytest.raises(EdgefoldError, match="2 hard links"):
        onnx_io.load(path)


# ----------------------------------------------------------------- huge declared dims


@pytest.mark.parametrize("dim", [10**12, 2**62])
def test_huge_declared_input_dims_are_refused_cleanly(cli, tmp_path, dim):
    model = build(GraphSpec(kind="mlp", seed=1, width=8, inner=8, layers=1))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = dim
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = dim
    path = tmp_path / "huge.onnx"
    onnx.save(model, path)
    _one_clean_error(_compress(cli, path, "cleanup", tmp_path / "out"), "'x'", str(dim))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- no-ops and rounding


def test_a_pass_that_removes_nothing_says_so(cli, tmp_path):
    source = write(GraphSpec(kind="conv", seed=1, width=16, inner=0, layers=1), tmp_path)
    result = _compress(cli, source, "fold:ratio=0.2", tmp_path / "out")  # host: widths on multiples of 8
    assert result.code == 0, result.err
    stats = _record(tmp_path / "out")["stats"]
    assert stats["removed"] == 0 and "channel multiple 8" in stats["note"]
    assert stats["requested_ratio"] == 0.2 and stats["achieved_ratio"] == {"conv": 0.0}
    assert "warning: fold removed nothing" in result.err


def test_a_ratio_that_rounds_to_a_different_removal_says_what_it_did(cli, tmp_path):
    source = write(GraphSpec(kind="mlp", seed=1, width=16, inner=16, layers=2), tmp_path)
    result = _compress(cli, source, "slice:ratio=0.3,method=magnitude,allocation=uniform", tmp_path / "out")
    assert result.code == 0, result.err
    stats = _record(tmp_path / "out")["stats"]
    assert (stats["target_ratio"], stats["channel_ratio"], stats["removed"]) == (0.3, 0.5, 16)
    assert "warning: slice: asked to remove 0.3 of the FFN channels, removed 0.5" in result.err


def test_dip_quantize_and_cleanup_report_no_ops(tmp_path):
    from edgefold.analysis import analyse
    from edgefold.passes.base import PassContext
    from edgefold.passes.registry import create_pass

    path = write(GraphSpec(kind="swiglu", seed=1, width=8, inner=12, layers=1), tmp_path)
    for name, options, fragment in [("dip", {"sparsity": 0.01}, "no mask inserted"),
                                    ("quantize", {"format": "int8"}, "no fp32 weight of at least 1024"),
                                    ("cleanup", {}, "nodes stay")]:
        model = onnx_io.load(path)
        stats = create_pass(name, options).run(model, PassContext(analysis=analyse(model))).stats
        assert stats["removed"] == 0 and fragment in stats["note"], (name, stats)


# ----------------------------------------------------------------- fidelity floor


def _negate_output_pass():
    from edgefold.passes.base import GraphPass, PassOutcome

    class Negate(GraphPass):
        """Flips the sign of the graph's output: output cosine -1."""

        name = "negate"

        def run(self, model, context):
            raw = model.graph.outputs[0]
            neg = ir.node("Neg", [raw], name="negate")
            model.graph.append(neg)
            flipped = neg.outputs[0]
            flipped.type, flipped.shape = raw.type, raw.shape
            name, raw.name = raw.name, f"{raw.name}.raw"
            flipped.name = name
            model.graph.outputs[0] = flipped
            return PassOutcome(model, {"removed": 0})

    return Negate()


def test_fidelity_floor_stops_a_pass_that_wrecks_the_outputs(tmp_path):
    from edgefold.compress import run_passes
    from edgefold.export import export_model
    from edgefold.passes.registry import create_pass

    spec = GraphSpec(kind="swiglu", seed=1, width=16, inner=24, layers=1)
    handle = export_model(write(spec, tmp_path))
    with pytest.raises(EdgefoldError) as caught:
        run_passes(handle, [_negate_output_pass()], tmp_path / "work-a")
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert message.startswith("pass 'negate'") and "cosine -1.000 is below the fidelity floor 0.5" in message
    assert "--min-cosine / [validation] min_cosine" in message

    dip = create_pass("dip", {"sparsity": 0.5})
    [record] = run_passes(handle, [dip], tmp_path / "work-b").records  # default floor 0.5: passes
    assert 0.5 <= record.fidelity["cosine"] < 0.999
    with pytest.raises(EdgefoldError, match="below the fidelity floor 0.999"):
        run_passes(handle, [dip], tmp_path / "work-c", min_cosine=0.999)
    [negated] = run_passes(handle, [_negate_output_pass()], tmp_path / "work-d", min_cosine=-2.0).records
    assert negated.fidelity["cosine"] < -0.999
