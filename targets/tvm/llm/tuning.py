"""Tuning that never loses: per GEMV kernel, the template or MetaSchedule's best, whichever is faster.

With a trial budget, each GEMV kernel of the decode step gets its share of the trials:
MetaSchedule tunes the kernel's unscheduled twin (`kernels.tunable`, one layer's offsets
frozen), the schedule it finds is replayed on the real kernel, and both are timed here on
the model's own weights. The faster one goes into the library. `selection.json` in the
tuning database records every decision (template ms, tuned ms, trials, winner), and a later
compile with the same database and budget reuses it without tuning again.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefold import progress
from edgefold.interrupts import native_calls

SELECTION_FILE = "selection.json"
TIMED_CALLS = 30


def _time_kernel(function, args: list, calls: int = TIMED_CALLS) -> float:
    for _ in range(5):
        function(*args)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def select_kernels(kernels: dict[str, tuple], blob: np.ndarray, target, budget: int, database) -> tuple[dict, dict]:
    """(replacements {name: PrimFunc} for kernels where tuning won, selection {name: record})."""
    from edgefold.targets.tvm.environment import load_tvm

    tvm = load_tvm("x86")  # MetaSchedule imports every tensor intrinsic unless told not to (a minute)
    from tvm.s_tir import meta_schedule as ms

    from edgefold.targets.tvm.candidate_builder import make_builder
    from edgefold.targets.tvm.kernels.gemv import OFFSET_SLOTS, build_gemv
    from edgefold.targets.tvm.kernels.tunable import unscheduled_gemv
    from edgefold.targets.tvm.tuning import Measurement, quiet_metaschedule

    per_kernel = max(1, budget // max(1, len(kernels)))
    path = Path(database.folder) / SELECTION_FILE
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    replacements, selection = {}, {}
    blob_tensor = tvm.runtime.tensor(blob)
    for index, (name, (spec, slots)) in enumerate(sorted(kernels.items()), start=1):
        record = stored.get(name)
        workdir = Path(database.folder) / name
        if record and record.get("trials_budget", 0) >= per_kernel:  # decided before with at least this budget
            if record["winner"] == "tuned":  # replay the stored schedule, no new trials
                twin = unscheduled_gemv(spec, frozen={**slots, "blob_size": blob.size})
                schedule = ms.tir_integration.compile_tir(ms.database.JSONDatabase(work_dir=str(workdir)),
                                                          tvm.IRModule({"main": twin}), target)
                real = tvm.s_tir.Schedule(tvm.IRModule({"main": unscheduled_gemv(spec)}))
                schedule.trace.apply_to_schedule(real, remove_postproc=False)
                replacements[name] = real.mod["main"].with_attr("global_symbol", name)
            selection[name] = record
            continue
        rng = np.random.default_rng(0)
        src = tvm.runtime.tensor(rng.standard_normal(spec.src_len).astype(np.float32))
        out = tvm.runtime.tensor(np.zeros(spec.out_len, np.float32))
        args = [src, blob_tensor] + [int(slots.get(slot, 0)) for slot in OFFSET_SLOTS] + [out]
        template = build_gemv(spec)
        template_ms = _time_kernel(tvm.compile(tvm.IRModule({name: template}), target=target)[name], args)
        twin = unscheduled_gemv(spec, frozen={**slots, "blob_size": blob.size})
        workdir.mkdir(parents=True, exist_ok=True)
        quiet_metaschedule()
        with native_calls():
            db = ms.tune_tir(tvm.IRModule({"main": twin}), target, str(workdir), max_trials_global=per_kernel,
                             num_trials_per_iter=min(per_kernel, 16), builder=make_builder(None, workdir),
                             runner=Measurement().runner(), cost_model="random", seed=0,
                             strategy=ms.search_strategy.EvolutionarySearch(population_size=64))
            schedule = ms.tir_integration.compile_tir(db, tvm.IRModule({"main": twin}), target)
        record = {"template_ms": round(template_ms, 4), "trials_budget": per_kernel, "winner": "template"}
        if schedule is not None:
            real = tvm.s_tir.Schedule(tvm.IRModule({"main": unscheduled_gemv(spec)}))
            try:
                schedule.trace.apply_to_schedule(real, remove_postproc=False)
                tuned = real.mod["main"].with_attr("global_symbol", name)
                tuned_ms = _time_kernel(tvm.compile(tvm.IRModule({name: tuned}), target=target)[name], args)
                record["tuned_ms"] = round(tuned_ms, 4)
                if tuned_ms < template_ms:
                    record["winner"] = "tuned"
                    replacements[name] = tuned
            except Exception as error:  # noqa: BLE001 - a schedule that does not replay loses
                record["tuned_error"] = str(error).splitlines()[0][:200]
        else:
            record["tuned_ms"] = None  # no valid candidate in the budget
        selection[name] = record
        shown = f"{record['tuned_ms']:.4f} ms" if record.get("tuned_ms") else "none"
        progress.info(f"    [{index}/{len(kernels)}] {name}: template {template_ms:.4f} ms, tuned {shown} "
                      f"-> {record['winner']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**stored, **selection}, indent=1, sort_keys=True) + "\n")
    return replacements, selection
