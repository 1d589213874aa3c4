"""The Tune launcher: Optuna (TPE) proposes, over one model's space or several models' at once (`runs/space.py`),
ASHA stops weak trials early, every trial runs `worker.tune_trial`; the best trial across models is finished like
any run, registered, and may become the champion.

Everything that can be checked without Ray is checked before it starts. The tune's parent MLflow run
and one child run per trial (`callbacks.TrialRuns`) are driven from here; starting the same name
again resumes an interrupted search without re-running finished trials.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from corrhash.data import TfidfShards
from corrhash.data.files import display, join
from corrhash.errors import ConfigError, CorrhashError
from corrhash.log import log
from corrhash.launch.blocks import ray_blocks
from corrhash.launch.connect import storage_path, user_error
from corrhash.launch.job import ClusterOptions, launch_job
from corrhash.launch.preflight import check_job_name, check_out_dir
from corrhash.runs.callbacks import TrialRuns, TrialStates
from corrhash.runs.finish import Selection, finish, run_folder
from corrhash.runs.space import BUDGET_RULE, ConditionalSpace, check_space, default_recipes, space_params
from corrhash.runs.spec import RunSpec, trial_values
from corrhash.runs.worker import tune_trial
from corrhash.models import model_class
from corrhash.models.space import parse_spec
from corrhash.train.neighbours import cached_lists
from corrhash.tracking.registry import decide_champion, registered_name
from corrhash.tracking.runs import log_data, log_figures, log_model_bests, log_params, publish_model, set_tags


REGISTERED_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class TuneOptions:
    num_samples: int = 16
    """Trials to run."""
    max_concurrent: int = 2
    """Trials at once."""
    cpus_per_trial: float = 1.0
    """CPUs per trial (also its torch threads on the CPU)."""
    gpus_per_trial: float = 0.0
    """GPUs per trial; 0.25 packs four trials on a GPU."""
    grace_period: int = 10
    """ASHA: epochs before a trial may be stopped (and, over several models, the start-up rung's epochs)."""
    leaders: int = 3
    """over several models: the best families by the start-up rung that get the rest of the budget (see below)."""
    storage: str = "runs/tune"
    """Where Tune keeps its state and the trials' checkpoints (a folder or URI; made absolute)."""
    name: str | None = None
    """Tune job name; the same name resumes. Default: DATASET-MODEL-BITSb-tune."""
    registered_model: str | None = None
    """Registered model the best becomes a version of (and `champion` when better on val); default:
    corrhash-DATASET-BITSb, DATASET being the shards' name (prepare_data.py --name)."""
    cluster: ClusterOptions = field(default_factory=lambda: ClusterOptions(experiment="corrhash-tune"))
    """Ray cluster and MLflow"""

    def __post_init__(self) -> None:
        if self.registered_model is not None and not REGISTERED_MODEL.fullmatch(self.registered_model):
            raise ConfigError(f"--registered-model {self.registered_model!r}: 1-128 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit")
        if self.num_samples < 1 or self.max_concurrent < 1 or self.leaders < 1:
            raise ConfigError("--num-samples, --max-concurrent and --leaders must be >= 1")
        # `not x > 0` and isfinite: NaN passes every `<=` test.
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise ConfigError(f"--cpus-per-trial {self.cpus_per_trial}: must be a finite number > 0")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise ConfigError(f"--gpus-per-trial {self.gpus_per_trial}: must be a finite number >= 0")
        if self.name is not None:
            check_job_name(self.name)


def run_tune(spec: RunSpec, spaces: dict[str, dict], options: TuneOptions, out: Path | None = None) -> dict:
    """Search `spaces` ({model: {param: spec string or fixed value}}, `runs/space.py`) around `spec`; returns the
    results of the best trial across models."""
    started = time.monotonic()
    shards = TfidfShards(spec.data)
    models = list(spaces)
    family = models[0] if len(models) == 1 else "multi"
    name = check_job_name(options.name or f"{shards.manifest['dataset']}-{family}-{spec.model.bits}b-tune")
    if not 1 <= options.grace_period <= spec.train.epochs:  # ASHA asserts this only after Ray has started
        raise ConfigError(f"--grace-period {options.grace_period}: must be between 1 and --epochs {spec.train.epochs}")
    if spec.train.device.startswith("cuda") and options.gpus_per_trial == 0:
        raise ConfigError(f"--device {spec.train.device}: trials get no GPU; pass --gpus-per-trial (e.g. 1 or 0.25)")
    check_space(spaces, spec)
    if out:
        check_out_dir(out)
    searched = set().union(*spaces.values()) | ({"name"} if len(models) > 1 else set())
    fixed = {section: {k: v for k, v in values.items() if k not in searched}
             for section, values in (("model", spec.model.to_dict()), ("train", spec.train.to_dict()))}
    params = {**fixed, "data": spec.data, "num_samples": options.num_samples, "space": space_params(spaces),
              **({"models": ",".join(models)} if len(models) > 1 else {})}
    tags = {"dataset": shards.manifest["dataset"], "data.content_hash": shards.content_hash,
            "data.path": spec.data, "model": ",".join(models), "bits": str(spec.model.bits),
            **({"budget_rule": BUDGET_RULE, "leaders": str(options.leaders)} if len(models) > 1 else {})}
    storage = storage_path(options.storage)
    fits = [(f"--cpus-per-trial {options.cpus_per_trial} --gpus-per-trial {options.gpus_per_trial}",
             options.cpus_per_trial, options.gpus_per_trial)]
    with launch_job(options.cluster, name, storage=options.storage, lock_root=storage, params=params, tags=tags,
                    data={"--data": spec.data}, folders={"--storage": storage}, fits=lambda: fits) as job:
        client, uri, experiment_id, parent_id = job.client, job.uri, job.experiment_id, job.run_id
        log(f"tune {name}: MLflow parent run {parent_id}{' (resumed)' if job.resumed else ''} at {uri}")
        log_data(client, parent_id, shards)
        spec = RunSpec(spec.data, spec.model, spec.train, threads=max(1, int(options.cpus_per_trial)))
        width = graph_width(spaces, spec)
        if width:  # searched once, on the cluster, before trials that would each wait for one process's search
            cached_lists(shards, width, method=spec.model.graph_search, run_blocks=ray_blocks)
        with run_folder(out) as folder:
            fit_started = time.monotonic()
            best, study, grid = _search(spec, spaces, options, name,
                                        TrialRuns(uri, experiment_id, parent_id, spec))
            log_figures(client, parent_id, study_figures(study, name, best))
            bests = model_bests(grid, spec)
            log_model_bests(client, parent_id, bests)
            print_model_bests(bests)
            tuned = trial_values(best.config)
            spec = spec.with_overrides(tuned)
            log_params(client, parent_id, {"model": spec.model.to_dict(), "train": spec.train.to_dict()})
            set_tags(client, parent_id, {f"best.{key}": value for key, value in tuned.items()})
            with best.checkpoint.as_directory() as directory:
                selection = Selection.from_checkpoint(Path(directory), spec, shards.n_features)
            registry = options.registered_model or registered_name(shards.manifest["dataset"], spec.model.bits)
            results = finish(spec, shards, selection, folder, launcher="tune", started=started,
                             fit_seconds=time.monotonic() - fit_started, device=torch.device("cpu"), job=name,
                             run_id=parent_id, tuned=tuned,
                             publish=lambda model_dir, results: publish_model(
                                 client, uri, parent_id, model_dir, results, registry))
        decision = decide_champion(client, parent_id, registry, results)  # before the parent is FINISHED
    print("\nbest configuration:", json.dumps(tuned), flush=True)
    k = spec.train.eval_k
    print(f"val p@{k} {results['val_precision']:.4f}, test p@{k} {results['test_precision']:.4f} "
          "(tie-aware, scored once)")
    print(decision)
    return {**results, "decision": decision}


def graph_width(spaces: dict[str, dict], spec: RunSpec) -> int | None:
    """The widest neighbour list any trial can ask for (the largest k its space draws, for the models that use the
    document graph); None when none does."""
    widths = [max(int(v) for v in parse_spec("neighbours", space["neighbours"]).values)
              if "neighbours" in space else spec.model.neighbours
              for model, space in spaces.items() if model_class(model).uses_graph]
    return max(widths) if widths else None


def model_bests(grid, spec: RunSpec) -> dict[str, dict]:
    """{model: {"val_precision", "trial", "trials", "epochs"}} over a search's trials: each model's best val
    precision, the trial that reached it, its trials and the epochs they trained (a closed-form fit counts one)."""
    bests: dict[str, dict] = {}
    for result in grid:
        if not result.metrics or "best_val_precision" not in result.metrics:
            continue
        model = trial_values(result.config).get("name", spec.model.name)
        entry = bests.setdefault(model, {"val_precision": -1.0, "trial": None, "trials": 0, "epochs": 0})
        entry["trials"] += 1
        entry["epochs"] += max(1, int(result.metrics.get("epoch", 0)))
        if result.metrics["best_val_precision"] > entry["val_precision"]:
            entry["val_precision"], entry["trial"] = result.metrics["best_val_precision"], result.metrics["trial_id"]
    return bests


def print_model_bests(bests: dict[str, dict]) -> None:
    for model, entry in sorted(bests.items(), key=lambda item: -item[1]["val_precision"]):
        log(f"  {model:<15} best val {entry['val_precision']:.4f}  ({entry['trials']} trials, "
            f"{entry['epochs']} epochs)")


def _search(spec: RunSpec, spaces: dict[str, dict], options: TuneOptions, name: str, trial_runs: TrialRuns):
    """Tuner.fit (or its resume): the best trial's result, the Optuna storage URL (None: in memory) and the
    ResultGrid; a named error when no trial has a checkpoint."""
    # Snapshot the experiment state every second (default: 10 s or more), so a stopped search
    # resumes knowing every trial that had finished; the snapshot is small at this scale.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # ...and without Tune's warning, once per snapshot, that frequent snapshots may be a bottleneck.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from corrhash.runs.scheduler import LeaderSafeASHA

    trainable = tune.with_resources(tune.with_parameters(tune_trial, spec=spec.to_dict(), job=name),
                                    {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
    run_uri = join(storage_path(options.storage), name)  # a URI as it is: Path() would make s3://b/x s3:/b/x
    run_path = Path(run_uri)
    # The Optuna study lives beside the Tune state (job_lock made the folder), for Optuna's own tools.
    study = None if "://" in options.storage else f"sqlite:///{run_path / 'optuna.db'}"
    if tune.Tuner.can_restore(run_uri):
        log(f"tune {name}: resuming from {display(run_uri)}")
        tuner = tune.Tuner.restore(run_uri, trainable=trainable, resume_errored=True)
    else:
        import optuna

        storage = optuna.storages.RDBStorage(study) if study else None
        # Define-by-run: the model first, then its own dimensions; metric and mode go to the searcher itself. The
        # study's objective is a trial's best val precision, the value MLflow, the registry and the champion
        # decision use (the last epoch's would be lower); it never falls, so ASHA's rungs (on val_precision) are
        # unaffected.
        space = ConditionalSpace(spaces, default_recipes(spaces, spec), options.grace_period, options.leaders)
        optuna_search = OptunaSearch(space=space, metric="best_val_precision", mode="max",
                                     seed=spec.train.seed, study_name=name, storage=storage)
        searcher = ConcurrencyLimiter(optuna_search, max_concurrent=options.max_concurrent)
        scheduler = LeaderSafeASHA(time_attr="epoch", max_t=spec.train.epochs, grace_period=options.grace_period)
        # One checkpoint per trial: `best_val_precision` never falls, so the one kept is the latest, and it
        # holds the best weights (once: as its own weights when its epoch is the best).
        keep = tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="best_val_precision",
                                     checkpoint_score_order="max")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric="val_precision", mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=options.num_samples,
                                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(name=name, storage_path=storage_path(options.storage),
                                      callbacks=[trial_runs, TrialStates(name, options.num_samples, spec)],
                                      # The trial table shows each result's first four metrics (val_precision,
                                      # best_val_precision, loss, epoch: runs/worker.py orders them): Ray 2.60's
                                      # output engine ignores a CLIReporter's columns.
                                      checkpoint_config=keep))
    results = tuner.fit()
    trial_runs.end_all(results)
    if study and not (run_path / "optuna.db").is_file():  # a search started before studies were kept
        study = None
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
    return results.get_best_result(metric="val_precision", mode="max", scope="all"), study, results


def study_figures(study: str | None, name: str, best) -> dict:
    """{file name: matplotlib figure}: Optuna's optimisation history and parameter importances (from the
    persisted study), and the best trial's val precision per epoch."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    figures = {}
    if study is not None:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        loaded = optuna.load_study(study_name=name, storage=study)
        completed = loaded.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if completed:
            figures["optimization_history.png"] = optuna_plots.plot_optimization_history(loaded).figure
        # Importances compare trials over the params they all searched (none where default recipes ran).
        shared = set.intersection(*(set(t.distributions) for t in completed)) if completed else set()
        if len(completed) >= 2 and shared:
            figures["param_importances.png"] = optuna_plots.plot_param_importances(loaded).figure
    curve = best.metrics_dataframe
    if curve is not None and "val_precision" in curve:
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(curve["epoch"], curve["val_precision"], marker="o")
        axes.set(xlabel="epoch", ylabel="val precision (tie-aware)", title=f"best trial {best.metrics.get('trial_id', '')}")
        figures["best_trial_val_precision.png"] = figure
    return figures
