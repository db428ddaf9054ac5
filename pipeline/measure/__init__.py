"""Latency targets: where a model's latency is measured, one name each for the CLI, recipes,
gates, search and reports.

    onnxruntime              model.onnx in onnxruntime on this machine
    host                     the compiled artifact in TVM's VM on this machine (recipes may say `tvm`)
    rpc://TRACKER:PORT/KEY   the compiled artifact on a device a TVM RPC tracker hands out
    estimate                 the device profile's roofline, calibrated on this machine

`parse_latency_target` is the one parser; `create(target)` gives the runner that measures a
target (as TVM MetaSchedule's `Runner.create(kind)` does), `measure` parses, creates and runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgefold.errors import EdgefoldError
from edgefold.targets.rpc_url import RpcAddress, parse_rpc_url

from edgefold.timing import DEFAULT_TOP

ALIASES = {"tvm": "host"}  # the compiled artifact's name in recipes written before `host`
AVAILABLE = "onnxruntime, host (in recipes also tvm), rpc://TRACKER:PORT/KEY, estimate"


@dataclass(frozen=True)
class LatencyTarget:
    """A parsed latency target. `spelling` is the text as written: gates and reports key on it,
    so a recipe's `tvm` stays `tvm` in its manifest and report."""

    kind: str  # a key of RUNNERS
    spelling: str
    rpc: RpcAddress | None = None

    @property
    def name(self) -> str:
        """The canonical name (`host` for `tvm`, the URL for a remote device)."""
        return self.rpc.url if self.rpc is not None else self.kind

    @property
    def needs_compile(self) -> bool:
        """Whether the target times the compiled TVM artifact rather than model.onnx."""
        return RUNNERS[self.kind].compiled

    def __str__(self) -> str:
        return self.spelling


def parse_latency_target(text: str, *, what: str = "latency target", where: str = "") -> LatencyTarget:
    """The target `text` names; anything else is a one-line EdgefoldError (`what`/`where` word it)."""
    if text.startswith("rpc://"):
        return LatencyTarget("rpc", text, parse_rpc_url(text))
    kind = ALIASES.get(text, text)
    if kind not in RUNNERS or kind == "rpc":
        raise EdgefoldError(f"unknown {what} {text!r}{where} (available: {AVAILABLE})")
    return LatencyTarget(kind, text)


@dataclass(frozen=True)
class LatencyResult:
    """One target's latency of a model: the figures of each timed shape, and the full result."""

    target: LatencyTarget
    shapes: dict[str, dict[str, Any]]  # shape label -> median_ms, p90_ms, min_ms, kernels, tokens_per_s, ...
    details: dict[str, Any]  # everything the runner reported, as `edgefold profile --json` prints it

    @property
    def first(self) -> dict[str, Any]:
        """The first timed shape (a decode step for LMs): what a latency gate compares."""
        return next(iter(self.shapes.values()))


class Runner:
    """Measures one latency target; `create` picks the subclass for the target's kind."""

    kinds: ClassVar[tuple[str, ...]] = ()  # the target kinds this runner measures
    compiled: ClassVar[bool] = False  # whether it times the compiled artifact (the build must compile)
    gate_repeats: ClassVar[int] = 10

    def __init__(self, target: LatencyTarget):
        self.target = target

    def measure(self, model_path: Path, *, device=None, repeats: int = 10, top: int = DEFAULT_TOP) -> LatencyResult:
        """Every timed shape of `model_path` (an artifact's model.onnx for compiled targets);
        `device` (a DeviceProfile or its name) is what `estimate` prices."""
        raise NotImplementedError

    def gate(self, model_path: Path, *, device=None, reference_inputs: dict[str, np.ndarray] | None = None,
             repeats: int | None = None) -> dict[str, Any]:
        """The figures a latency gate compares (`median_ms` and the rest of the first timed shape)."""
        return self.measure(model_path, device=device, repeats=repeats or self.gate_repeats).first

    def _result(self, details: dict[str, Any]) -> LatencyResult:
        return LatencyResult(self.target, details["shapes"], details)


class OnnxruntimeRunner(Runner):
    """model.onnx in onnxruntime on this machine."""

    kinds = ("onnxruntime",)

    def measure(self, model_path: Path, *, device=None, repeats: int = 10, top: int = DEFAULT_TOP) -> LatencyResult:
        """Every timed shape in onnxruntime, with onnxruntime's per-node profile."""
        from edgefold.measure.model_latency import onnxruntime_latency

        return self._result(onnxruntime_latency(model_path, repeats=repeats, top=top))

    def gate(self, model_path: Path, *, device=None, reference_inputs: dict[str, np.ndarray] | None = None,
             repeats: int | None = None) -> dict[str, Any]:
        """Median/p90/min of the build's reference inputs in onnxruntime."""
        from edgefold.timing import measure_onnxruntime

        # A gate times the build's reference inputs, profiler off; `measure` times every shape
        # with per-kernel times. Reports have always carried the former.
        return {"kind": "measured", **measure_onnxruntime(model_path, reference_inputs or {},
                                                          repeats=repeats or self.gate_repeats)}


class ArtifactRunner(Runner):
    """The compiled artifact in the folder of `model_path`, here (`host`) or on an RPC device."""

    kinds = ("host", "rpc")
    compiled = True

    def measure(self, model_path: Path, *, device=None, repeats: int = 10, top: int = DEFAULT_TOP) -> LatencyResult:
        """Every compiled shape of the artifact, per-kernel times on this machine only."""
        from edgefold.targets.tvm.latency import measure_artifact

        return self._result(measure_artifact(Path(model_path).parent, self.target.rpc, repeats=repeats, top=top))


class EstimateRunner(Runner):
    """The device profile's roofline, calibrated against onnxruntime on this machine."""

    kinds = ("estimate",)
    gate_repeats = 5

    def measure(self, model_path: Path, *, device=None, repeats: int = 10, top: int = DEFAULT_TOP) -> LatencyResult:
        """Every timed shape on `device` (default: host) by the calibrated roofline."""
        from edgefold.measure.model_latency import estimated_latency
        from edgefold.targets.profiles import load_profile

        if device is None or isinstance(device, str):
            device = load_profile(device or "host")
        return self._result(estimated_latency(model_path, device, repeats=repeats, top=top))


# The registry: a new latency target is one Runner subclass listed here.
RUNNERS: dict[str, type[Runner]] = {kind: cls for cls in (OnnxruntimeRunner, ArtifactRunner, EstimateRunner)
                                    for kind in cls.kinds}


def create(target: LatencyTarget | str) -> Runner:
    """The runner that measures `target` (a LatencyTarget or its text)."""
    if isinstance(target, str):
        target = parse_latency_target(target)
    return RUNNERS[target.kind](target)


def measure(target: LatencyTarget | str, model_path: Path, *, device=None, repeats: int = 10,
            top: int = DEFAULT_TOP) -> LatencyResult:
    """Latency of `model_path` (or of the artifact around it) on `target`, every timed shape."""
    return create(target).measure(Path(model_path), device=device, repeats=repeats, top=top)
