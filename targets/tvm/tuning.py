"""MetaSchedule tuning with one reusable JSON database per device profile and shape.

Databases live in `$EDGEFOLD_CACHE/tuning/<profile>-<target hash>/<bucket>/`. MetaSchedule
matches records by kernel structure, not by target, so a database is never shared
between targets; it is shared between models, which is how a compressed model reuses
the dense model's kernels that it still has.

Each kernel (task) is tuned on its own, one batch of candidates, and marked done in
`progress.json` only when its batch is measured; records are appended as they are
measured. An interrupted run therefore keeps every finished kernel, and the next run
tunes only what is left. A cut-off last line (killed mid-write) is dropped when the
database is opened. A compile whose kernels are all done runs no trials at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from edgefold import progress
from edgefold.atomic import cache_root, scratch_directory
from edgefold import interrupts
from edgefold.interrupts import native_calls
from edgefold.safe_names import safe_name
from edgefold.targets.rpc_url import RpcAddress

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
PROGRESS_FILE = "progress.json"


@dataclass
class TuningOutcome:
    """What a tuning run did: kernels found, tuned and reused, trials, time, database, per-kernel bests."""

    tasks: int  # kernels in the module
    tuned: int  # kernels tuned by this run
    reused: int  # kernels whose tuning was already done
    trials: int  # candidates measured by this run
    seconds: float
    database: str
    per_task: int = 0
    skipped: str = ""  # why nothing was tuned, when nothing could be
    kernels: list[dict] = field(default_factory=list)  # name, best ms, trials


class TuningDatabase:
    """One folder: MetaSchedule's two JSON files plus edgefold's progress file."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def for_bucket(cls, profile_name: str, target_text: str, label: str) -> "TuningDatabase":
        """The database of one profile, target and shape label, in the edgefold cache."""
        digest = hashlib.sha256(target_text.encode()).hexdigest()[:10]
        return cls(cache_root() / "tuning" / f"{safe_name(profile_name, 'profile')}-{digest}" / safe_name(label, 'shape'))

    @property
    def workload_path(self) -> Path:
        """Path of MetaSchedule's workload file."""
        return self.folder / WORKLOAD_FILE

    @property
    def record_path(self) -> Path:
        """Path of MetaSchedule's tuning record file."""
        return self.folder / RECORD_FILE

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One tuner per database at a time (a second compile waits)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def repair(self) -> int:
        """Drop lines that are not complete JSON (a write cut off by a kill); returns how many."""
        dropped = 0
        for path in (self.workload_path, self.record_path):
            if not path.exists():
                continue
            lines = path.read_text().splitlines()
            good = [line for line in lines if _is_json(line)]
            if len(good) != len(lines) or (lines and not path.read_text().endswith("\n")):
                dropped += len(lines) - len(good)
                _atomic_write(path, "".join(line + "\n" for line in good))
        return dropped

    def open(self):
        """The folder as a MetaSchedule JSONDatabase (created when missing)."""
        from tvm.s_tir import meta_schedule as ms

        self.folder.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(str(self.workload_path), str(self.record_path), allow_missing=True)

    def progress(self) -> dict[str, int]:
        """Trials already done per kernel key; {} when there is no readable progress file."""
        path = self.folder / PROGRESS_FILE
        if not path.exists():
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError):
            return {}  # unreadable progress only costs re-tuning

    def mark_done(self, key: str, trials: int) -> None:
        """Record that kernel `key` has been tuned with `trials` trials (the largest count is kept)."""
        done = self.progress()
        done[key] = max(trials, done.get(key, 0))
        _atomic_write(self.folder / PROGRESS_FILE, json.dumps(done, indent=1, sort_keys=True) + "\n")


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def task_key(task) -> str:
    """A kernel's identity across processes: its name and a hash of its TIR text."""
    text = task.dispatched[0].script() if task.dispatched else task.mod.script()
    return f"{task.task_name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def extract_tasks(mod, target) -> list:
    """MetaSchedule's tuning tasks (one per kernel) of a Relax module for `target`."""
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(mod, target))


