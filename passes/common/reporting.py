"""What a pass did, against what it was asked: never a silent no-op or a silent collapse.

A pass that removes nothing, or whose ratio rounds to a different removal (widths kept
on a multiple of 8 turn "0.3 of 16 channels" into 8 channels removed, i.e. 0.5), says so
twice: in its stats (they go to manifest.json) and as a warning line in the log.
"""

from __future__ import annotations

from typing import Any

from edgefold import progress

# Achieved and requested ratios further apart than this are worth a warning: rounding a
# few thousand channels to multiples of 8 moves the ratio by far less.
ROUNDING_TOLERANCE = 0.02


def nothing_removed(stats: dict[str, Any], pass_name: str, why: str) -> dict[str, Any]:
    """Mark `stats` as a no-op (`removed: 0` and a note) and warn."""
    stats["removed"] = 0
    stats["note"] = why
    progress.info(f"warning: {pass_name} removed nothing: {why}")
    return stats


def warn_if_rounded(pass_name: str, requested: float, achieved: float, what: str,
                    why: str = "widths are rounded to whole channels and to the channel multiple") -> bool:
    """Warn when rounding moved the achieved ratio away from the requested one; True if it did.
    The caller keeps both numbers in its stats."""
    if abs(achieved - requested) <= ROUNDING_TOLERANCE:
        return False
    progress.info(f"warning: {pass_name}: asked to remove {requested:g} of {what}, removed {achieved:.3g} ({why})")
    return True
