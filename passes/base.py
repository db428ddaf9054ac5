"""What a pass is: a named graph rewrite with a validated config.

A pass receives the model as an `onnx_ir.Model` plus a `PassContext` (analysis groups,
device profile, seed) and returns a `PassOutcome` (the rewritten model and a few
numbers worth keeping in the manifest). Validation (checker, onnxruntime, fidelity)
is the runner's job, not the pass's, so every pass is checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import onnx_ir as ir
import pydantic


class PassConfig(pydantic.BaseModel):
    """Base for pass configs: unknown keys are errors, values are type-checked.

    `RENAMED` maps an option's old spelling to its current name: the old one is an error that
    names the new one (one meaning, one name across passes). `PATH_OPTIONS` are files; a recipe
    resolves them from its own folder."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    RENAMED: ClassVar[dict[str, str]] = {}
    PATH_OPTIONS: ClassVar[tuple[str, ...]] = ()

    @pydantic.model_validator(mode="before")
    @classmethod
    def _renamed_options(cls, values):
        if isinstance(values, dict):
            for old, new in cls.RENAMED.items():
                if old in values:
                    raise ValueError(f"option {old!r} is now called {new!r}")
        return values

    def input_files(self) -> list[str]:
        """Files the pass reads besides the model: their content is part of a build's inputs,
        so editing one makes the next build run again instead of reusing the old artifact."""
        return []


@dataclass
class PassContext:
    """What a pass may look at besides the graph itself."""

    analysis: Any = None  # edgefold.analysis.Analysis of the incoming model
    profile: Any = None  # edgefold.targets.DeviceProfile, when the build has one
    seed: int = 0
    workdir: Path | None = None  # scratch space that disappears after the build
    model_path: Path | None = None  # the incoming model file (for passes that run it)


@dataclass
class PassOutcome:
    """What a pass returns: the rewritten model and the stats worth keeping in the manifest."""

    model: ir.Model
    stats: dict[str, Any] = field(default_factory=dict)  # pass-specific, JSON-serialisable


class GraphPass:
    """Subclass, set `name` and `Config`, implement `run`; register with @register_pass."""

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PassConfig | None = None):
        self.config = config if config is not None else self.Config()

    def run(self, model: ir.Model, context: PassContext) -> PassOutcome:  # pragma: no cover
        """Rewrite `model` as the config asks and return it with this pass's stats (each pass implements it)."""
        raise NotImplementedError
