"""The `edgefold` command line.

Exit codes: 0 success, 1 a gate failed (the report says which and by how much), 2 bad input or
environment (one line on stderr, nothing partial written), 3 an internal error (a bug: the
traceback is printed), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

Output folders (`-o`, a recipe's `output`) follow one rule (`edgefold.atomic`): they must be
absent, empty, or a folder edgefold wrote; `--force` also replaces edgefold's files in such a
folder when it holds other files, which are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from edgefold.errors import (EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED, EdgefoldError,
                             Terminated)

_FORCE_HELP = "replace edgefold's own files in the output folder even when it holds other files (those are kept)"


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {value})")
        return value
    return parse


def _at_least_float(minimum: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} (got {text})")
        return value
    return parse


def _probability(text: str) -> float:
    value = _at_least_float(0.0)(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (got {text})")
    return value


def _rpc_url(text: str) -> str:
    from edgefold.targets.rpc_url import parse_rpc_url

    try:
        parse_rpc_url(text)
    except EdgefoldError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cosine(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine lies in [-1, 1] (got {value})")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with edgefold's one-line error format (exit 2, like every other bad input)."""

    def error(self, message: str):
        self.exit(2, f"edgefold: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgefold", description="Hardware-aware ONNX export, compression and compile.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a model to a verified ONNX file (cached)")
    p.add_argument("model", nargs="?", help="built-in name, HF model folder or .onnx (default: smollm2-135m)")
    p.add_argument("-o", "--output", type=Path, help="also copy the model into this folder")
    p.add_argument("--force", action="store_true", help="ignore the export cache; " + _FORCE_HELP)

    p = sub.add_parser("inspect", help="list prunable structures and channel groups")
    p.add_argument("model", help=".onnx file or built-in name")
    p.add_argument("--json", action="store_true", help="machine-readable groups on stdout")

    p = sub.add_parser("compress", help="apply passes to a model ad hoc")
    p.add_argument("model", help=".onnx file, built-in name or model folder")
    p.add_argument("--pass", dest="passes", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="a pass to run (repeatable, in order)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder for the compressed model (new, empty or an edgefold output)")
    p.add_argument("--profile", default="host", help="device profile name or .toml (default: host)")
    p.add_argument("--seed", type=int, default=0, help="seed for the passes' random choices (default: 0)")
    p.add_argument("--eval-tokens", type=_at_least(32), default=8192, help="perplexity tokens for LMs (>= 32)")
    p.add_argument("--no-eval", action="store_true", help="skip the task metric (fidelity is still checked)")
    p.add_argument("--min-cosine", type=_cosine, default=0.5,
                   help="fidelity floor: a pass whose output cosine vs the original falls below fails (default 0.5)")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)

    p = sub.add_parser("build", help="run a build recipe (default: SmolLM2-135M for the host CPU)")
    p.add_argument("recipe", nargs="?", type=Path, help="recipe .toml (default: built-in default recipe)")
    p.add_argument("-o", "--output", type=Path, help="output folder (overrides the recipe)")
    p.add_argument("--force", action="store_true", help="rebuild even when nothing changed; " + _FORCE_HELP)

    p = sub.add_parser("check", help="check a built artifact against its recipe's gates (exit 1 if one fails)")
    p.add_argument("recipe", type=Path, help="the recipe .toml the artifact was built from")
    p.add_argument("-o", "--output", type=Path, help="artifact folder (default: the recipe's output)")

    p = sub.add_parser("search", help="build a grid of pass settings and report the Pareto front")
    p.add_argument("recipe", type=Path, help="recipe with a [search] table")
    p.add_argument("-o", "--output", type=Path, help="output folder (default: the recipe's output)")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)

    p = sub.add_parser("eval", help="task metric of a model (perplexity, Spearman, agreement, accuracy)")
    p.add_argument("model", help=".onnx file or built-in name")
    p.add_argument("--reference", help="original model for agreement metrics")
    p.add_argument("--tokens", type=_at_least(32), default=8192,
                   help="perplexity tokens for language models (default: 8192)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("profile", help="latency of a built model on a target (measured or estimated)")
    p.add_argument("artifact", type=Path, help="a build folder (with manifest.json) or a model.onnx")
    p.add_argument("--target", help="host (the compiled library in TVM's VM here; also spelled tvm), "
                   "rpc://TRACKER:PORT/KEY (a device behind a TVM RPC tracker), onnxruntime (model.onnx here) or "
                   "estimate (the profile's roofline); default: host for a compiled artifact, onnxruntime otherwise")
    p.add_argument("--top", type=int, default=8, help="kernels to list per shape")
    p.add_argument("--profile", help="device profile for estimate (default: the artifact's)")
    p.add_argument("--repeats", type=_at_least(1), default=10, help="timed runs per shape (default: 10)")
    p.add_argument("--json", action="store_true", help="print the latency result as JSON")

    p = sub.add_parser("simulate", help="replay real text through a phone's DRAM cache of MLP weights (DIP, DIP-CA)")
    p.add_argument("model", help="built-in name, HF model folder or .onnx (a causal LM with MLP blocks)")
    p.add_argument("--profile", action="append", dest="profiles", metavar="PROFILE",
                   help="device profile with flash (repeatable; default mobile-arm64)")
    p.add_argument("--sparsity", default="0.25,0.5,0.75", help="DIP MLP sparsities (comma-separated)")
    p.add_argument("--ca-sparsity", help="DIP-CA sparsities (default: the --sparsity list)")
    p.add_argument("--gamma", default="0.1,0.2,0.5", help="DIP-CA gammas (comma-separated; 1 = plain DIP)")
    p.add_argument("--policy", default="lru", help="cache eviction policies: lru, lfu (comma-separated)")
    p.add_argument("--tokens", type=int, default=8192, help="Wikipedia tokens to replay")
    p.add_argument("--window", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--dram-budget-mb", type=float, help="DRAM for weights (default: the profile's weight_budget_gb)")
    p.add_argument("--cache-fraction", type=float, help="cache this share of the MLP weights instead of a budget")
    p.add_argument("--bytes-per-weight", type=float, help="price weights as this many bytes (2 = fp16, 0.5 = int4)")
    p.add_argument("-o", "--output", type=Path, help="write results.json, per_token.npz and plots here")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.add_argument("--json", action="store_true", help="print results as JSON")

    p = sub.add_parser("compile", help="compile a model with TVM for a device profile into a deployable artifact")
    p.add_argument("model", help="model.onnx, a build folder, or a built-in name")
    p.add_argument("--profile", default="host", help="device profile name or .toml (default: host)")
    p.add_argument("-o", "--output", type=Path, help="artifact folder (default: dist/<model>-<profile>)")
    p.add_argument("--seq", help="sequence lengths to compile, comma-separated (LMs default 1,128)")
    p.add_argument("--shape", action="append", metavar="NAME=DxD...", help="a static input shape (repeatable)")
    p.add_argument("--trials", type=int, help="tuning trials per shape (default: the profile's; 0 = no tuning)")
    p.add_argument("--kv-cache", type=int, default=256, metavar="N",
                   help="causal LMs: KV-cache slots of the decode library (default 256; 0 = decode without a cache)")
    p.add_argument("--rpc", type=_rpc_url, metavar="rpc://TRACKER:PORT/KEY",
                   help="measure tuning candidates on a device via a TVM RPC tracker")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with onnxruntime")
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)

    p = sub.add_parser("run", help="run a compiled artifact (host, or qemu-aarch64): compare with onnxruntime, "
                                   "or generate text from a compiled LLM with --prompt")
    p.add_argument("artifact", type=Path, help="artifact folder written by `edgefold compile` or `edgefold build`")
    p.add_argument("--prompt", help="LLM artifacts: stream the continuation of this text (greedy unless --temperature)")
    p.add_argument("--max-new-tokens", type=_at_least(1), default=32, metavar="N", help="tokens to generate (default 32)")
    p.add_argument("--temperature", type=_at_least_float(0.0), default=0.0,
                   help="sampling temperature (default 0: greedy, the deterministic choice)")
    p.add_argument("--top-k", type=_at_least(0), default=0, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=_probability, default=1.0, help="nucleus sampling: smallest set with this mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--count", type=_at_least(1), help="input sets per shape (default: 8 for decode, 1 otherwise)")
    p.add_argument("--repeats", type=_at_least(1), default=5, help="timed runs for the host latency")
    p.add_argument("--json", action="store_true", help="print the result (comparison or generated text) as JSON")

    sub.add_parser("passes", help="list available passes")
    sub.add_parser("targets", help="list device profiles")
    return parser


def _model_path(name: str) -> Path:
    """The ONNX file named on the command line (see `edgefold.export.model_file`)."""
    from edgefold.export import model_file

    return model_file(name)


def cmd_export(args) -> int:
    """`edgefold export`: export a model to a verified ONNX file (cached), optionally copied into `--output`;
    prints its path and the error against torch. Returns 0."""
    from edgefold.export import export_model
    from edgefold.handle import ModelHandle  # noqa: F401

    if args.output:
        from edgefold.atomic import claim_output

        claim_output(args.output, force=args.force)  # refuse a foreign folder before the export
    handle = export_model(args.model, force=args.force)
    target = handle.path
    if args.output:
        from edgefold import onnx_io
        from edgefold.atomic import output_directory
        from edgefold.manifest import folder_manifest, write_json

        with output_directory(args.output, force=args.force) as staging:
            onnx_io.save(onnx_io.load(handle.path), staging / "model.onnx")
            write_json(staging / "manifest.json", folder_manifest(
                staging, command="export", model={"name": handle.name, "source_sha256": handle.source_sha256}))
        target = args.output / "model.onnx"
    error = handle.info.get("max_abs_error_vs_torch")
    print(f"{target}")
    if error is not None:
        print(f"max |onnxruntime - torch| on real inputs: {error:.3g}")
    return 0


def cmd_inspect(args) -> int:
    """`edgefold inspect`: print a model's layers, prunable groups and channel ties (table or `--json`). Returns 0."""
    from edgefold import onnx_io
    from edgefold.analysis import analyse, print_table

    analysis = analyse(onnx_io.load(_model_path(args.model)))
    if args.json:
        print(json.dumps(analysis.to_json(), indent=2, sort_keys=True))
    else:
        from rich.console import Console

        print_table(analysis, Console(width=None if sys.stdout.isatty() else 160))
    return 0


def cmd_compress(args) -> int:
    """`edgefold compress`: apply the `--pass` list to a model without a recipe file (no compile step).
    Returns 0 if every gate passes, 1 if one fails."""
    from edgefold.build import run_build
    from edgefold.passes.registry import parse_pass_spec
    from edgefold.recipe import CompileSettings, EvalSettings, PassEntry, Recipe, ValidationSettings

    if not args.passes:
        raise EdgefoldError("compress needs at least one --pass NAME[:key=value,...]")
    entries = []
    for spec in args.passes:
        name, options = parse_pass_spec(spec)
        entries.append(PassEntry(name=name, **options))
    recipe = Recipe(model=args.model, profile=args.profile, seed=args.seed, passes=entries,
                    eval=EvalSettings(enabled=not args.no_eval, tokens=args.eval_tokens),
                    validation=ValidationSettings(min_cosine=args.min_cosine),
                    compile=CompileSettings(enabled=False))  # `edgefold compile` is the separate step
    return 0 if run_build(recipe, output=args.output, force=args.force).gates_passed else 1


def cmd_build(args) -> int:
    """`edgefold build`: run a build recipe (default: SmolLM2-135M for the host CPU) and print its summary.
    Returns 0 if every gate passes, 1 if one fails."""
    from edgefold.build import run_build
    from edgefold.recipe import Recipe, load_recipe

    if args.recipe is None:
        recipe, base = Recipe(), Path.cwd()
    else:
        recipe, base = load_recipe(args.recipe)
    result = run_build(recipe, base_dir=base, output=args.output, reuse=not args.force, force=args.force)
    if result.report.get("summary"):
        from edgefold.summary import print_summary

        print_summary(result.report["summary"])
    return 0 if result.gates_passed else 1


def cmd_check(args) -> int:
    """`edgefold check`: re-check a built artifact against its recipe's gates, measuring latency again.
    Returns 0 if every gate passes, 1 if one fails."""
    from edgefold.build import check_build
    from edgefold.recipe import load_recipe

    recipe, base = load_recipe(args.recipe)
    return 0 if check_build(recipe, base_dir=base, output=args.output).gates_passed else 1


def cmd_search(args) -> int:
    """`edgefold search`: build the recipe's grid of pass settings, print each point (Pareto ones starred)
    and the best. Returns 0, or 1 if no configuration meets the gates."""
    from edgefold.recipe import load_recipe
    from edgefold.search import run_search

    recipe, base = load_recipe(args.recipe)
    if recipe.search is None:
        raise EdgefoldError(f"{args.recipe} has no [search] table (e.g. grid = {{ \"fold.ratio\" = [0.1, 0.2] }})")
    output = args.output or base / (recipe.output or "dist/search")
    summary = run_search(recipe, recipe.search, base_dir=base, output=output, force=args.force)
    for point in summary["points"]:
        mark = "*" if point["pareto"] else " "
        print(f"{mark} {point['setting']}: {summary['quality']} {point[summary['quality']]:.4f}, "
              f"{point['latency_ms']:.2f} ms, {point['file_mb']:.1f} MB, gates {'pass' if point['gates_passed'] else 'FAIL'}")
    best = summary["best"]
    if best is None:
        print("no configuration meets the gates")
        return 1
    print(f"best: {best['setting']} -> {output / 'best'}")
    return 0


def cmd_eval(args) -> int:
    """`edgefold eval`: print a model's task metric (perplexity, Spearman, agreement, accuracy), optionally
    against `--reference`. Returns 0; a model without a known task is an error."""
    from edgefold import onnx_io
    from edgefold.evaluate import evaluate

    path = _model_path(args.model)
    reference = _model_path(args.reference) if args.reference else None
    values = evaluate(path, reference_path=reference, tokens=args.tokens)
    if args.json:
        print(json.dumps(values, indent=2, sort_keys=True))
    else:
        name = onnx_io.metadata(path).get("edgefold.model", path.name)
        for key, value in values.items():
            print(f"{name} {key}: {value:.4f}")
    if not values:
        raise EdgefoldError(f"{args.model}: no task metric for this model (its task is unknown: only causal LMs, "
                            "sentence embeddings and image/digits classifiers are evaluated)")
    return 0


def cmd_profile(args) -> int:
    """`edgefold profile`: latency of a model or artifact on one latency target."""
    from edgefold.measure import DEFAULT_TOP, create, parse_latency_target
    from edgefold.targets.tvm.latency import is_compiled_artifact

    compiled = args.artifact.is_dir() and is_compiled_artifact(args.artifact)
    target = parse_latency_target(args.target or ("host" if compiled else "onnxruntime"), what="profiling target")
    runner = create(target)
    if target.needs_compile:
        if not compiled:
            raise EdgefoldError(f"--target {target} profiles a compiled artifact: run `edgefold compile` on "
                                f"{args.artifact} first (or use --target onnxruntime|estimate)")
        result = runner.measure(args.artifact / "model.onnx", repeats=args.repeats, top=max(args.top, DEFAULT_TOP))
        return _print_profile(result.details, args, profile_name=None)
    from edgefold.atomic import read_own_manifest

    if not args.artifact.exists():
        raise EdgefoldError(f"not found: {args.artifact}")
    model_path = args.artifact / "model.onnx" if args.artifact.is_dir() else args.artifact
    profile_name = args.profile
    if profile_name is None:
        manifest = read_own_manifest(model_path.parent) or {}
        profile_name = (manifest.get("profile") or {}).get("name") or "host"
    result = runner.measure(_model_path(str(model_path)), device=profile_name, repeats=args.repeats)
    return _print_profile(result.details, args, profile_name)


def _print_profile(result: dict, args, profile_name: str | None) -> int:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    if "bandwidth_gbps" in result:
        return _print_llm_profile(result, args)
    for shape, values in result["shapes"].items():
        line = f"{shape}: median {values['median_ms']:.3f} ms ({values['kind']}"
        line += f" for {profile_name})" if values["kind"] == "estimated" else f", p90 {values['p90_ms']:.3f}, min {values['min_ms']:.3f})"
        if "tokens_per_s" in values:
            line += f", {values['tokens_per_s']:.1f} tokens/s"
        if "peak_rss_mb" in values:
            line += f", peak memory {values['peak_rss_mb']:.0f} MB"
        print(line)
        if values.get("note"):
            print(f"    ({values['note']})")
        for kernel in values["kernels"][:args.top]:
            print(f"    {kernel['ms']:9.3f} ms {100 * kernel['share']:5.1f}%  {kernel['name']}")
    return 0


def _print_llm_profile(result: dict, args) -> int:
    """Decode step and prefill of an LLM artifact, with each kernel's bandwidth efficiency."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"memory read bandwidth {result['bandwidth_gbps']:.1f} GB/s ({result['bandwidth_source']})")
    for shape, values in result["shapes"].items():
        line = (f"{shape}: median {values['median_ms']:.3f} ms (p90 {values['p90_ms']:.3f}, min {values['min_ms']:.3f}), "
                f"{values['tokens_per_s']:.1f} tokens/s")
        if "roofline_ms" in values:
            line += (f"; reads {values['weight_bytes'] / 1e6:.1f} MB of weights per token: roofline "
                     f"{values['roofline_ms']:.3f} ms, {values['vs_roofline']:.2f}x of it (context {values['context']})")
        console.print(line)
        if not values.get("kernels"):
            continue
        table = Table(title=f"{shape}: kernels per step ({result['note']})")
        for column in ("kernel", "calls", "ms", "share", "MB read", "GB/s", "of bandwidth"):
            table.add_column(column, justify="left" if column == "kernel" else "right")
        for kernel in values["kernels"][:args.top]:
            table.add_row(kernel["name"], str(kernel["calls"]), f"{kernel['ms']:.3f}", f"{100 * kernel['share']:.1f}%",
                          f"{kernel['bytes'] / 1e6:.1f}" if "bytes" in kernel else "",
                          f"{kernel['gbps']:.1f}" if "gbps" in kernel else "",
                          f"{100 * kernel['bandwidth_share']:.0f}%" if "bandwidth_share" in kernel else "")
        console.print(table)
    return 0


def _float_list(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise EdgefoldError(f"bad {what} list {text!r}: expected comma-separated numbers") from None


def cmd_simulate(args) -> int:
    """`edgefold simulate`: replay real text through a phone's DRAM cache of MLP weights for each method
    (DIP, DIP-CA) and print or write the results. Returns 0."""
    from edgefold.simulate import default_methods, simulate
    from edgefold.simulate.report import print_table, write_outputs

    if args.output:
        from edgefold.atomic import claim_output

        claim_output(args.output, force=args.force)  # refuse a foreign folder before the replay
    policies = tuple(p.strip() for p in args.policy.split(",") if p.strip())
    methods = default_methods(_float_list(args.sparsity, "sparsity"), _float_list(args.gamma, "gamma"),
                              _float_list(args.ca_sparsity, "DIP-CA sparsity"), policies)
    result = simulate(args.model, args.profiles or ["mobile-arm64"], methods=methods, policies=policies,
                      tokens=args.tokens, window=args.window, dram_budget_mb=args.dram_budget_mb,
                      cache_fraction=args.cache_fraction, bytes_per_weight=args.bytes_per_weight)
    if args.output:
        from edgefold.atomic import output_directory
        from edgefold.manifest import folder_manifest, write_json

        with output_directory(args.output, force=args.force) as staging:
            write_outputs(result, staging)
            write_json(staging / "manifest.json", folder_manifest(staging, command="simulate", model=str(args.model)))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        from rich.console import Console

        print_table(result, Console(width=None if sys.stdout.isatty() else 160))
    return 0


def cmd_compile(args) -> int:
    """`edgefold compile`: compile a model with TVM for a device profile into a deployable artifact. Returns 0."""
    from edgefold.targets.tvm import compile_model
    from edgefold.targets.tvm.buckets import parse_shape_overrides

    seqs = None
    if args.seq:
        try:
            seqs = [int(s) for s in args.seq.split(",") if s.strip()]
        except ValueError:
            raise EdgefoldError(f"bad --seq {args.seq!r}: expected comma-separated integers") from None
    compile_model(args.model, args.profile, output=args.output, seqs=seqs,
                  shapes=parse_shape_overrides(args.shape), trials=args.trials, rpc=args.rpc,
                  check=not args.no_check, kv_cache=args.kv_cache, force=args.force)
    return 0


def cmd_run(args) -> int:
    """`edgefold run`: run a compiled artifact and compare it with onnxruntime, or with `--prompt` stream text
    from a compiled LLM. Returns 0."""
    from edgefold.targets.tvm import run_artifact

    if args.prompt is not None:
        return _generate(args)
    sampling_flags = args.temperature or args.top_k or args.top_p != 1.0
    if sampling_flags:
        raise EdgefoldError("--temperature/--top-k/--top-p need --prompt")

    results = run_artifact(args.artifact, repeats=args.repeats, count=args.count)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    for label, row in results.items():
        line = f"{label} [{row['inputs']}] on {row['where']}: max error {row['max_abs_error']:.3g}"
        line += f" (outputs up to {row['max_abs_reference']:.3g}), cosine {row['cosine']:.6f}"
        if "argmax_agreement" in row:
            line += f", argmax agreement {100 * row['argmax_agreement']:.1f}% over {row['inputs_checked']} input(s)"
        if "tvm_ms" in row:
            line += f"; TVM {row['tvm_ms']:.2f} ms"
            if "onnxruntime_ms" in row:
                line += f" vs onnxruntime {row['onnxruntime_ms']:.2f} ms"
        print(line)
    return 0


def _generate(args) -> int:
    from edgefold.targets.tvm.llm.generate import Sampling, generate_text

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    result = generate_text(args.artifact, args.prompt, args.max_new_tokens, sampling=sampling,
                           on_text=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    print()
    speed = f", {result.tokens_per_s:.1f} tokens/s" if result.tokens_per_s else ""
    prefill = f", prompt {result.prefill_ms:.0f} ms" if result.prefill_ms is not None else ""
    print(f"[{len(result.tokens)} tokens on {result.where}{speed}{prefill}; "
          f"{'greedy' if sampling.greedy else f'sampled (seed {sampling.seed})'}]", file=sys.stderr)
    return 0


def cmd_passes(args) -> int:
    """`edgefold passes`: list the available passes with their options. Returns 0."""
    from edgefold.passes.options import option_docs
    from edgefold.passes.registry import available_passes

    for name, cls in available_passes().items():
        print(f"{name}: {cls.summary}")
        for doc in option_docs(cls.Config):
            allowed = f"; allowed: {doc.allowed}" if doc.allowed else ""
            print(f"  {doc.name} ({doc.type}, default {doc.default}{allowed})")
            print(f"      {doc.description}")
        print()
    return 0


def cmd_targets(args) -> int:
    """`edgefold targets`: list the device profiles with their key figures, flagging invalid ones. Returns 0."""
    from edgefold.targets.profiles import available_profiles, load_profile_file, profile_figures

    for name, path in available_profiles().items():
        try:
            profile = load_profile_file(path)
        except EdgefoldError as exc:
            print(f"{name}: INVALID: {exc}")
            continue
        print(f"{name}: {profile.description}")
        print("  " + "; ".join(f"{key} {value}" for key, value in profile_figures(profile).items()))
    return 0


COMMANDS = {"export": cmd_export, "inspect": cmd_inspect, "compress": cmd_compress, "build": cmd_build,
            "check": cmd_check, "profile": cmd_profile, "search": cmd_search,
            "eval": cmd_eval, "simulate": cmd_simulate, "passes": cmd_passes, "targets": cmd_targets,
            "compile": cmd_compile, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    """Run the `edgefold` command line; returns the exit code: 0 ok, 1 a gate failed, 2 bad input,
    3 internal error, 130/143 interrupted by Ctrl-C/SIGTERM."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad argument (2, one line already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    with _signals_unwind():
        try:
            from edgefold.atomic import clean_cache_leftovers

            clean_cache_leftovers()  # what killed runs left behind
            return COMMANDS[args.command](args)
        except EdgefoldError as exc:
            print(f"edgefold: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return _interrupted(signal.SIGINT)
        except BrokenPipeError:  # `edgefold passes | head`: the reader left, not a bug
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Terminated:
            return _interrupted(signal.SIGTERM)
        except Exception:
            if _RECEIVED:  # the signal surfaced as another error type through native code (TVM's FFI)
                return _interrupted(_RECEIVED[0])
            # a bug, not bad input: show where, exit 3 (CI tells it from a gate)
            traceback.print_exc()
            print("edgefold: internal error (a bug in edgefold; the traceback above says where)", file=sys.stderr)
            return EXIT_INTERNAL_ERROR


_RECEIVED: list[int] = []  # signals received during this command


def _interrupted(signum: int) -> int:
    word = "terminated" if signum == signal.SIGTERM else "interrupted"
    print(f"edgefold: {word}; nothing partial was left", file=sys.stderr)
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


@contextlib.contextmanager
def _signals_unwind():
    """SIGINT and SIGTERM unwind the stack (every staging and scratch folder is removed on the
    way out); a second signal while unwinding removes them at once and exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from edgefold import interrupts

    received = _RECEIVED
    received.clear()
    interrupts.reset()

    def handler(signum, frame):
        received.append(signum)
        if len(received) > 1:  # impatient: clean up now and leave
            from edgefold.atomic import remove_active

            remove_active()
            print("edgefold: interrupted again; cleaned up and stopped", file=sys.stderr)
            os._exit(EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED)
        if interrupts.defer_now():  # inside a callback from native code: raise when it returns
            interrupts.record(signum)
            return
        raise interrupts.exception_for(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())
