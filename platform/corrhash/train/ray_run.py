"""A training job on Ray Train, recorded in MLflow: the driver side of `train_worker`.

Embedded by default (a local Ray for the run, MLflow in ./mlflow.db); with an address or inside a
`ray job submit`, it uses that cluster. The package travels to the workers as a runtime-env
`py_modules` entry, so the cluster needs only the third-party dependencies.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from corrhash.artifact import save_model
from corrhash.atomic import replace_dir
from corrhash.data import TfidfShards
from corrhash.errors import ConfigError, CorrhashError
from corrhash.log import log
from corrhash.models import ModelConfig
from corrhash.train.config import TrainConfig
from corrhash.train.checkpoint import best_model
from corrhash.train.distributed import train_worker
from corrhash.train.loop import Evaluator
from corrhash.train.preflight import (check_job_name, check_job_paths, check_out_dir, job_lock, new_run_dir,
                                      read_vocab, training_shards)

EXAMPLE_TEXTS = ["The shuttle launch was delayed by a fuel leak.", "Which graphics card works best under Linux?"]


@dataclass
class RayConfig:
    num_workers: int = 1
    """Ray Train workers; each reads its share of the train shard files."""
    use_gpu: str = "auto"
    """'auto' (GPU workers when the cluster has GPUs), 'yes' or 'no'."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractions let several workers share a small machine)."""
    max_failures: int = 2
    """Times the worker group is restarted from the last checkpoint after a worker is lost."""
    address: str | None = None
    """Ray cluster to use; default $RAY_ADDRESS (set inside `ray job submit`), else a local Ray."""
    storage: str = "runs/ray"
    """Where Ray Train keeps checkpoints (a folder or URI; made absolute)."""
    name: str | None = None
    """Job name; running the same name again resumes that run. Default: dataset-model-bits-time."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db."""
    experiment: str = "corrhash"
    """MLflow experiment name."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"--num-workers {self.num_workers}: must be >= 1")
        if self.use_gpu not in ("auto", "yes", "no"):
            raise ConfigError(f"--use-gpu {self.use_gpu!r}: use auto, yes or no")
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0):  # NaN fails `> 0`
            raise ConfigError(f"--cpus-per-worker {self.cpus_per_worker}: must be a finite number > 0")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures {self.max_failures}: must be >= 0")


def init_ray(address: str | None) -> None:
    import ray

    import corrhash
    from corrhash.train.ray_local import secure_local_ray

    if ray.is_initialized():
        return
    runtime_env = {"py_modules": [str(Path(corrhash.__file__).parent)],
                   "env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}}
    # "local" always starts a fresh local Ray: with no address, ray.init would instead join whatever
    # cluster /tmp/ray/ray_current_cluster names, and hang if that cluster is gone.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        secure_local_ray()
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, configure_logging=False)


def storage_path(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).absolute())


def user_error(error: BaseException | None) -> CorrhashError | None:
    """The CorrhashError a Ray worker or trial raised, found inside Ray's wrappers (RayTaskError,
    WorkerGroupError, TuneError), so a job reports its message instead of Ray's traceback."""
    seen, todo = set(), [error]
    while todo:
        error = todo.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, CorrhashError):
            inner = getattr(error, "cause", None)  # a RayTaskError posing as the DataError it carries
            return inner if isinstance(inner, CorrhashError) else error
        todo += [getattr(error, "cause", None), error.__cause__, error.__context__,
                 *getattr(error, "worker_failures", {}).values()]
    return None


def default_job_name(shards: TfidfShards, model_config: ModelConfig) -> str:
    return f"{shards.manifest['dataset']}-{model_config.name}-{model_config.bits}b-{time.strftime('%Y%m%d-%H%M%S')}"


