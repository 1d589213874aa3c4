"""Search CorrSH hyper-parameters with Ray Tune + Optuna; register the best model as the champion.

Examples:
  python jobs/tune.py --data data/20ng --bits 64 --num-samples 16 --name ng64-tune
  ray job submit --working-dir . -- python jobs/tune.py --data /abs/data/20ng --num-samples 8
  python jobs/tune.py --data data/20ng --space lr=loguniform:3e-4:3e-3 --space rank=choice:0,10

Optuna's TPE (seeded) samples dropout, rank v, mixture k and lr (default space; override with
--space NAME=SPEC or --space-file YAML). ASHA stops weak trials early on val precision@100. Each
trial is one MLflow child run of the job's parent run. The best trial (by val precision) is scored
once on test, logged, and registered as a new version of corrhash-DATASET-BITSb; the alias
`champion` moves to it only if its val precision beats the current champion's. Starting the same
--name again resumes an interrupted search.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.errors import ConfigError, CorrhashError  # noqa: E402
from corrhash.models import ModelConfig, list_models  # noqa: E402
from corrhash.train import TrainConfig  # noqa: E402
from corrhash.train.preflight import check_job_name  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder written by jobs/prepare_data.py")
    parser.add_argument("--model", default="corrsh", choices=list_models(), help="model name (default: corrsh)")
    parser.add_argument("--name", help="tune job name; the same name resumes (default: DATASET-MODEL-BITSb-tune)")
    parser.add_argument("--num-samples", type=int, default=16, help="trials to run (default: 16)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at once (default: 2)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial; 0.25 packs four trials on a GPU (default: 0)")
    parser.add_argument("--grace-period", type=int, default=10, help="ASHA: epochs before a trial may be stopped")
    parser.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                        help="override one search dimension, e.g. dropout=uniform:0:0.3, rank=choice:0,10")
    parser.add_argument("--space-file", type=Path, help="YAML mapping NAME: SPEC overriding the default space")
    parser.add_argument("--address", help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--storage", default="runs/tune", help="where Tune keeps trial checkpoints")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--experiment", default="corrhash-tune", help="MLflow experiment")
    add_dataclass_args(parser, ModelConfig, "model (fixed parts)", skip=("name", "seed"))
    add_dataclass_args(parser, TrainConfig, "training (fixed parts)")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.max_concurrent < 1:
        raise ConfigError("--num-samples and --max-concurrent must be >= 1")
    # `not x > 0` and isfinite: NaN passes every `<=` test.
    if not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        raise ConfigError(f"--cpus-per-trial {args.cpus_per_trial}: must be a finite number > 0")
    if not (math.isfinite(args.gpus_per_trial) and args.gpus_per_trial >= 0):
        raise ConfigError(f"--gpus-per-trial {args.gpus_per_trial}: must be a finite number >= 0")
    if args.name is not None:
        check_job_name(args.name)
    model = dataclass_from_args(ModelConfig, args, name=args.model, seed=vars(args)["TrainConfig.seed"])
    train = dataclass_from_args(TrainConfig, args)
    if not 1 <= args.grace_period <= train.epochs:  # ASHA asserts this only after Ray has started
        raise ConfigError(f"--grace-period {args.grace_period}: must be between 1 and --epochs {train.epochs}")
    return args, model, train


def check_trial_fits(cpus: float, gpus: float) -> None:
    """Refuse a trial no node can hold: Tune would leave it PENDING forever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        largest = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)), default={})
        raise ConfigError(f"--cpus-per-trial {cpus} --gpus-per-trial {gpus}: no node of the Ray cluster has that "
                          f"much (largest: {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU)")


def run_tune(args, base_model: ModelConfig, base_train: TrainConfig) -> dict:
    from mlflow.tracking import MlflowClient

    from corrhash.log import log
    from corrhash.tracking.runs import ensure_experiment, start_or_resume_run, tracking_uri
    from corrhash.train.preflight import check_job_paths, job_lock, read_vocab, training_shards
    from corrhash.train.ray_run import init_ray, storage_path
    from corrhash.tune.space import build_space
    from corrhash.tune.trial import check_space

    # Everything that can be checked without Ray is checked before it starts.
    data = args.data.absolute()
    shards = training_shards(data)
    vocab = read_vocab(shards)
    dataset = shards.manifest["dataset"]
    name = check_job_name(args.name or f"{dataset}-{base_model.name}-{base_model.bits}b-tune")
    space = build_space(args.space_file, args.space)
    check_space(space, base_model, base_train)
    check_job_paths(args.mlflow_uri, args.storage)
    with job_lock(storage_path(args.storage), name):
        init_ray(args.address)
        check_trial_fits(args.cpus_per_trial, args.gpus_per_trial)
        uri = tracking_uri(args.mlflow_uri)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, args.experiment)
        parent_id, resumed = start_or_resume_run(
            client, experiment_id, name,
            {"model": base_model.to_dict(), "train": base_train.to_dict(), "num_samples": args.num_samples,
             "space": {k: str(v) for k, v in space.items()}},
            {"dataset": dataset, "data.content_hash": shards.content_hash, "data.path": str(data)})
        log(f"tune {name}: MLflow parent run {parent_id}{' (resumed)' if resumed else ''} at {uri}")
        try:
            summary = search_and_register(args, name, shards, vocab, space, base_model, base_train, client, uri,
                                          experiment_id, parent_id)
        except BaseException:
            client.set_terminated(parent_id, "FAILED")  # a resume with the same --name sets it RUNNING again
            raise
        # FINISHED only now: the version is registered and tagged and the champion decided (R8).
        client.set_terminated(parent_id, "FINISHED")
    return summary


