"""The LLM path end to end on a small random Llama: the decoder read from the graph, the packed
weights and the hand-scheduled decode/prefill libraries match onnxruntime step by step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
sys.path.insert(0, str(Path(__file__).parent))  # test_kernels' weight builders


def _quantized(source, folder, spec):
    from edgefold.cli import main

    code = main(["compress", str(source), "--pass", spec, "--no-eval", "-o", str(folder)])
    assert code == 0
    return folder / "model.onnx"


def _sliced_and_repaired(source, folder):
    """slice (magnitude, 25%) then the repair=lsq surgery on every FFN: narrower down projections
    and a bias Add after each, the graph shape `repair=lsq` writes. The tiny model has no
    tokenizer to calibrate on, so the moments come from seeded random activations."""
    from edgefold import onnx_io
    from edgefold.analysis import analyse
    from edgefold.passes.base import PassContext
    from edgefold.passes.common.initializers import array
    from edgefold.passes.common.lsq_repair import repair_consumer
    from edgefold.passes.registry import create_pass

    original = onnx_io.load(source)
    before = {g.name: np.moveaxis(array(original, g.consumer.weight), g.consumer.in_axis, 0) for g in analyse(original).ffns}
    model = onnx_io.load(source)
    outcome = create_pass("slice", {"ratio": 0.25, "method": "magnitude", "allocation": "uniform"}).run(
        model, PassContext(analysis=analyse(model), seed=0))
    rng = np.random.default_rng(0)
    for group, layer in zip(analyse(model).ffns, outcome.stats["layers"]):
        weight = before[layer["ffn"]]
        kept = np.flatnonzero([np.any(np.all(np.isclose(row, np.moveaxis(array(model, group.consumer.weight),
                                                                           group.consumer.in_axis, 0)), axis=1))
                               for row in weight])
        h = np.hstack([rng.normal(size=(256, weight.shape[0])) + 0.3, np.ones((256, 1))])
        repair_consumer(model, group.consumer, weight, kept, h.T @ h / len(h), 0.1)
    path = onnx_io.save(model, folder / "model.onnx")
    assert sum(node.op_type == "Add" and node.name.endswith("lsq_bias_add") for node in onnx_io.load(path).graph) == 2
    return path


TOKENS = [5, 17, 99, 3, 64, 21, 7, 120, 1, 42]


def _onnxruntime_steps(model_path, workdir, slots):
    from edgefold.targets.tvm.references import References

    session = References(model_path, workdir).session(slots)
    feeds = {i.name: np.zeros([int(d) for d in i.shape], np.float32) for i in session.get_inputs()
             if i.name.startswith("past_")}
    names = [o.name for o in session.get_outputs()]
    logits = []
    for position, token in enumerate(TOKENS):
        feeds["input_ids"] = np.array([[token]], np.int64)
        feeds["position"] = np.array([position], np.int64)
        out = dict(zip(names, session.run(names, feeds)))
        logits.append(out["logits"].reshape(-1))
        for name in names:
            if name.startswith("present_"):
                feeds["past_" + name[8:]] = out[name]
    return session, logits


@pytest.mark.parametrize("weights", ["fp32", "int4-min-u8", "int8", "sliced-lsq"])
def test_small_llama_decode_and_prefill_match_onnxruntime(tiny_llama, tmp_path, weights):
    from tvm import relax

    from edgefold.targets.tvm.kernels.isa import isa_for
    from edgefold.targets.tvm.llm.program import build_module, plan_decoder, relax_pipeline
    from edgefold.targets.tvm.llm.reference import check_against_onnxruntime
    from edgefold.targets.tvm.llm.spec import extract_decoder

    model = {"fp32": lambda: tiny_llama,
             "int4-min-u8": lambda: _quantized(tiny_llama, tmp_path / "q", "quantize:format=int4-g32-min-s8"),
             "int8": lambda: _quantized(tiny_llama, tmp_path / "q", "quantize:format=int8"),
             "sliced-lsq": lambda: _sliced_and_repaired(tiny_llama, tmp_path)}[weights]()
    slots = 32
    session, want = _onnxruntime_steps(model, tmp_path / "ref", slots)
    spec = extract_decoder(model)
    assert len(spec.layers) == 2 and spec.layers[0].attention.num_kv_heads == 2
    check_against_onnxruntime(spec, session, TOKENS[:3], slots)

    from edgefold.targets.profiles import load_profile

    # The host profile's target (with AMX where this CPU has it: the 16-token prefill then runs
    # its GEMMs on tiles). The kernels this CPU gets; their fp32-activation twins are checked against numpy per format
    # in test_kernels.py and end to end by bench/compile.py's exact rows.
    host = tvm.target.Target({**load_profile("host").tvm_target, "num-cores": 2})
    isa = isa_for(host)
    plan = plan_decoder(spec, isa, slots)
    libraries = {}
    for tokens in (1, 16):
        mod, _ = build_module(plan, tokens)
        with tvm.transform.PassContext(opt_level=3):
            executable = tvm.compile(mod, target=host, relax_pipeline=relax_pipeline())
        libraries[tokens] = relax.VirtualMachine(executable, tvm.cpu())
    weights_tensor = tvm.runtime.tensor(plan.blob.bytes())
    cache = tvm.runtime.tensor(np.zeros(plan.cache_len, np.float32))
    tensor = lambda a: tvm.runtime.tensor(np.asarray(a))  # noqa: E731
    exact = not isa.has_int_dot  # int8 activations: compared by argmax and cosine
    for position, token in enumerate(TOKENS):
        got = libraries[1]["decode"](tensor(np.array([[token]], np.int64)), tensor(np.array([position], np.int64)),
                                     cache, weights_tensor).numpy()
        _assert_close(got, want[position], exact, f"{isa.name} decode step {position}")
    # prefill of 6 tokens into a fresh cache (bucket 16), then decode continues from there
    cache = tvm.runtime.tensor(np.zeros(plan.cache_len, np.float32))
    ids = np.zeros((1, 16), np.int64)
    ids[0, :6] = TOKENS[:6]
    got = libraries[16]["prefill"](tensor(ids), tensor(np.array([0], np.int64)), tensor(np.array([6], np.int64)),
                                  cache, weights_tensor).numpy()
    _assert_close(got, want[5], exact, f"{isa.name} prefill")
    for position in range(6, len(TOKENS)):
        got = libraries[1]["decode"](tensor(np.array([[TOKENS[position]]], np.int64)),
                                     tensor(np.array([position], np.int64)), cache, weights_tensor).numpy()
        _assert_close(got, want[position], exact, f"{isa.name} decode after prefill {position}")


def _assert_close(got, want, exact: bool, what: str):
    scale = float(np.abs(want).max())
    if exact:
        assert np.abs(got - want).max() <= 1e-4 * scale + 1e-5, what
    else:
        cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
        assert cosine > 0.999 and int(got.argmax()) == int(want.argmax()), (what, cosine)


def test_unsupported_graph_is_refused_not_misread(tiny_llama, tmp_path):
    """DIP's per-token masks are not a plain SwiGLU: the reader refuses (the generic path compiles it)."""
    from edgefold.targets.tvm.llm.spec import Unsupported, extract_decoder

    dip = _quantized(tiny_llama, tmp_path / "dip", "dip:sparsity=0.5")
    with pytest.raises(Unsupported):
        spec = extract_decoder(dip)
        from edgefold.targets.tvm.llm.reference import check_against_onnxruntime
        from edgefold.targets.tvm.references import References

        check_against_onnxruntime(spec, References(dip, tmp_path / "r").session(16), TOKENS[:3], 16)


