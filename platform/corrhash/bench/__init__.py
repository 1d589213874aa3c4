"""Benchmarks: our epoch loop and Hamming search against a reference of the authors' mechanics."""
