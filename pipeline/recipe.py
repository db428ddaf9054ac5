"""The build recipe (TOML): which model, which profile, which passes, where to write.

    model = "smollm2-135m"          # built-in name, HF folder or .onnx (relative to this file)
    profile = "host"                 # profile name or .toml path
    output = "dist/smollm2-135m-host"
    seed = 0

    [[passes]]
    name = "cleanup"                 # every other key is the pass's option

    [eval]
    tokens = 8192                    # LM perplexity tokens
    every_pass = true                # task metric after each pass, not only at the end

    [compile]                        # TVM compile into the same folder (enabled = false to skip)
    trials = 0                       # tuning trials per shape (0: untuned)

    [gates]                          # optional budgets; a failing gate exits 1
    max_artifact_mb = 200
    max_perplexity_increase = 0.05   # relative to the original model
    max_latency_ms = { onnxruntime = 80, host = 60 }  # also estimate, rpc://TRACKER:PORT/KEY (tvm = host)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pydantic

from edgefold.errors import EdgefoldError
from edgefold.gates import Gates
from edgefold.targets.profiles import DeviceProfile, load_profile

# The default build's compression, chosen from bench/results/quantize.json: mixed-precision
# weights at 4.5 bits on average (int4 blocks of 32/64/128 with 8-bit scales, formats chosen per
# weight by a sensitivity measured on 32 Lee background documents): SmolLM2-135M 538.7 MB ->
# 77.1 MB at perplexity 23.12 vs 22.81 (+1.4%); data-free the same budget gives 24.61 (+7.9%).
# Every format it picks has hand-written decode kernels (targets/tvm/kernels).
DEFAULT_PASSES = [{"name": "quantize", "avg_bits": 4.5, "sensitivity": "calibration"}]


class PassEntry(pydantic.BaseModel):
    """One `[[passes]]` entry of a recipe: the pass name plus its options as extra keys."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        """The pass's options: every key of the entry except `name`."""
        return dict(self.model_extra or {})


class EvalSettings(pydantic.BaseModel):
    """Recipe `[eval]`: whether to measure the task metric, on how many LM tokens, and after every pass."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    enabled: bool = pydantic.Field(True, description="measure the task metric before and after the passes")
    tokens: int = pydantic.Field(default=8192, ge=32, description="perplexity tokens for language models")
    every_pass: bool = pydantic.Field(True, description="also measure the task metric after every pass")


class CompileSettings(pydantic.BaseModel):
    """Recipe `[compile]`: the TVM compile at the end of a build (edgefold.targets.tvm)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    enabled: bool = pydantic.Field(True, description="compile the compressed model for the profile's device")
    # 0 (untuned) keeps the default build to minutes on a 2-core machine; the profile's
    # `tuning_trials` is the budget for a real deployment.
    trials: int = pydantic.Field(default=0, ge=0, description="MetaSchedule tuning trials per shape (0: untuned)")
    # Default: LMs decode (1) and a 128-token prefill when the hand-scheduled LLM path takes the
    # model (decode only on the generic path), encoders 128.
    seqs: list[int] | None = pydantic.Field(None, description="sequence lengths to compile for text models")
    kv_cache: int = pydantic.Field(default=256, ge=0, description="LM decode: KV-cache slots (0: decode without a cache)")


