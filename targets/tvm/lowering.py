"""The Relax pipeline from an imported model to a module ready to tune and build.

1. Decompose inference-only ops; fuse transpose+matmul (the tied lm_head reads the
   embedding table row-wise instead of storing a transposed copy).
2. Fuse every `edgefold_decode*` kernel into the matmul / gather / conv that reads it,
   so the fused kernel reads packed weights (constant folding would otherwise expand
   them to fp32, and an unfused decode would run as its own kernel every call).
3. Lift weight-only computations into `main_transform_params`, run once at compile
   time on this machine; the device library keeps `main` only.
4. Small weight-only values become library constants (`bind_small_weights`).
5. The `zero` pipeline (legalize, fold, fuse) that MetaSchedule tunes: the default
   CPU build only legalizes, which leaves naive loops and nothing to tune.
"""

from __future__ import annotations


from edgefold.targets.tvm.converters import DECODE_PREFIX


def _is_decode(call) -> bool:
    callee = call.args[0] if len(call.args) else None
    return callee is not None and getattr(callee, "name_hint", "").startswith(DECODE_PREFIX)


def decode_patterns():
    """(name, pattern, annotations, check): a decode feeding the op that consumes the weight."""
    from tvm.relax.dpl import is_call_tir, is_op, wildcard

    def check(context) -> bool:
        return _is_decode(context.annotated_expr["decode"])

    decode = is_call_tir("")  # any call_tir; `check` keeps only the decode kernels
    patterns = []
    for name, build in (
        ("decode_matmul", lambda d: is_op("relax.matmul")(wildcard(), d)),
        ("decode_matmul_t", lambda d: is_op("relax.matmul")(wildcard(), is_op("relax.permute_dims")(d))),
        ("decode_take", lambda d: is_op("relax.take")(d, wildcard())),
        ("decode_conv2d", lambda d: is_op("relax.nn.conv2d")(wildcard(), d)),
    ):
        patterns.append((f"edgefold.{name}", build(decode), {"decode": decode}, check))
    return patterns


def prepare(mod) -> object:
    """Steps 1-3 on the imported module (target independent)."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FuseTransposeMatmul(),
        relax.transform.FuseOpsByPattern(decode_patterns(), bind_constants=False, annotate_codegen=False),
        # Constant-only values (rotary tables, the causal mask) become constants in the
        # library; otherwise they would be lifted with the weights and differ per shape.
        relax.transform.FoldConstant(),
        relax.transform.LiftTransformParams(),
        relax.transform.DeadCodeElimination(["main", "main_transform_params"]),
    ])
    return seq(mod)


DERIVED_LIMIT_BYTES = 256 << 10  # a 256-token causal mask; per-weight scales of big tables stay in the file


def bind_small_weights(device_mod, weights: list, limit_bytes: int = 1 << 16,
                       source_names: set[str] | None = None):
    """Turn transformed weights under `limit_bytes` into library constants.

    Small weight-only values (rotary tables of a prefill shape, reshaped norm scales)
    then live in each shape's library, and the weight file holds only the large
    weights, the same bytes for every shape, so buckets share one file. Values that
    are not model weights (`source_names`) but computed at compile time for one shape,
    such as a prefill bucket's causal mask, are bound up to DERIVED_LIMIT_BYTES, for the
    same reason.
    Returns (module, kept weights in parameter order, their names).
    """
    import tvm
    from tvm import relax

    main = device_mod["main"]
    num_inputs = int(main.attrs["num_input"])
    params = list(main.params)[num_inputs:]
    bound, kept, names = {}, [], []
    for var, array in zip(params, weights):
        derived = source_names is not None and var.name not in source_names
        if array.nbytes < limit_bytes or (derived and array.nbytes <= DERIVED_LIMIT_BYTES):
            bound[var] = tvm.runtime.tensor(array)
        else:
            kept.append(array)
            names.append(var.name)
    if bound:
        device_mod = relax.transform.BindParams("main", bound)(device_mod)
    return device_mod, kept, names


def finish(device_mod, target):
    """The `zero` pipeline on the device module (legalize, fold, fuse): what tuning sees."""
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(device_mod)


def only(mod, name: str):
    """A copy of `mod` with one entry function and what it calls."""
    import tvm
    from tvm import relax

    entries = {"main", "main_transform_params"}
    kept = {gv: f for gv, f in mod.functions.items() if gv.name_hint == name or gv.name_hint not in entries}
    return relax.transform.DeadCodeElimination([name])(tvm.IRModule(kept, attrs=mod.attrs))
