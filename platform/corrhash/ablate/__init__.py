"""Cluster-wide ablations: the grid of cells (`grid`), one cell run in a Ray task (`cell`), and the driver
that schedules them and records each returned cell in MLflow (`driver`)."""