def train_on_ray(data_dir: str | Path, model_config: ModelConfig, train_config: TrainConfig, ray_config: RayConfig,
                 out_dir: str | Path | None = None, score_test: bool = True) -> dict:
    import ray
    from mlflow.tracking import MlflowClient

    from corrhash.tracking.runs import ensure_experiment, start_or_resume_run, tracking_uri

    started = time.monotonic()
    data_dir = Path(data_dir).absolute()
    shards = training_shards(data_dir)
    vocab = read_vocab(shards)
    name = check_job_name(ray_config.name or default_job_name(shards, model_config))
    if out_dir:
        check_out_dir(out_dir)
    check_job_paths(ray_config.mlflow_uri, ray_config.storage)
    with job_lock(storage_path(ray_config.storage), name):
        init_ray(ray_config.address)
        use_gpu = {"yes": True, "no": False}.get(ray_config.use_gpu, ray.cluster_resources().get("GPU", 0) > 0)
        uri = tracking_uri(ray_config.mlflow_uri)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, ray_config.experiment)
        params = {"model": model_config.to_dict(), "train": train_config.to_dict(), "ray": asdict(ray_config),
                  "data": str(data_dir)}
        run_id, resumed = start_or_resume_run(client, experiment_id, name, params, {
            "dataset": shards.manifest["dataset"], "data.content_hash": shards.content_hash,
            "data.path": str(data_dir), "model": model_config.name, "bits": str(model_config.bits)})
        log(f"job {name}: MLflow run {run_id} at {uri}{' (resumed)' if resumed else ''}; "
            f"{ray_config.num_workers} {'GPU' if use_gpu else 'CPU'} worker(s)")
        try:
            summary = _fit_and_log(client, uri, run_id, name, data_dir, shards, vocab, use_gpu, model_config,
                                   train_config, ray_config, out_dir, score_test)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")  # only now: the model is logged and saved
    summary["wall_seconds"] = time.monotonic() - started
    log(f"job {name}: best epoch {summary['best_epoch']}, val p@{train_config.eval_k} {summary['val_precision']:.4f}"
        + (f", test {summary['test_precision']:.4f}" if score_test else "") + f"; model {summary['model_uri']}")
    return summary


def _fit_and_log(client, uri: str, run_id: str, name: str, data_dir: Path, shards: TfidfShards, vocab: dict,
                 use_gpu: bool, model_config: ModelConfig, train_config: TrainConfig, ray_config: RayConfig,
                 out_dir: str | Path | None, score_test: bool) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from corrhash.tracking.runs import log_hashing_model, log_metrics

    with tempfile.TemporaryDirectory() as tmp:
        manifest_copy = Path(tmp) / "manifest.json"
        manifest_copy.write_text(json.dumps(shards.manifest, indent=2))
        client.log_artifact(run_id, str(manifest_copy), "data")

    resources = {"CPU": ray_config.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"data": str(data_dir), "model": model_config.to_dict(), "train": train_config.to_dict(),
                           "mlflow": {"uri": uri, "run_id": run_id},
                           "threads_per_worker": max(1, int(ray_config.cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=ray_config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path(ray_config.storage),
                             failure_config=FailureConfig(max_failures=ray_config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        cause = user_error(exc)
        if cause is None:
            raise
        raise type(cause)(f"job {name}: a Ray Train worker failed: {cause}") from exc
    with result.checkpoint.as_directory() as directory:
        model, payload = best_model(Path(directory), model_config, shards.n_features)
    history = payload["history"]
    summary = {"job": name, "run_id": run_id, "data": str(data_dir), "content_hash": shards.content_hash,
               "dataset": shards.manifest["dataset"], "model": model_config.to_dict(),
               "train": train_config.to_dict(), "ray": asdict(ray_config), "best_epoch": payload["best_epoch"],
               "epochs_run": payload["epoch"], "val_precision": payload["best_value"], "test_precision": None,
               "test_precision_ordered": None, "epoch_seconds": [h.get("seconds") for h in history]}
    if score_test:
        precision = Evaluator(shards.split("train"), shards.split("test"), torch.device("cpu"),
                              train_config.eval_k)(model)
        summary.update(test_precision=precision.tie_aware, test_precision_ordered=precision.ordered)
        log_metrics(client, run_id, {"test_precision_at_100": precision.tie_aware,
                                     "test_precision_ordered_at_100": precision.ordered}, step=payload["epoch"])
    log_metrics(client, run_id, {"best_val_precision_at_100": payload["best_value"],
                                 "best_epoch": payload["best_epoch"]}, step=payload["epoch"])

    run_dir = new_run_dir(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="corrhash-model-"))
    try:
        model_dir = save_model(run_dir / "model", model, vocab,
                               {"label_names": shards.label_names, "content_hash": shards.content_hash,
                                "val_precision": payload["best_value"], "test_precision": summary["test_precision"],
                                "mlflow_run_id": run_id})
        summary["model_uri"] = log_hashing_model(uri, run_id, model_dir, EXAMPLE_TEXTS).model_uri
        if out_dir:
            (run_dir / "results.json").write_text(json.dumps(summary, indent=2))
            replace_dir(run_dir, out_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # gone already when it replaced out_dir
    return summary
