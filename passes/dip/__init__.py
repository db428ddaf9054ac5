"""The `dip` pass (dynamic input pruning of MLPs): everything is in `dip.py`."""

from edgefold.passes.dip.dip import DipConfig, DipPass, keep_count

__all__ = ["DipConfig", "DipPass", "keep_count"]
