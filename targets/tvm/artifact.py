"""`edgefold compile`: a model -> `dist/<model>-<profile>/`, a folder a device can run.

    model.onnx (+ .data)      the (compressed) graph that was compiled
    lib/<bucket>.so           one library per static shape (+ .fatbin for CUDA with nvcc)
    weights.bin               packed weights every bucket's `main` takes (EFW1, weights.py)
    tuning/<bucket>/          the tuning records the libraries were built with
    runner/runner.cc, build.sh   the C++ runner; for aarch64 also runner/edgefold-runner
    runtime/lib/              (aarch64) libtvm_runtime.so + libtvm_ffi.so from the wheels
    manifest.json             sha256 of every file, source model hash, passes and their
                              configs, profile, tool versions, fidelity, sizes (deterministic)
    compile-report.json       timings and latencies (not deterministic, not hashed)

When the model comes from an `edgefold build`/`compress` folder, its manifest (passes,
recipe, metrics) is carried into this one; when that folder is also the output, the
build's other files (report.json, report.html, ...) are kept as they are.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import Any

from edgefold import onnx_io, progress
from edgefold.atomic import (MANIFEST_FILE, STAGING_MARKER, WRITTEN_BY, claim_output, output_directory,
                             read_own_manifest, scratch_directory)
from edgefold.errors import EdgefoldError
from edgefold.hashing import sha256_file, sha256_json
from edgefold.interrupts import native_calls
from edgefold.manifest import BuildManifest, write_json
from edgefold.safe_names import safe_name
from edgefold.targets.tvm import compiled_cache

REPORT_FILE = "compile-report.json"
_MODEL_FILES = ("model.onnx", "model.onnx.data")
BUILD_REPORTS = ("report.json", "report.html", "junit.xml")
_SIGNIFICANT = 4  # fidelity digits in the manifest: stable across runs of the same library


def resolve_model(model: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """(model.onnx path, the manifest of the build folder it came from, if any)."""
    from edgefold.export import model_file

    given = Path(model)
    if given.is_dir():  # compile takes a folder holding model.onnx (a build), not a model folder
        path = given / "model.onnx"
        if not path.exists():
            raise EdgefoldError(f"{model} has no model.onnx")
    else:
        path = model_file(model)
    from_folder = given.is_dir() or given.suffix == ".onnx"
    return path, read_own_manifest(path.parent) if from_folder else None


def compile_model(model: str | Path, profile: str = "host", *, output: Path | None = None,
                  seqs: list[int] | None = None, shapes: dict[str, tuple[int, ...]] | None = None,
                  trials: int | None = None, rpc: str | None = None, check: bool = True,
                  latency: bool = True, reuse: bool = True, kv_cache: int | None = None,
                  force: bool = False) -> dict[str, Any]:
    """Compile, tune (reusing the database), build and write the artifact; returns the manifest.

    `output` follows the output-folder rule (`edgefold.atomic.claim_output`); `force` also
    replaces edgefold's files in a folder that holds other files (those are kept).
    `reuse=False` ignores finished builds in the cache (the tuning database is still used).
    `kv_cache`: slots of a causal LM's decode KV cache (default 256; 0 = decode without a cache).
    `rpc`: rpc://TRACKER:PORT/KEY of the device that times tuning candidates.
    """
    from edgefold.targets.profiles import load_profile
    from edgefold.targets.rpc_url import parse_rpc_url

    address = parse_rpc_url(rpc) if rpc is not None else None  # a bad address fails before any work
    model_path, source_manifest = resolve_model(model)
    device = load_profile(profile)
    meta = _model_meta(model_path, source_manifest)
    out_dir = Path(output) if output else Path("dist") / f"{safe_name(meta['name'])}-{safe_name(device.name, 'profile')}"
    claim_output(out_dir, force=force)  # refuse a foreign folder before any work
    carried = _carried_files(model_path, out_dir)
    with output_directory(out_dir, force=force) as staging:
        with progress.step(f"copy {model_path.name} into the artifact"):
            _copy_model(model_path, staging)
        for name, data in carried.items():
            (staging / name).write_bytes(data)
        manifest = _compile(staging, source_manifest, device, meta, seqs=seqs, shapes=shapes, trials=trials,
                            rpc=address, check=check, latency=latency, reuse=reuse, kv_cache=kv_cache,
                            carried=set(carried), announce_as=out_dir)
    return manifest


def compile_into_folder(folder: Path, source_manifest: BuildManifest | None, device, *,
                        seqs: list[int] | None = None, trials: int | None = None, kv_cache: int | None = None,
                        announce_as: Path | None = None, baseline_model: Path | None = None) -> BuildManifest:
    """Compile `folder/model.onnx` for `device` (a DeviceProfile) into `folder` itself (a build's
    staging folder, which the build commits); returns the manifest with its `compile` section.

    The build's manifest comes in as an object, not as a file in `folder`: nothing is read back
    from disk, and the manifest.json written here is the folder's only one. `baseline_model`: the
    build's original model, which onnxruntime's timing runs."""
    meta = _model_meta(folder / "model.onnx", source_manifest)
    carried = {p.name for p in folder.iterdir()
               if p.is_file() and p.name not in (*_MODEL_FILES, MANIFEST_FILE, STAGING_MARKER)}
    return _compile(folder, source_manifest, device, meta, seqs=seqs, shapes=None, trials=trials, rpc=None,
                    check=True, latency=True, reuse=True, kv_cache=kv_cache, carried=carried,
                    announce_as=announce_as or folder, generic_prefill=seqs is not None,
                    baseline_model=baseline_model)


def _compile(staging: Path, source_manifest, device, meta: dict[str, Any], *, seqs, shapes, trials, rpc, check,
             latency, reuse, kv_cache, carried: set[str], announce_as: Path,
             generic_prefill: bool = True, baseline_model: Path | None = None) -> dict[str, Any]:
    """The compile proper, into `staging` (which already holds model.onnx). `generic_prefill`
    False: a causal LM the LLM path does not take compiles its decode library only."""
    from edgefold.targets.tvm.buckets import DEFAULT_KV_CACHE, plan_buckets
    from edgefold.targets.tvm.references import References
    from edgefold.targets.tvm.library import check_toolchain, library_kind
    from edgefold.targets.tvm.environment import load_tvm, target_family, tvm_target

    start = time.perf_counter()
    model_path = staging / "model.onnx"
    family = target_family(device.tvm_target)
    load_tvm(family)
    target = tvm_target(device.tvm_target)
    kind = library_kind(target)
    check_toolchain(device, kind)
    buckets = plan_buckets(model_path, meta["task"], seqs=seqs, shapes=shapes,
                           kv_cache=DEFAULT_KV_CACHE if kv_cache is None else kv_cache)
    budget = device.tuning_trials if trials is None else trials
    if budget < 0:
        raise EdgefoldError(f"--trials must be >= 0 (got {budget})")

    report: dict[str, Any] = {"schema": 1, "buckets": {}, "machine": {"platform": platform.platform()}}
    with scratch_directory("compile") as scratch:
        references = References(model_path, scratch)
        entries, weight_files = [], {}
        model_digest = compiled_cache.model_hash(onnx_io.model_files(model_path))
        llm = None
        if not shapes and meta["task"] == "causal-lm":
            llm = _compile_llm(model_path, meta, device, target, kind, buckets, staging, references, check, latency,
                               reuse, model_digest, budget, baseline_model)
        if llm is not None:
            entries = llm.entries
            report["buckets"] = llm.timings
            report["path"] = "llm"
            buckets = []
        elif not generic_prefill:
            buckets = [b for b in buckets if b.label == "decode"] or buckets
        for bucket in buckets:
            key = _bucket_key(model_digest, bucket, device, target, budget, check)
            hit = compiled_cache.load(key) if reuse else None
            if hit is not None:
                entry, folder = hit
                compiled_cache.restore(folder, entry, staging)
                entry = {k: v for k, v in entry.items() if not k.startswith("_")}
                weight_files.setdefault(entry["weights_sha256"], entry["weights"])
                timing = {"reused_build": str(folder)}
                progress.info(f"    {bucket.label}: inputs, tuning records and code unchanged: "
                              f"reused the finished build ({folder})")
            else:
                entry, timing = _compile_bucket(bucket, references, device, target, kind, family, budget, rpc,
                                                scratch, staging, weight_files, model_digest)
                if check and kind == "x86_64":
                    entry["fidelity"], _ = _check_host(staging, entry, meta, references)
                files = {name: staging / name for name in (entry["library"], *entry["extra"], entry["weights"])}
                if (staging / "tuning" / bucket.label).exists():
                    files[f"tuning/{bucket.label}"] = staging / "tuning" / bucket.label
                compiled_cache.store(key, entry, files)
            if check and latency and kind == "x86_64":
                timing["latency"] = _measure_latency(staging, entry, meta, references)
            entries.append(entry)
            report["buckets"][bucket.label] = timing
        runner = _write_runner(staging, kind, device)
        manifest = _manifest(meta, source_manifest, device, target, kind, entries, runner, staging,
                             exclude=set(carried) | {MANIFEST_FILE, REPORT_FILE}, budget=budget)
        write_json(staging / MANIFEST_FILE, manifest)
        report["seconds_total"] = round(time.perf_counter() - start, 2)
        write_json(staging / REPORT_FILE, report)
    _print_summary(announce_as, manifest, report)  # a build names its final folder, not its staging
    return manifest


def _compile_llm(model_path, meta, device, target, kind, buckets, staging, references, check, latency, reuse,
                 model_digest, budget: int, baseline_model: Path | None = None):
    """The hand-scheduled LLM libraries (`llm.compile`), or None when the model is not such a decoder."""
    from edgefold.versions import compile_versions
    from edgefold.targets.tvm.llm.tuning import SELECTION_FILE
    from edgefold.targets.tvm.tuning import TuningDatabase

    from edgefold.targets.tvm.llm.compile import compile_llm

    kv = max((b.kv_cache for b in buckets), default=0)
    seqs = sorted(1 if b.label == "decode" else int(b.shapes["input_ids"][1]) for b in buckets)
    database = TuningDatabase.for_bucket(device.name, str(target), f"llm-{model_digest[:12]}")
    key = compiled_cache.build_key(model=model_digest, bucket={"llm": seqs, "kv_cache": kv, "check": check},
                                profile=device.model_dump(mode="json"), target=str(target), budget=budget,
                                records=database.folder / SELECTION_FILE, versions=compile_versions())
    return compile_llm(model_path, meta, device, target, kind, seqs, kv, staging, references, check=check,
                       latency=latency, reuse=reuse, cache_key=key, budget=budget, database=database,
                       baseline_model=baseline_model)


# ---------------------------------------------------------------- one bucket


def _compile_bucket(bucket, references, device, target, kind, family, budget, rpc, scratch, staging,
                    weight_files, model_digest: str) -> tuple[dict, dict]:
    from edgefold.targets.tvm import lowering
    from edgefold.targets.tvm.library import compile_executable, export, transform_weights
    from edgefold.targets.tvm.importer import import_bucket
    from edgefold.targets.tvm.tuning import Measurement, TuningDatabase, export_records, tune
    from edgefold.targets.tvm.buckets import decode_bucket
    from edgefold.targets.tvm.weights import write_weights

    timing: dict[str, Any] = {}
    label = bucket.label
    notes: list[str] = []
    model_path = references.graph_for(bucket.kv_cache)
    if bucket.kv_cache:
        bucket = decode_bucket(model_path, bucket.kv_cache)
    with progress.step(f"import {label} ({bucket.describe()})"), native_calls():
        t = time.perf_counter()
        try:
            imported = import_bucket(model_path, bucket, scratch)
        except EdgefoldError as error:
            if not bucket.kv_cache:
                raise
            raise EdgefoldError(f"{error} (with --kv-cache 0 decode compiles without a KV cache)") from None
        prepared = lowering.prepare(imported.mod)
        weights = transform_weights(lowering.only(prepared, "main_transform_params"), imported.weights)
        del imported.weights
        device_mod, weights, names = lowering.bind_small_weights(lowering.only(prepared, "main"), weights,
                                                                 source_names=set(imported.weight_names))
        device_mod = lowering.finish(device_mod, target)
        timing["import_s"] = round(time.perf_counter() - t, 2)

    database = TuningDatabase.for_bucket(device.name, str(target), _database_label(label, model_digest))
    measurement = Measurement(rpc=rpc, family=family)
    cross = device.cross_compiler if kind == "aarch64" else None
    with progress.step(f"tune {label}"):
        outcome = tune(device_mod, target, database, budget, measurement, cross, label)
    if outcome.skipped:
        progress.info(f"    not tuned: {outcome.skipped}")
    elif outcome.tuned == 0:
        progress.info(f"    reused tuning records of all {outcome.tasks} kernels ({database.folder})")
    timing["tuning"] = {k: v for k, v in outcome.__dict__.items() if k != "database"}

    notes += [f"not tuned: {outcome.skipped}"] if outcome.skipped else []
    schedules = database
    if not _has_records(database) and outcome.skipped.startswith("no device") and kind == "aarch64":
        host = _host_database(_database_label(label, model_digest))
        if host is not None and _has_records(host):
            schedules = host
            notes.append("CPU schedules transferred from this machine's host tuning database "
                         f"({host.folder.name}/{label}); not measured on the device")
            progress.info(f"    {notes[-1]}")
    with progress.step(f"build {label} for {device.name} ({kind})"), native_calls():
        t = time.perf_counter()
        has_records = _has_records(schedules)
        executable = compile_executable(device_mod, target, schedules.open() if has_records else None)
        library = export(executable, target, device, staging / "lib" / f"{label}.so")
        records = export_records(schedules, device_mod, target, staging / "tuning" / label) if has_records else 0
        timing["build_s"] = round(time.perf_counter() - t, 2)

    weights_path = scratch / f"weights-{label}.bin"
    write_weights(weights_path, names, weights)
    digest = sha256_file(weights_path)
    if digest not in weight_files:  # buckets share one file when their weights are the same
        name = "weights.bin" if not weight_files else f"weights-{label}.bin"
        shutil.move(weights_path, staging / name)
        weight_files[digest] = name
    entry = {
        "label": label,
        "inputs": {n: {"shape": list(bucket.shapes[n]), "dtype": bucket.dtypes[n]} for n in bucket.shapes},
        "input_order": list(bucket.shapes),  # the library's argument order (the manifest sorts keys)
        "library": f"lib/{label}.so",
        "extra": [f"lib/{p.name}" for p in library.extra],
        "weights": weight_files[digest],
        "weights_sha256": digest,
        "weight_tensors": len(names),
        "kernels": outcome.tasks,
        "tuned_kernels": records,
        "lowbit_weights": dict(sorted(imported.collapsed.items())),
        "check_count": 8 if bucket.label == "decode" else 1,
        **({"kv_cache": bucket.kv_cache} if bucket.kv_cache else {}),
        "notes": library.notes + notes,
    }
    return entry, timing


def _has_records(database) -> bool:
    return database.record_path.exists() and database.record_path.stat().st_size > 0


def _database_label(label: str, model_digest: str) -> str:
    """One database per model and shape. Sharing one across models made MetaSchedule fail to
    open it: two kernels can hash alike yet name their blocks differently, and a record of
    one does not replay on the other's stored workload."""
    return f"{label}-{model_digest[:12]}"


