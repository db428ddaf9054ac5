"""Anchor rows for bench/compile.py: run each runtime script in .venv-bench, turn its JSON into Rows.

    from bench.anchors.rows import anchor_rows
    rows.extend(anchor_rows(args.repeats))        # inside bench/compile.py's machine_lock()

anchor_rows() never raises: a missing .venv-bench, package, model file, a crash or a timeout
gives a row with metric "skipped" and the reason in `reason`. It does not take the benchmark
lock itself (flock is per open file: taking it again inside compile.py's lock would wait
forever); run standalone, `python -m bench.anchors.rows` takes the lock:

    .venv/bin/python -m bench.anchors.rows [--repeats 10] [--out FILE] [--only llama.cpp ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.anchors import protocol  # noqa: E402
from bench.common import Row  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
MODEL = protocol.MODEL

# runtime name -> (script module, {config: row label})
RUNTIMES: dict[str, tuple[str, dict[str, str]]] = {
    "onnxruntime-genai": ("bench.anchors.run_ortgenai", {
        "int4-b32": "int4 b32", "int4-b128": "int4 b128", "int4-b32-acc1": "int4 b32 acc-level1", "fp32": "fp32"}),
    "openvino-genai": ("bench.anchors.run_openvino", {
        "int4-asym-g128": "int4 asym g128", "int8": "int8", "fp32": "fp32"}),
    "llama.cpp": ("bench.anchors.run_llamacpp", {
        "q4_0": "Q4_0", "q4_k_m": "Q4_K_M", "q8_0": "Q8_0", "f32": "F32"}),
}
# Keys of a runtime's record copied into both rows (the lists and tables only into the decode row).
SHARED = ("version", "config", "weights", "bits_per_weight", "file_mb", "threads", "batch", "runs", "first_tokens",
          "greedy_prefix_match", "greedy_agreement", "compared", "notes", "inference_precision", "kv_cache_precision",
          "llama_bpw", "other_cpu_share")
DECODE_ONLY = ("decode_p90_ms", "decode_steps", "tokens_per_s", "greedy_ids", "tensor_types", "graph", "ir",
               "pipeline_tpot_ms")
PREFILL_ONLY = ("prefill128_min_ms", "prefill_tokens_per_s", "pipeline_ttft_ms")


def timeout_for(repeats: int) -> int:
    """Seconds for one configuration: imports and model load plus (runs + 1) x (prefill + 32 steps)."""
    return 120 + 20 * (protocol.runs_for(repeats) + 1)


def skipped(runtime: str, label: str, reason: str) -> Row:
    return Row(MODEL, runtime, label, "skipped", 0.0, extra={"reason": reason[-2000:]})


def to_rows(runtime: str, label: str, record: dict) -> list[Row]:
    if "skipped" in record:
        return [skipped(runtime, label, record["skipped"])]
    shared = {k: record[k] for k in SHARED if k in record}
    common = dict(params=record.get("params"), file_bytes=record.get("file_bytes"))
    decode = Row(MODEL, runtime, f"{label} decode", "latency_ms", float(record["decode_ms"]), **common,
                 extra={**shared, **{k: record[k] for k in DECODE_ONLY if k in record},
                        "protocol": f"median of {record.get('decode_steps')} greedy steps at context "
                                    f"{protocol.PROMPT_TOKENS}..{protocol.PROMPT_TOKENS + protocol.DECODE_STEPS}"})
    prefill = Row(MODEL, runtime, f"{label} prefill128", "latency_ms", float(record["prefill128_ms"]), **common,
                  extra={**shared, **{k: record[k] for k in PREFILL_ONLY if k in record},
                         "protocol": f"median of {record.get('runs')} fresh prefills of {protocol.PROMPT_TOKENS} tokens"})
    return [decode, prefill]


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy CPU seconds, our children's CPU seconds, wall clock) — Linux /proc/stat."""
    import resource
    import time

    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime, time.monotonic()