def _one_gemv(rng):
    from edgefold.targets.tvm.kernels.gemv import GemvSpec
    from edgefold.targets.tvm.kernels.isa import isa_for
    from edgefold.targets.tvm.kernels.packing import Blob, add_packed, pack
    from test_kernels import int_weight

    host = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2})
    w = int_weight(rng, 64, 96, scale="u8", offset="min")
    packed = pack(w)
    blob = Blob()
    slots = {**add_packed(blob, packed), "norm": blob.add(np.ones(96, np.float32)), "src_off": 0, "y_off": 0}
    spec = GemvSpec(isa_for(host), packed.fmt, 64, 96, "norm", 96, 64)
    return host, spec, slots, blob.bytes()


def test_tuning_keeps_the_template_unless_metaschedule_finds_faster(tmp_path, monkeypatch):
    """Per kernel the faster of template and tuned ships, and the database records which won:
    against the real template MetaSchedule's schedule loses (the template is kept); against a
    deliberately slow template (the unscheduled loops) it wins, replays onto the real kernel,
    computes the same result, and is what gets shipped."""
    import json

    import edgefold.targets.tvm.kernels.gemv as gemv_module
    from edgefold.targets.tvm.kernels.gemv import OFFSET_SLOTS
    from edgefold.targets.tvm.kernels.tunable import unscheduled_gemv
    from edgefold.targets.tvm.llm.tuning import SELECTION_FILE, select_kernels
    from edgefold.targets.tvm.tuning import TuningDatabase

    host, spec, slots, blob = _one_gemv(np.random.default_rng(1))
    replacements, selection = select_kernels({spec.name: (spec, slots)}, blob, host, 4, TuningDatabase(tmp_path / "a"))
    assert replacements == {} and selection[spec.name]["winner"] == "template"
    assert json.loads((tmp_path / "a" / SELECTION_FILE).read_text())[spec.name]["winner"] == "template"

    monkeypatch.setattr(gemv_module, "build_gemv", lambda s: unscheduled_gemv(s).with_attr("global_symbol", s.name))
    replacements, selection = select_kernels({spec.name: (spec, slots)}, blob, host, 16, TuningDatabase(tmp_path / "b"))
    assert selection[spec.name]["winner"] == "tuned", selection
    assert json.loads((tmp_path / "b" / SELECTION_FILE).read_text())[spec.name]["winner"] == "tuned"
    library = tvm.compile(tvm.IRModule({spec.name: replacements[spec.name]}), target=host)
    reference = tvm.compile(tvm.IRModule({spec.name: unscheduled_gemv(spec)}), target=host)
    src = tvm.runtime.tensor(np.random.default_rng(3).standard_normal(96).astype(np.float32))
    outs = []
    for lib in (library, reference):
        y = tvm.runtime.tensor(np.zeros(64, np.float32))
        lib[spec.name](src, tvm.runtime.tensor(blob), *[int(slots.get(s, 0)) for s in OFFSET_SLOTS], y)
        outs.append(y.numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