def _host_database(label: str):
    """The `host` profile's database for this shape: schedules a CPU target can borrow."""
    from edgefold.targets.profiles import load_profile
    from edgefold.targets.tvm.environment import tvm_target
    from edgefold.targets.tvm.tuning import TuningDatabase

    try:
        host = load_profile("host")
    except EdgefoldError:
        return None
    return TuningDatabase.for_bucket(host.name, str(tvm_target(host.tvm_target)), label)


def bucket_of(entry: dict):
    """The Bucket (label, input shapes and dtypes, KV cache) a manifest entry was compiled for."""
    from edgefold.targets.tvm.buckets import Bucket

    order = entry.get("input_order") or list(entry["inputs"])
    return Bucket(entry["label"], {k: tuple(entry["inputs"][k]["shape"]) for k in order},
                  {k: entry["inputs"][k]["dtype"] for k in order}, int(entry.get("kv_cache", 0)))


def _check_host(staging: Path, entry: dict, meta: dict, references) -> tuple[dict, dict]:
    """Fidelity against onnxruntime with exact arithmetic (see execute.reference_session)."""
    from edgefold.targets.tvm.execute import HostLibrary, merge
    from edgefold.targets.tvm.references import compare_bucket

    bucket = bucket_of(entry)
    with progress.step(f"check {bucket.label} against onnxruntime"):
        pairs = references.check_sets(entry, meta, entry["check_count"])
        host = HostLibrary(staging / entry["library"], staging / entry["weights"], list(bucket.shapes))
        parts = [compare_bucket(entry, host(feeds), reference) for feeds, reference in pairs]
        fidelity = {k: float(f"{v:.{_SIGNIFICANT}g}") for k, v in merge(parts).items()}
    progress.info(f"    {bucket.label}: " + ", ".join(f"{k} {v:.4g}" for k, v in fidelity.items()))
    return fidelity, {}


