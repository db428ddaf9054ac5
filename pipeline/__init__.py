"""edgefold: a hardware-aware compile and export pipeline for neural networks."""

__version__ = "0.1.0"
