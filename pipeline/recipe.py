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
    max_latency_ms = { onnxruntime = 80, tvm = 60 }   # also estimate, rpc://TRACKER:PORT/KEY
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pydantic

from edgefold.errors import EdgefoldError
from edgefold.gates import Gates

# The default build's compression, chosen from bench/results/quantize.json: mixed-precision
# weights at 4.5 bits on average (int4 blocks of 32/64/128 with 8-bit scales, formats chosen per
# weight by a sensitivity measured on 32 Lee background documents): SmolLM2-135M 538.7 MB ->
# 77.1 MB at perplexity 23.12 vs 22.81 (+1.4%); data-free the same budget gives 24.61 (+7.9%).
# Every format it picks has hand-written decode kernels (targets/tvm/kernels).
DEFAULT_PASSES = [{"name": "quantize", "avg_bits": 4.5, "sensitivity": "calibration"}]


class PassEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EvalSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    tokens: int = pydantic.Field(default=8192, ge=32)
    every_pass: bool = True


class CompileSettings(pydantic.BaseModel):
    """The TVM compile at the end of a build (edgefold.targets.tvm)."""
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    # Tuning trials per shape. 0 (untuned) keeps the default build to minutes on a
    # 2-core machine; the profile's `tuning_trials` is the budget for a real deployment.
    trials: int = pydantic.Field(default=0, ge=0)
    # Sequence lengths of text models. Default: LMs decode (1) and a 128-token prefill when the
    # hand-scheduled LLM path takes the model (decode only on the generic path), encoders 128.
    seqs: list[int] | None = None
    kv_cache: int = pydantic.Field(default=256, ge=0)  # LM decode: KV-cache slots (0: no cache)


class ValidationSettings(pydantic.BaseModel):
    """How the runner checks each pass's output against the original model."""
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    # A pass whose output cosine (vs the original model's outputs on the reference inputs)
    # falls below this fails the build with exit 2: a collapsed model is never written.
    min_cosine: float = pydantic.Field(default=0.5, ge=-1.0, le=1.0)


class SearchSpace(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    grid: dict[str, list[Any]]
    cost: str = pydantic.Field(default="latency_ms", pattern="^(latency_ms|file_mb)$")

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
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    model: str | None = None  # None: the embedded default model
    profile: str = "host"
    output: str | None = None  # None: dist/<model>-<profile>
    seed: int = 0
    passes: list[PassEntry] = pydantic.Field(default_factory=lambda: [PassEntry(**p) for p in DEFAULT_PASSES])
    eval: EvalSettings = EvalSettings()
    gates: Gates = Gates()
    compile: CompileSettings = CompileSettings()
    validation: ValidationSettings = ValidationSettings()
    search: SearchSpace | None = None  # only `edgefold search` reads it


def load_recipe(path: Path) -> tuple[Recipe, Path]:
    """Parse and validate; returns the recipe and the folder its relative paths start from."""
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
    return validated_recipe(data, f"recipe {path}"), path.resolve().parent


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
