"""The `cleanup` pass (constant folding, dead nodes, dedup, CSE): everything is in `cleanup.py`."""

from edgefold.passes.cleanup.cleanup import CleanupConfig, CleanupPass, tidy_graph

__all__ = ["CleanupConfig", "CleanupPass", "tidy_graph"]