def _measure_latency(staging: Path, entry: dict, meta: dict, references, repeats: int = 3) -> dict:
    """Median ms of the library beside onnxruntime (default optimizations) on the same input."""
    from edgefold.targets.tvm.execute import HostLibrary, onnxruntime_latency_ms

    bucket = bucket_of(entry)
    feeds = references.inputs(entry, meta)
    host = HostLibrary(staging / entry["library"], staging / entry["weights"], list(bucket.shapes))
    fast = references.session(int(entry.get("kv_cache", 0)), exact=False)
    return {"tvm_ms": round(host.latency_ms(feeds, repeats), 3),
            "onnxruntime_ms": round(onnxruntime_latency_ms(fast, feeds, repeats), 3)}


def _bucket_key(model_digest: str, bucket, device, target, budget: int, check: bool) -> str:
    from edgefold.versions import compile_versions
    from edgefold.targets.tvm.tuning import TuningDatabase

    database = TuningDatabase.for_bucket(device.name, str(target), _database_label(bucket.label, model_digest))
    host = _host_database(_database_label(bucket.label, model_digest))  # what an untunable CPU target may borrow
    borrowed = compiled_cache.file_digest(host.record_path) if host is not None else "none"
    return compiled_cache.build_key(model=model_digest, bucket={**bucket.to_json(), "check": check, "host": borrowed},
                                 profile=device.model_dump(mode="json"), target=str(target), budget=budget,
                                 records=database.record_path, versions=compile_versions())