def _other_cpu_share(before) -> float | None:
    """Share of the machine's CPU time that other processes used while a configuration ran:
    a process outside the benchmark lock skews the timings (llama.cpp's OpenMP spin barriers most)."""
    after = _cpu_snapshot()
    if before is None or after is None or after[2] <= before[2]:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(0.0, other) / ((after[2] - before[2]) * (os.cpu_count() or 1)), 3)


def run_config(runtime: str, config: str, repeats: int, timeout: int | None = None) -> dict:
    """One configuration in its own process (a crash in one does not hide the others)."""
    module = RUNTIMES[runtime][0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(protocol.THREADS),
           "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    timeout = timeout or timeout_for(repeats)
    cmd = [str(BENCH_PYTHON), "-m", module, "--repeats", str(repeats), "--config", config]
    before = _cpu_snapshot()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout} s"}
    except OSError as error:
        return {"skipped": f"could not start {BENCH_PYTHON}: {error}"}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("config") == config:
                return {**record, "other_cpu_share": _other_cpu_share(before)}
    if done.returncode < 0:
        import signal

        how = f"killed by {signal.Signals(-done.returncode).name}"
    else:
        how = f"exit {done.returncode}"
    return {"skipped": f"no result ({how}): {done.stderr.strip()[-1500:]}"}


def run_runtime(runtime: str, repeats: int) -> list[Row]:
    labels = RUNTIMES[runtime][1]
    if not BENCH_PYTHON.exists():
        return [skipped(runtime, label, f"{BENCH_PYTHON} is missing: run tools/setup-bench.sh") for label in labels.values()]
    rows: list[Row] = []
    for config, label in labels.items():
        record = run_config(runtime, config, repeats)
        try:
            rows.extend(to_rows(runtime, label, record))
        except (KeyError, TypeError, ValueError) as error:
            rows.append(skipped(runtime, label, f"bad record: {error!r}"))
    return rows


def anchor_rows(repeats: int, only: list[str] | None = None) -> list[Row]:
    """All anchor rows (decode and prefill128 per configuration). Never raises."""
    rows: list[Row] = []
    for runtime in RUNTIMES:
        if only and runtime not in only:
            continue
        try:
            rows.extend(run_runtime(runtime, repeats))
        except Exception as error:  # the contract: skipped rows, never an exception
            rows.extend(skipped(runtime, label, f"{type(error).__name__}: {error}")
                        for label in RUNTIMES[runtime][1].values())
    return rows


def wait_idle(limit_s: float, window_s: float = 10.0, threshold: float = 0.1) -> float | None:
    """Wait until a `window_s` window where the machine's busy share is below `threshold`
    (or `limit_s` passed); returns the last share seen."""
    import time

    deadline = time.monotonic() + limit_s
    share = None
    while True:
        before = _cpu_snapshot()
        time.sleep(window_s)
        share = _other_cpu_share(before)
        if share is None or share < threshold or time.monotonic() > deadline:
            print(f"[anchors] other processes' CPU share over {window_s:.0f} s: {share}", flush=True)
            return share


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.common import machine_lock, print_table

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", nargs="+", choices=list(RUNTIMES))
    parser.add_argument("--out", type=Path, default=protocol.anchor_dir() / "rows.json")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="MINUTES",
                        help="first wait (at most this long) until other processes use < 10%% of the CPUs")
    args = parser.parse_args(argv)
    with machine_lock():
        if args.wait_idle:
            wait_idle(args.wait_idle * 60)
        rows = anchor_rows(args.repeats, args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    print_table("SmolLM2-135M anchors (batch 1, 2 threads)", rows)
    for row in rows:
        if row.metric == "skipped":
            print(f"skipped: {row.method} {row.setting}: {row.extra['reason']}")
        elif row.setting.endswith("decode"):
            print(f"{row.method} {row.setting}: {row.extra.get('first_tokens')!r} "
                  f"(agreement with fp32 transformers {row.extra.get('greedy_agreement')}, "
                  f"prefix {row.extra.get('greedy_prefix_match')})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
