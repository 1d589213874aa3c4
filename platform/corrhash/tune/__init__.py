"""Hyper-parameter search: the search space, the trial (the shared epoch loop), the champion."""