# ---------------------------------------------------------------- runner, manifest


def _write_runner(staging: Path, kind: str, device) -> dict[str, Any]:
    """Runner source always; for aarch64 also the binary and the runtime it links against."""
    from edgefold.targets.tvm.cpp_runner import BUILD_SCRIPT, RUNNER_SOURCE

    folder = staging / "runner"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(RUNNER_SOURCE, folder / "runner.cc")
    (folder / "build.sh").write_text(BUILD_SCRIPT)
    info: dict[str, Any] = {"source": "runner/runner.cc"}
    if kind != "aarch64":
        return info
    from edgefold.targets.tvm import aarch64_runtime
    from edgefold.targets.tvm.cpp_runner import build_aarch64_runner

    try:
        runtime = aarch64_runtime.fetch_runtime()
    except EdgefoldError as exc:
        progress.info(f"    no aarch64 runner binary: {exc}")
        info["note"] = str(exc)
        return info
    with progress.step("build the aarch64 runner"):
        (staging / "runtime" / "lib").mkdir(parents=True, exist_ok=True)
        for library in sorted((runtime / "lib").glob("*.so")):
            shutil.copyfile(library, staging / "runtime" / "lib" / library.name)
        build_aarch64_runner(folder / "edgefold-runner", runtime, device.cross_compiler or "aarch64-linux-gnu-g++")
    info["binary"] = "runner/edgefold-runner"
    info["runtime"] = aarch64_runtime.versions()
    return info