@dataclass
class Measurement:
    """Where candidates are timed: this machine, or a device behind a TVM RPC tracker."""

    rpc: RpcAddress | None = None  # parsed once, where the rpc://TRACKER:PORT/KEY text comes in
    family: str = "x86"
    number: int = 3
    timeout_s: float = 60.0

    def can_measure(self) -> bool:
        """Whether candidates can be timed: on an RPC device, or on this machine for x86 targets."""
        return self.rpc is not None or self.family == "x86"

    def runner(self):
        """The MetaSchedule runner that times candidates here or on the RPC device."""
        from functools import partial

        from tvm.s_tir import meta_schedule as ms

        from edgefold.targets.tvm.candidate_builder import runner_worker_init

        # Cache flush between runs: decode kernels are memory-bound, and timing them with the
        # weights still in cache ranks schedules by the wrong cost.
        evaluator = ms.runner.EvaluatorConfig(number=self.number, repeat=1, min_repeat_ms=0,
                                              enable_cpu_cache_flush=self.rpc is None)
        if self.rpc is None:
            return ms.runner.LocalRunner(timeout_sec=self.timeout_s, evaluator_config=evaluator,
                                         initializer=partial(runner_worker_init, self.family))
        config = ms.runner.RPCConfig(tracker_host=self.rpc.host, tracker_port=self.rpc.port,
                                     tracker_key=self.rpc.key, session_timeout_sec=int(self.timeout_s))
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def tune(mod, target, database: TuningDatabase, trials: int, measurement: Measurement,
         cross_compiler: str | None = None, label: str = "") -> TuningOutcome:
    """Tune every kernel of `mod` that the database has not finished; `trials` is the total budget."""
    from tvm.s_tir import meta_schedule as ms

    from edgefold.targets.tvm.candidate_builder import make_builder

    start = time.perf_counter()
    tasks = extract_tasks(mod, target)
    per_task = max(1, trials // max(1, len(tasks))) if trials > 0 else 0
    outcome = TuningOutcome(tasks=len(tasks), tuned=0, reused=0, trials=0, seconds=0.0,
                            database=str(database.folder), per_task=per_task)
    if trials <= 0:
        outcome.skipped = "trial budget 0"
        return outcome
    if not measurement.can_measure():
        outcome.skipped = "no device to measure on (give --rpc rpc://TRACKER:PORT/KEY)"
        return outcome
    quiet_metaschedule()
    with database.lock(), contextlib.ExitStack() as stack:
        dropped = database.repair()
        if dropped:
            progress.info(f"    tuning database: dropped {dropped} incomplete line(s) left by an interrupted run")
        done = database.progress()
        pending = [t for t in tasks if done.get(task_key(t), 0) < per_task]
        outcome.reused = len(tasks) - len(pending)
        if not pending:
            outcome.seconds = round(time.perf_counter() - start, 2)
            return outcome
        db = database.open()
        candidates = stack.enter_context(scratch_directory("tune"))
        builder, runner = make_builder(cross_compiler, candidates), measurement.runner()
        progress.info(f"    tuning {len(pending)} of {len(tasks)} kernels{' for ' + label if label else ''}, "
                      f"{per_task} trial(s) each ({database.folder})")
        # MetaSchedule calls back into Python and checks for signals itself, catching what a
        # handler raises: signals are only recorded inside, and acted on between kernels.
        stack.enter_context(native_calls())
        for index, task in enumerate(pending, start=1):
            interrupts.check()
            before = len(db)
            quiet_metaschedule()  # each tune_tasks call re-reads the level for its console handler
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [task], work_dir=str(database.folder),
                strategy=ms.search_strategy.EvolutionarySearch(population_size=64), seed=0)
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(database.folder),
                max_trials_global=per_task, max_trials_per_task=per_task, num_trials_per_iter=per_task,
                builder=builder, runner=runner, database=db, cost_model="random",
                task_scheduler="round-robin")
            measured = len(db) - before
            best = _best_ms(db, task)
            database.mark_done(task_key(task), per_task)
            outcome.tuned += 1
            outcome.trials += measured
            outcome.kernels.append({"kernel": task.task_name, "trials": measured, "best_ms": best})
            shown = f"{best:.4f} ms" if best is not None else "no valid candidate"
            progress.info(f"    [{index}/{len(pending)}] {task.task_name}: {measured} trial(s), best {shown}")
    outcome.seconds = round(time.perf_counter() - start, 2)
    return outcome


def _best_ms(db, task) -> float | None:
    records = db.get_top_k(db.commit_workload(task.dispatched[0]), 1)
    if not records or not records[0].run_secs:
        return None
    secs = [float(s) for s in records[0].run_secs]
    return round(1e3 * sum(secs) / len(secs), 5)


def quiet_metaschedule() -> None:
    """Console at WARNING (its per-task tables go to the database's logs/ folder only).

    Each tune_tasks call configures logging again from the logger's current handlers;
    dropping them first keeps handlers (and open log files) from piling up, and avoids
    unnamed handlers (e.g. a test runner's) that its configuration cannot name.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.WARNING)


def export_records(database: TuningDatabase, mod, target, destination: Path) -> int:
    """Write the best record of each of `mod`'s kernels to a fresh database (for the artifact)."""
    from tvm.s_tir import meta_schedule as ms

    if not database.record_path.exists():
        return 0
    source = database.open()
    destination.mkdir(parents=True, exist_ok=True)
    out = ms.database.JSONDatabase(str(destination / WORKLOAD_FILE), str(destination / RECORD_FILE),
                                   allow_missing=True)
    count = 0
    for task in extract_tasks(mod, target):
        workload_mod = task.dispatched[0]
        if not source.has_workload(workload_mod):
            continue
        records = source.get_top_k(source.commit_workload(workload_mod), 1)
        if not records:
            continue
        best = records[0]
        out.commit_tuning_record(ms.database.TuningRecord(
            best.trace, out.commit_workload(workload_mod), best.run_secs, best.target, best.args_info))
        count += 1
    return count