class ValidationSettings(pydantic.BaseModel):
    """Recipe `[validation]`: how the runner checks each pass's output against the original model."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    # A collapsed model is never written: the build stops with exit 2 instead.
    min_cosine: float = pydantic.Field(default=0.5, ge=-1.0, le=1.0,
                                       description="least output cosine to the original model a pass may leave")


class SearchSpace(pydantic.BaseModel):
    """Recipe `[search]`: the values to try for each PASS.OPTION, and the cost to trade quality against."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    grid: dict[str, list[Any]] = pydantic.Field(description="PASS.OPTION -> the values to try")
    cost: str = pydantic.Field(default="latency_ms", pattern="^(latency_ms|file_mb)$",
                               description="what the Pareto front trades quality against: latency_ms or file_mb")

    @pydantic.field_validator("grid")
    @classmethod
    def _dotted(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if "." not in key:
                raise ValueError(f"{key!r}: expected PASS.OPTION")
            if not values:
                raise ValueError(f"{key!r}: no values to try")
        return grid


class Recipe(pydantic.BaseModel):
    """A build recipe: the model, device profile, passes, evaluation, compile and gates."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    model: str | None = pydantic.Field(
        None, description="built-in name, Hugging Face folder or .onnx file (default: the embedded SmolLM2)")
    profile: str = pydantic.Field("host", description="device profile name or .toml file (relative to the recipe)")
    output: str | None = pydantic.Field(None, description="output folder (default: dist/<model>-<profile>)")
    seed: int = pydantic.Field(0, description="seed for every random choice of the passes")
    passes: list[PassEntry] = pydantic.Field(default_factory=lambda: [PassEntry(**p) for p in DEFAULT_PASSES],
                                             description="`[[passes]]`: the passes in order, each NAME plus its options")
    eval: EvalSettings = pydantic.Field(EvalSettings(), description="`[eval]`: task-metric settings")
    gates: Gates = pydantic.Field(Gates(), description="`[gates]`: budgets that fail the build when missed")
    compile: CompileSettings = pydantic.Field(CompileSettings(), description="`[compile]`: the TVM compile")
    validation: ValidationSettings = pydantic.Field(ValidationSettings(), description="`[validation]`: per-pass checks")
    search: SearchSpace | None = pydantic.Field(None, description="`[search]`: only `edgefold search` reads it")
    # Set once by `located` (load_recipe, run_build): private, so not in the inputs hash or manifest.
    _base_dir: Path | None = pydantic.PrivateAttr(default=None)
    _device: DeviceProfile | None = pydantic.PrivateAttr(default=None)

    def located(self, base_dir: Path) -> Recipe:
        """This recipe with its relative paths starting at `base_dir` and its device profile loaded."""
        base_dir = Path(base_dir)
        if self._device is not None and self._base_dir == base_dir:
            return self
        recipe = self.model_copy()
        recipe._base_dir = base_dir
        recipe._device = load_profile(resolve_relative(self.profile, base_dir))
        return recipe

    @property
    def base_dir(self) -> Path | None:
        """The folder the recipe's relative paths start from (None until `located`)."""
        return self._base_dir

    @property
    def model_source(self) -> str | None:
        """What to export: the model path resolved against the recipe's folder, or a built-in name."""
        return resolve_relative(self.model, self._located_dir())

    @property
    def output_dir(self) -> Path | None:
        """The recipe's output folder resolved against the recipe's folder (None: the default)."""
        return self._located_dir() / self.output if self.output else None

    def _located_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("recipe paths are resolved by Recipe.located(base_dir) first")
        return self._base_dir

    @property
    def device(self) -> DeviceProfile:
        """The device profile the recipe names, a .toml path resolved from the recipe's folder."""
        if self._device is None:  # a recipe made in code and never located: paths start here
            located = self.located(Path.cwd())
            self._base_dir, self._device = located._base_dir, located._device
        return self._device


def load_recipe(path: Path) -> tuple[Recipe, Path]:
    """Parse and validate; returns the recipe (located: its relative paths start at the recipe's
    folder, its device profile loaded) and that folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgefoldError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise EdgefoldError(f"recipe {path} is a folder, not a .toml file") from None
    except UnicodeDecodeError:
        raise EdgefoldError(f"recipe {path} is not UTF-8 text") from None
    except OSError as exc:
        raise EdgefoldError(f"cannot read recipe {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgefoldError(f"recipe {path} is not valid TOML: {exc}") from None
    base_dir = path.resolve().parent
    return validated_recipe(data, f"recipe {path}").located(base_dir), base_dir


def validated_recipe(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """A Recipe from plain values; bad values are one-line errors (exit 2)."""
    try:
        return Recipe(**data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'recipe'}: {e['msg']}" for e in exc.errors())
        raise EdgefoldError(f"bad {where}: {problems}") from None


def resolve_relative(value: str | None, base: Path) -> str | None:
    """Recipe paths are relative to the recipe; built-in names stay names."""
    if value is None:
        return None
    candidate = base / value
    return str(candidate) if ("/" in value or value.endswith((".onnx", ".toml"))) and candidate.exists() else value