def _copy_model(model_path: Path, folder: Path) -> None:
    """model.onnx (+ model.onnx.data) byte for byte; other names are re-saved under those names."""
    data = onnx_io.data_path_for(model_path)
    if model_path.name == "model.onnx":
        shutil.copyfile(model_path, folder / "model.onnx")
        if data.exists():
            shutil.copyfile(data, folder / data.name)
        return
    onnx_io.save(onnx_io.load(model_path), folder / "model.onnx")


def _model_meta(model_path: Path, source_manifest: dict | None) -> dict[str, Any]:
    meta = onnx_io.metadata(model_path)
    name = meta.get("edgefold.model") or model_path.stem
    if source_manifest and source_manifest.get("model", {}).get("name"):
        name = source_manifest["model"]["name"]
    return {"name": safe_name(name), "task": meta.get("edgefold.task", "generic"),
            "tokenizer": meta.get("edgefold.tokenizer"), "source_sha256": meta.get("edgefold.source_sha256")}


def _carried_files(model_path: Path, out_dir: Path) -> dict[str, bytes]:
    """A build's other files, kept when the artifact replaces the folder the model came from."""
    source = model_path.parent.resolve()
    if not out_dir.exists() or source != out_dir.resolve() or read_own_manifest(source) is None:
        return {}
    keep = {}
    for name in sorted(BUILD_REPORTS):  # the build's reports; anything else is not ours to copy
        path = source / name
        if path.is_file() and not path.is_symlink():
            keep[name] = path.read_bytes()
    return keep


