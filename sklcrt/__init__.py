"""sklcrt: calibrated conditional randomization tests for single-cell CRISPR screens."""

__version__ = "0.1.0"
