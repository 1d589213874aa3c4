"""corrhash: correlated semantic hashing (CorrSH) training, tuning and search."""

__version__ = "0.1.0"