def search_and_register(args, name, shards, vocab, space, base_model, base_train, client, uri, experiment_id,
                        parent_id) -> dict:
    # Snapshot the experiment state every second (default: 10 s or more), so a stopped search
    # resumes knowing every trial that had finished; the snapshot is small at this scale.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from corrhash.artifact import save_model
    from corrhash.log import log
    from corrhash.tracking.registry import promote_if_better, registered_name
    from corrhash.tracking.runs import log_hashing_model, log_metrics
    from corrhash.train.checkpoint import best_model
    from corrhash.train.loop import Evaluator
    from corrhash.train.ray_run import EXAMPLE_TEXTS, storage_path, user_error
    from corrhash.tune.trial import trial_configs, tune_trial

    fixed = {"data": str(shards.root), "base_model": base_model.to_dict(), "base_train": base_train.to_dict(),
             "threads": max(1, int(args.cpus_per_trial)),
             "mlflow": {"uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_id}}
    trainable = tune.with_resources(tune_trial, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    run_path = Path(storage_path(args.storage)) / name
    if tune.Tuner.can_restore(str(run_path)):
        log(f"tune {name}: resuming from {run_path}")
        tuner = tune.Tuner.restore(str(run_path), trainable=trainable, resume_errored=True,
                                   param_space={**space, **fixed})
    else:
        searcher = ConcurrencyLimiter(OptunaSearch(seed=base_train.seed), max_concurrent=args.max_concurrent)
        scheduler = ASHAScheduler(time_attr="epoch", max_t=base_train.epochs, grace_period=args.grace_period)
        tuner = tune.Tuner(trainable, param_space={**space, **fixed},
                           tune_config=tune.TuneConfig(metric="val_precision", mode="max", search_alg=searcher,
                                                       scheduler=scheduler, num_samples=args.num_samples,
                                                       trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
                           run_config=tune.RunConfig(name=name, storage_path=storage_path(args.storage)))
    results = tuner.fit()
    # Tune ends a trial's function at its last report (ASHA or max_t), so its MLflow run is closed here.
    for result in results:
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if run_id:
            client.set_terminated(run_id, "FAILED" if result.error else "FINISHED")
    if not any(result.checkpoint for result in results):
        errors = [result.error for result in results if result.error]
        first = user_error(errors[0]) if errors else None
        if first is not None:
            detail = str(first)
        else:  # not ours: the last line of Ray's message names the exception
            detail = (str(errors[0]).strip().splitlines() or ["?"])[-1] if errors else "none reported"
        raise (type(first) if first else CorrhashError)(
            f"tune {name}: no trial produced a checkpoint ({len(errors)} of {len(results)} failed); "
            f"first error: {detail}")
    best = results.get_best_result(metric="val_precision", mode="max", scope="all")
    model_config, train_config = trial_configs(best.config)
    with best.checkpoint.as_directory() as directory:
        model, payload = best_model(Path(directory), model_config, shards.n_features)
    val_precision = float(payload["best_value"])
    test = Evaluator(shards.split("train"), shards.split("test"), torch.device("cpu"), train_config.eval_k)(model)
    tuned = {k: best.config[k] for k in space}
    log_metrics(client, parent_id, {"best_val_precision_at_100": val_precision,
                                    "test_precision_at_100": test.tie_aware,
                                    "test_precision_ordered_at_100": test.ordered}, step=0)
    for key, value in tuned.items():
        client.set_tag(parent_id, f"best.{key}", str(value))

    registry_name = registered_name(shards.manifest["dataset"], model_config.bits)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model", model, vocab,
                               {"label_names": shards.label_names, "content_hash": shards.content_hash,
                                "val_precision": val_precision, "test_precision": test.tie_aware,
                                "tuned": tuned, "mlflow_run_id": parent_id})
        info = log_hashing_model(uri, parent_id, model_dir, EXAMPLE_TEXTS, registered_name=registry_name)
    version = str(info.registered_model_version)  # this job's version, not the newest (another job's)
    promoted, decision = promote_if_better(client, registry_name, version, val_precision)
    client.set_tag(parent_id, "champion.decision", decision)
    client.set_tag(parent_id, "registered_version", f"{registry_name}/{version}")
    summary = {"name": name, "parent_run_id": parent_id, "trials": len(results), "best_config": tuned,
               "val_precision": val_precision, "test_precision": test.tie_aware,
               "test_precision_ordered": test.ordered, "registered": f"{registry_name}/{version}",
               "promoted": promoted, "decision": decision, "model_uri": info.model_uri}
    print("\nbest configuration:", json.dumps(tuned), flush=True)
    print(f"val p@100 {val_precision:.4f}, test p@100 {test.tie_aware:.4f} (tie-aware, scored once)")
    print(decision)
    return summary


def main(argv=None) -> int:
    try:
        args, base_model, base_train = parse_args(argv)
        print(f"model: {dataclasses.asdict(base_model)}\ntrain: {dataclasses.asdict(base_train)}", flush=True)
        summary = run_tune(args, base_model, base_train)
    except (CorrhashError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
