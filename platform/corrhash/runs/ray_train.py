"""The Ray Train launcher: `worker.train_loop` on N workers (DDP), recorded in MLflow by the driver.

Embedded by default (a local Ray for the run, MLflow in ./mlflow.db); with an address or inside a
`ray job submit`, it uses that cluster. Every epoch is a checkpoint; a lost worker restarts the group
from the last one (`FailureConfig`), and running the same name again resumes from storage and reuses
the MLflow run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal
from pathlib import Path

import torch

from corrhash.data import TfidfShards
from corrhash.errors import ConfigError
from corrhash.log import log, logger
from corrhash.launch.connect import storage_path, user_error
from corrhash.launch.job import ClusterOptions, launch_job
from corrhash.launch.preflight import check_job_name, check_out_dir
from corrhash.runs.callbacks import EpochMetrics
from corrhash.runs.finish import Selection, finish, run_folder
from corrhash.runs.spec import RunSpec
from corrhash.runs.worker import train_loop
from corrhash.tracking.runs import backfill_epochs, log_data, publish_model


@dataclass
class RayConfig:
    num_workers: int = 1
    """Ray Train workers; each reads its share of the train shard files."""
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    """'auto' (GPU workers when the cluster has GPUs), 'yes' or 'no'."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractions let several workers share a small machine)."""
    max_failures: int = 2
    """Times the worker group is restarted from the last checkpoint after a worker is lost."""
    storage: str = "runs/ray"
    """Where Ray Train keeps checkpoints (a folder or URI; made absolute)."""
    name: str | None = None
    """Job name; running the same name again resumes that run. Default: dataset-model-bits-time."""
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    """Ray cluster and MLflow"""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"--num-workers {self.num_workers}: must be >= 1")
        if self.use_gpu not in ("auto", "yes", "no"):
            raise ConfigError(f"--use-gpu {self.use_gpu!r}: use auto, yes or no")
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0):  # NaN fails `> 0`
            raise ConfigError(f"--cpus-per-worker {self.cpus_per_worker}: must be a finite number > 0")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures {self.max_failures}: must be >= 0")


def train_on_ray(spec: RunSpec, ray_config: RayConfig, out: Path | None = None, score_test: bool = True) -> dict:
    started = time.monotonic()
    shards = TfidfShards(spec.data)
    files = len(shards.shard_paths("train"))
    if files < ray_config.num_workers:
        raise ConfigError(f"--num-workers {ray_config.num_workers}: {spec.data} has {files} train shard file(s), "
                          "one at least per worker; prepare with a smaller --rows-per-shard")
    name = check_job_name(ray_config.name or f"{shards.manifest['dataset']}-{spec.model.name}-{spec.model.bits}b-"
                                             f"{time.strftime('%Y%m%d-%H%M%S')}")
    if out:
        check_out_dir(out)
    params = {"model": spec.model.to_dict(), "train": spec.train.to_dict(), "data": spec.data,
              # Options left unset (None: the address and tracking URI came from the environment) are not params.
              "ray": {k: v for k, v in {**asdict(ray_config), **asdict(ray_config.cluster)}.items()
                      if k != "cluster" and v is not None}}
    tags = {"dataset": shards.manifest["dataset"], "data.content_hash": shards.content_hash,
            "data.path": spec.data, "model": spec.model.name, "bits": str(spec.model.bits)}
    storage = storage_path(ray_config.storage)
    with launch_job(ray_config.cluster, name, storage=ray_config.storage, lock_root=storage, params=params, tags=tags,
                    data={"--data": spec.data}, folders={"--storage": storage},
                    fits=lambda: [(f"--cpus-per-worker {ray_config.cpus_per_worker}", ray_config.cpus_per_worker,
                                   int(_use_gpu(spec, ray_config)))]) as job:
        use_gpu, client, uri, run_id = _use_gpu(spec, ray_config), job.client, job.uri, job.run_id
        log(f"job {name}: MLflow run {run_id} at {uri}{' (resumed)' if job.resumed else ''}; "
            f"{ray_config.num_workers} {'GPU' if use_gpu else 'CPU'} worker(s)")
        log_data(client, run_id, shards)
        with run_folder(out) as folder:
            fit_started = time.monotonic()
            result = _fit(spec, ray_config, name, use_gpu, EpochMetrics(uri, run_id))
            with result.checkpoint.as_directory() as directory:
                selection = Selection.from_checkpoint(Path(directory), spec, shards.n_features)
            missed = backfill_epochs(client, run_id, selection.history)
            if missed:
                log(f"job {name}: recorded the metrics of epoch(s) {', '.join(map(str, missed))} that MLflow missed")
            results = finish(spec, shards, selection, folder, launcher="ray_train", started=started,
                             fit_seconds=time.monotonic() - fit_started, device=torch.device("cpu"),
                             score_test=score_test, job=name, run_id=run_id,
                             publish=lambda model_dir, results: publish_model(
                                 client, uri, run_id, model_dir, results))
    log(f"job {name}: best epoch {results['best_epoch']}, val p@{spec.train.eval_k} {results['val_precision']:.4f}"
        + (f", test {results['test_precision']:.4f}" if score_test else "") + f"; model {results['model_uri']}")
    return results


def _use_gpu(spec: RunSpec, ray_config: RayConfig) -> bool:
    """--use-gpu auto follows --device: cpu or cuda as asked, else GPU workers when the cluster has GPUs."""
    import ray

    device = spec.train.device
    auto = device.startswith("cuda") or device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    return {"yes": True, "no": False}.get(ray_config.use_gpu, auto)


def _fit(spec: RunSpec, ray_config: RayConfig, name: str, use_gpu: bool, callback: EpochMetrics):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": ray_config.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    spec = RunSpec(spec.data, spec.model, spec.train, threads=max(1, int(ray_config.cpus_per_worker)))
    trainer = TorchTrainer(
        train_loop, train_loop_config=spec.to_dict(),
        scaling_config=ScalingConfig(num_workers=ray_config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path(ray_config.storage), callbacks=[callback],
                             failure_config=FailureConfig(max_failures=ray_config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # Ray Train's own lines at INFO (the worker group started, restarted after a lost
                             # worker), at DEBUG with --verbose. Its per-rank report and checkpoint dumps are
                             # quieted on the workers (session.quiet_train_reports).
                             logging_config=LoggingConfig(log_level="DEBUG" if logger.isEnabledFor(logging.DEBUG)
                                                          else "INFO")),
    )
    try:
        return trainer.fit()
    except Exception as exc:
        cause = user_error(exc)
        if cause is None:
            raise
        raise type(cause)(f"job {name}: a Ray Train worker failed: {cause}") from exc