def _file_hashes(folder: Path, exclude: set[str]) -> dict[str, str]:
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative not in exclude and path.name != STAGING_MARKER:
            hashes[relative] = sha256_file(path)
    return hashes


def _manifest(meta, source_manifest, device, target, kind, entries, runner, staging, *, exclude,
              budget) -> dict[str, Any]:
    from edgefold import __version__
    from edgefold.hashing import sha256_files
    from edgefold.versions import compile_versions

    files = _file_hashes(staging, exclude)
    sizes = {
        "onnx_bytes": sum((staging / f).stat().st_size for f in _MODEL_FILES if (staging / f).exists()),
        "library_bytes": sum(p.stat().st_size for p in (staging / "lib").iterdir()),
        "weights_bytes": sum((staging / w).stat().st_size for w in {e["weights"] for e in entries}),
    }
    sizes["deployable_bytes"] = sizes["library_bytes"] + sizes["weights_bytes"]
    compiled = {
        "model": {**meta, "onnx_sha256": sha256_files([staging / f for f in _MODEL_FILES if (staging / f).exists()])},
        "profile": {"name": device.name, "sha256": sha256_json(device.model_dump(mode="json")),
                    "tvm_target": device.tvm_target, "target": str(target)},
        "library_kind": kind,
        "tuning_budget": budget,
        "buckets": entries,
        "runner_source": runner["source"],
        "runner_binary": runner.get("binary"),
        "runner_runtime": runner.get("runtime"),
        "sizes": sizes,
        "carried_files": sorted(exclude - {MANIFEST_FILE, REPORT_FILE}),
    }
    base = dict(source_manifest or {})
    base.pop("files", None)
    if "model" not in base:
        base["model"] = {"name": meta["name"], "task": meta["task"], "source_sha256": meta["source_sha256"]}
    versions = {**base.get("versions", {}), **compile_versions(), "edgefold": __version__}
    return {**base, "written_by": WRITTEN_BY, "schema": base.get("schema", 1), "edgefold_version": __version__,
            "compile": compiled,
            "files": files, "versions": dict(sorted(versions.items()))}


def _print_summary(out_dir: Path, manifest: dict, report: dict) -> None:
    compiled = manifest["compile"]
    for entry in compiled["buckets"]:
        timing = report["buckets"].get(entry["label"], {})
        fidelity = entry.get("fidelity")
        parts = [f"{entry['label']}: {entry['tuned_kernels']}/{entry['kernels']} kernels tuned"]
        if fidelity:
            parts.append(f"max error {fidelity['max_abs_error']:.3g}")
            if "argmax_agreement" in fidelity:
                parts.append(f"argmax agreement {100 * fidelity['argmax_agreement']:.1f}%")
        latency = timing.get("latency") or {}
        if latency:
            parts.append(f"TVM {latency['tvm_ms']:.2f} ms vs onnxruntime {latency['onnxruntime_ms']:.2f} ms "
                         f"({latency.get('onnxruntime_model', 'compiled')} model)")
        print(", ".join(parts), flush=True)
    sizes = compiled["sizes"]
    progress.info(f"wrote {out_dir} ({compiled['library_kind']} library {sizes['library_bytes'] / 1e6:.2f} MB, "
                  f"weights {sizes['weights_bytes'] / 1e6:.1f} MB) in {report['seconds_total']:.1f}s")
