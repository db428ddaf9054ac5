"""Compare two sets of outputs; decide whether an export is right."""

from __future__ import annotations

import numpy as np

from edgefold.errors import EdgefoldError

# An export is wrong when its error is large against the output's own scale; fp32
# reordering across 30 transformer layers stays far below this.
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4


def output_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs error, the reference's max magnitude, and the cosine of the flattened outputs."""
    max_err, scale, dots, norm_r, norm_c = 0.0, 0.0, 0.0, 0.0, 0.0
    for name, ref in reference.items():
        if name not in candidate:
            raise EdgefoldError(f"output {name!r} missing from the candidate model")
        ref64 = np.asarray(ref, dtype=np.float64)
        cand64 = np.asarray(candidate[name], dtype=np.float64)
        if ref64.shape != cand64.shape:
            raise EdgefoldError(f"output {name!r} has shape {cand64.shape}, expected {ref64.shape}")
        if not np.all(np.isfinite(cand64)):
            return {"max_abs_error": float("inf"), "max_abs_reference": float(np.abs(ref64).max()), "cosine": 0.0}
        max_err = max(max_err, float(np.abs(ref64 - cand64).max(initial=0.0)))
        scale = max(scale, float(np.abs(ref64).max(initial=0.0)))
        dots += float((ref64 * cand64).sum())
        norm_r += float((ref64**2).sum())
        norm_c += float((cand64**2).sum())
    cosine = dots / np.sqrt(norm_r * norm_c) if norm_r > 0 and norm_c > 0 else float(norm_r == norm_c)
    return {"max_abs_error": max_err, "max_abs_reference": scale, "cosine": float(cosine)}


def require_faithful(error: dict[str, float], what: str) -> None:
    """Raise if an export's error (from `output_error`) is too large for its output scale; `what` names the export."""
    limit = ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * error["max_abs_reference"]
    if not error["max_abs_error"] <= limit:
        raise EdgefoldError(
            f"{what}: onnxruntime output differs from torch by {error['max_abs_error']:.3g} "
            f"(limit {limit:.3g}); the exported graph is wrong"
        )
