"""Serving: a trained model as text → packed binary codes."""

from corrhash.serve.hashing import HashingModel, load

__all__ = ["HashingModel", "load"]
