"""The train/tune lifecycle: where a run executes and how it ends.

One run description (`spec.RunSpec`), one worker function for Ray Train workers and Tune trials
(`worker`), one ending (`finish`), and three launchers that differ only in how they start and
report: `local.run_local` (this process), `ray_train.train_on_ray`, `tune.run_tune`.
"""
