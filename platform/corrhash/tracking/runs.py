"""MLflow, written in one place: every run a job records is created, fed and ended here.

The launchers in `corrhash.runs` and `corrhash.ablate` call these functions from the driver (the job run, its data
and its model; an ablation's cell runs) and from Ray's driver-side callbacks (per-epoch metrics, one child run per
Tune trial); worker, cell and training code never see MLflow. Runs carry the tags `mlflow.start_run` would give them (git commit,
source, user; `lineage.py`), the prepared data as a dataset input, and metric names built from `eval_k`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from corrhash.package import PACKAGE_DIR
from corrhash.artifact import MLFLOW_ARTIFACT_KEY
from corrhash.data import TfidfShards
from corrhash.errors import ConfigError, CorrhashError
from corrhash.log import log, warn
from corrhash.tracking.lineage import source_tags

JOB_TAG = "corrhash.job"
TRIAL_TAG = "corrhash.trial"
ABLATION_TAG = "corrhash.ablation"  # an ablation's parent run and its cells
CELL_TAG = "corrhash.cell"
NODE_TAG = "corrhash.node"  # the Ray node that ran a cell
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs by
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
# The versions the model is built with, pinned in its requirements (what `mlflow models serve` installs).
# The logged model's input example (MLflow derives the serving example from it).
INPUT_EXAMPLE = ["The shuttle launch was delayed by a fuel leak.", "Which graphics card works best under Linux?"]
# The experiment kind MLflow 3's UI reads (its ExperimentKind enum) to choose the experiment's landing page.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
REQUIREMENTS = ("mlflow", "torch", "numpy", "scipy", "scikit-learn", "safetensors", "faiss-cpu", "pyarrow")


def tracking_uri(explicit: str | None = None) -> str:
    """--mlflow-uri, else $MLFLOW_TRACKING_URI, else the embedded default: ./mlflow.db (SQLite)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').absolute()}"


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(uri)


def filter_value(value: str) -> str:
    """`value` as a string literal for an MLflow filter string. MLflow's parser has no escape
    character, so the literal is quoted with whichever quote the value does not contain."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"{value!r}: a name used in MLflow searches cannot contain both ' and \"")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if missing, marked as model training: unmarked, MLflow 3's UI opens it on
    its GenAI overview (traces, latency) instead of the runs table."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):  # keep artifacts beside the DB, not in the cwd of a worker
        location = (Path(client.tracking_uri[len("sqlite:///"):]).parent / "mlruns").absolute().as_uri()
    return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Log flattened `params` the run does not have yet (a resumed run keeps what it recorded)."""
    have = client.get_run(run_id).data.params
    new = [Param(k, v[:6000]) for k, v in flatten(params).items() if k not in have]
    if new:
        client.log_batch(run_id, params=new)


def _find_or_create(client: MlflowClient, experiment_id: str, filter_string: str, run_name: str,
                    tags: dict) -> tuple[str, bool]:
    existing = client.search_runs([experiment_id], filter_string=filter_string, max_results=1,
                                  order_by=["attributes.start_time DESC"])
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    # The git commit, source and user tags `mlflow.start_run` would add, also for a job Ray runs from a copy.
    return client.create_run(experiment_id, run_name=run_name, tags={**source_tags(), **tags}).info.run_id, False


def start_or_resume_run(client: MlflowClient, experiment_id: str, job_name: str, params: dict,
                        tags: dict) -> tuple[str, bool]:
    """The run tagged with this job name (resumed, set RUNNING again), or a new one; returns (run_id, resumed)."""
    run_id, resumed = _find_or_create(client, experiment_id, f"tags.`{JOB_TAG}` = {filter_value(job_name)}",
                                      job_name, {JOB_TAG: job_name, **tags})
    log_params(client, run_id, params)
    return run_id, resumed


@contextmanager
def job_run(client: MlflowClient, experiment_id: str, job_name: str, params: dict, tags: dict):
    """Yield (run_id, resumed) of the job's run; end it FINISHED when the block completes, FAILED on an
    error, KILLED on Ctrl-C or SIGTERM (the jobs turn it into SystemExit), with its child runs still
    RUNNING; a rerun with the same name sets them RUNNING again. The tracking server gone (past MLflow's
    retries) is a TrackingUnreachable naming the run and how to finish it: it is left RUNNING, to be resumed."""
    run_id, resumed = start_or_resume_run(client, experiment_id, job_name, params, tags)
    try:
        yield run_id, resumed
        client.set_terminated(run_id, "FINISHED")
    except UNREACHABLE as exc:
        raise TrackingUnreachable(f"the MLflow tracking server does not answer ({reason(exc)}); the run {run_id} "
                                  f"stays RUNNING: when the server is back, run the job again with --name {job_name}"
                                  " to resume it and record what is missing") from exc
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:  # child runs of trials that were still going end with their parent (a resume reopens them)
            running = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = "
                                         f"{filter_value(run_id)} and attributes.status = 'RUNNING'")
            for run in [*running, client.get_run(run_id)]:
                client.set_terminated(run.info.run_id, status)
        except UNREACHABLE:
            pass  # the job's own error says what went wrong; the run is resumed by a rerun
        raise


class TrackingUnreachable(CorrhashError):
    """The MLflow tracking server did not answer, past MLflow's retries."""


UNREACHABLE = (MlflowException, requests.exceptions.RequestException)
"""What an MLflow client call raises when the server is down or does not answer."""


def reason(exc: BaseException) -> str:
    """The last line of an unreachable server's error, shortened (MLflow's wrap the whole retry history)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200] + "..."


@contextmanager
def quick_requests(timeout_s: int = 10):
    """MLflow's HTTP requests in this block fail at once when the server does not answer (one try, `timeout_s`),
    instead of minutes of retries with backoff; for calls that can be made again later."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EpochLog:
    """A run's per-epoch metrics, logged as each epoch ends, that survive the tracking server going away: a failed
    log is said once on the console, training goes on, and `backfill_epochs` records the missed epochs from the
    checkpoint's history when the job ends (reliability review t4, R3: training stalled for minutes in MLflow's
    retries, then a failed log ended the run, and its epoch's metrics were lost for good)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id, self.down_since = uri, run_id, None

    def __call__(self, metrics: dict, step: int) -> None:
        try:
            with quick_requests():
                log_epoch(client_for(self.uri), self.run_id, metrics, step=step)
        except UNREACHABLE as exc:
            if self.down_since is None:
                self.down_since = step
                warn(f"MLflow at {self.uri} does not answer ({reason(exc)}); training goes on, and the "
                    f"epochs from {step} on it misses are recorded from the checkpoint when the job ends")
            return
        if self.down_since is not None:
            warn(f"MLflow at {self.uri} answers again at epoch {step} (it missed epochs {self.down_since} to "
                 f"{step - 1})")
            self.down_since = None


def backfill_epochs(client: MlflowClient, run_id: str, history: list[dict]) -> list[int]:
    """Log the epochs of `history` (a checkpoint's per-epoch metrics) that the run has not recorded; their
    numbers."""
    recorded = {metric.step for metric in client.get_metric_history(run_id, "epoch")}
    missing = [record for record in history if record.get("epoch") not in recorded]
    for record in missing:
        log_epoch(client, run_id, record, step=record["epoch"])
    return [record["epoch"] for record in missing]


def trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
              params: dict, tags: dict | None = None) -> str:
    """The child run of one Tune trial, found again by its trial tag after a restore."""
    query = (f"tags.`{TRIAL_TAG}` = {filter_value(trial_id)} and "
             f"tags.`{PARENT_TAG}` = {filter_value(parent_run_id)}")
    run_id, _ = _find_or_create(client, experiment_id, query, run_name,
                                {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, **(tags or {})})
    log_params(client, run_id, params)
    return run_id


def end_trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, statuses: dict[str, str]) -> None:
    """End each trial's child run with its trial's final status ({trial id: status}). A stopped job leaves
    the trial it interrupted KILLED; when Tune's restore then finds that trial already complete, it starts
    no callback for it, so only this pass after the search can end its run."""
    children = client.search_runs([experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = {filter_value(parent_run_id)}")
    for run in children:
        status = statuses.get(run.data.tags.get(TRIAL_TAG))
        if status and run.info.status != status:
            client.set_terminated(run.info.run_id, status)


def cell_runs(client: MlflowClient, experiment_id: str, parent_id: str, cell_id: str | None = None) -> list:
    """The child runs of an ablation's parent run (of one cell, given `cell_id`)."""
    query = f"tags.`{PARENT_TAG}` = {filter_value(parent_id)}"
    if cell_id is not None:
        query += f" and tags.`{CELL_TAG}` = {filter_value(cell_id)}"
    return client.search_runs([experiment_id], filter_string=query, max_results=10_000)


def start_cell_run(client: MlflowClient, experiment_id: str, parent_id: str, cell_id: str, run_name: str,
                   tags: dict, params: dict) -> str:
    """The run of a cell's attempt, RUNNING. Runs an earlier attempt left unfinished (its node died, or the driver
    did) are deleted first, so each cell ends with exactly one run."""
    for run in cell_runs(client, experiment_id, parent_id, cell_id):
        if run.info.status != "FINISHED":
            client.delete_run(run.info.run_id)
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={**tags, PARENT_TAG: parent_id, CELL_TAG: cell_id}).info.run_id
    log_params(client, run_id, params)
    return run_id


def record_cell(client: MlflowClient, run_id: str, results: dict, files: list[Path], metrics: dict) -> None:
    """End a cell's run FINISHED: its `files` as artifacts, then its final metrics (and `metrics`)."""
    for path in files:
        client.log_artifact(run_id, str(path))
    log_metrics(client, run_id, {**final_metrics(results), **metrics}, step=0)
    client.set_terminated(run_id, "FINISHED")


def set_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_file(client: MlflowClient, run_id: str, path: str | Path, folder: str) -> None:
    """A local file as the run's artifact FOLDER/NAME."""
    client.log_artifact(run_id, str(path), folder)


def log_model_bests(client: MlflowClient, run_id: str, bests: dict[str, dict]) -> None:
    """A search's parent run records each model's best trial (runs/tune.model_bests): metric
    `best_val_precision.MODEL`, tags `best_trial.MODEL` (its trial id), `trials.MODEL` and `epochs.MODEL` (what the
    search spent on it)."""
    for model, entry in bests.items():
        client.log_metric(run_id, f"best_val_precision.{model}", entry["val_precision"])
        set_tags(client, run_id, {f"best_trial.{model}": entry["trial"], f"trials.{model}": entry["trials"],
                                  f"epochs.{model}": entry["epochs"]})


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict | None = None) -> None:
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict, step: int, model_id: str | None = None,
                dataset=None) -> None:
    """The numeric entries of `metrics` at `step`; with `model_id` (and `dataset`, an MLflow Dataset entity) they
    are also the logged model's metrics, evaluated on that dataset."""
    now = int(time.time() * 1000)
    link = {"model_id": model_id} if model_id else {}
    if model_id and dataset is not None:
        link.update(dataset_name=dataset.name, dataset_digest=dataset.digest)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step, **link) for k, v in metrics.items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)])


RUN_CONSTANTS = ("docs", "world_size", "streamed")
"""Epoch results that do not change within a run: tags of the run, not charts of a constant line."""
_tagged: set[str] = set()


def log_epoch(client: MlflowClient, run_id: str, metrics: dict, step: int) -> None:
    """One epoch's metrics at `step`; its RUN_CONSTANTS become the run's tags (once per run in this process)."""
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in RUN_CONSTANTS}, step=step)
    if run_id not in _tagged:
        set_tags(client, run_id, {k: metrics[k] for k in RUN_CONSTANTS if k in metrics})
        _tagged.add(run_id)


def final_metrics(results: dict) -> dict:
    """A finished run's selection and test metrics, named after its k (`test_precision_at_10` for k = 10)."""
    k = results["eval_k"]
    metrics = {f"best_val_precision_at_{k}": results["val_precision"], "best_epoch": results["best_epoch"]}
    if results["test_precision"] is not None:
        metrics.update({f"test_precision_at_{k}": results["test_precision"],
                        f"test_precision_ordered_at_{k}": results["test_precision_ordered"]})
    return metrics


EVAL_CONTEXTS = {"val": "validation", "test": "testing"}
"""The dataset context (`mlflow.data.context`) of each held-out split's own dataset input."""


def _dataset(source_path: str, name: str, digest: str):
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns that it is ambiguous
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(source_path)
    return MetaDataset(source, name=name, digest=digest[:32])._to_mlflow_entity()  # MLflow keeps at most 36


def log_data(client: MlflowClient, run_id: str, shards: TfidfShards) -> None:
    """The prepared data as the run's dataset input (context training, digest: its content hash), each held-out
    split as one more (NAME-val, NAME-test; contexts validation, testing; digest: its shards' checksums), so the
    final metrics link to the split they were measured on; and the manifest as an artifact."""
    name = shards.manifest["dataset"]
    inputs = [DatasetInput(_dataset(str(shards.root), name, shards.content_hash), tags=[
        InputTag("mlflow.data.context", "training"), InputTag("corrhash.content_hash", shards.content_hash)])]
    for split, context in EVAL_CONTEXTS.items():
        entries = shards.manifest["splits"].get(split, {}).get("shards", [])
        if entries:
            digest = hashlib.sha256("".join(entry["sha256"] for entry in entries).encode()).hexdigest()
            where = f"{str(shards.root).rstrip('/')}/{split}"  # a folder or a URI (s3://...)
            inputs.append(DatasetInput(_dataset(where, f"{name}-{split}", digest), tags=[
                InputTag("mlflow.data.context", context), InputTag("corrhash.split", split)]))
    client.log_inputs(run_id, datasets=inputs)
    with tempfile.TemporaryDirectory() as tmp:
        manifest_copy = Path(tmp) / "manifest.json"
        manifest_copy.write_text(json.dumps(shards.manifest, indent=2))
        client.log_artifact(run_id, str(manifest_copy), "data")


def log_figures(client: MlflowClient, run_id: str, figures: dict) -> None:
    """Matplotlib figures as the run's `figures/NAME` artifacts (shown in the MLflow UI), then closed."""
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        figure.tight_layout()  # Optuna's plots clip their axis labels otherwise
        client.log_figure(run_id, figure, f"figures/{name}")
        plt.close(figure)


def pinned_requirements() -> list[str]:
    """`name==version` of each requirement as installed, without a local version label: `torch==2.13.0+cpu`
    is on no package index, `torch==2.13.0` is on PyPI (MLflow's own inference strips it the same way)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name).split('+', 1)[0]}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def log_hashing_model(uri: str, run_id: str, model_dir: Path, example_texts: list[str],
                      registered_name: str | None = None) -> ModelInfo:
    """Log a corrhash model folder as a pyfunc "model from code" (nothing pickled) to the run.

    The run stays RUNNING: the caller ends it once the model is registered and the champion decided,
    so a job stopped in between is not recorded as FINISHED. The returned ModelInfo carries the
    registry version this call created (`registered_model_version`)."""
    mlflow.set_tracking_uri(uri)
    # Not `with mlflow.start_run(...)`: leaving that block ends the run as FINISHED.
    mlflow.start_run(run_id=run_id)
    try:
        return mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_FILE),
                                       artifacts={MLFLOW_ARTIFACT_KEY: str(model_dir)},
                                       code_paths=[str(PACKAGE_DIR)], input_example=example_texts,
                                       pip_requirements=pinned_requirements(), registered_model_name=registered_name)
    finally:
        mlflow.end_run(status="RUNNING")


def publish_model(client: MlflowClient, uri: str, run_id: str, model_dir: Path, results: dict,
                  registered_name: str | None = None) -> dict:
    """The end of a recorded run: the model logged (and registered) on the run, then its final metrics, linked
    to that model and to the run's dataset so MLflow 3's Models tab compares models by them. A run that already
    registered a version (a rerun of a finished tune) keeps it: no duplicate."""
    metrics, step = final_metrics(results), results["epochs_run"]
    run = client.get_run(run_id)
    if registered_name and run.data.tags.get("registered_version"):
        log_metrics(client, run_id, metrics, step=step)
        return {"model_uri": run.data.tags.get("model_uri"), "registered_version": run.data.tags["registered_version"]}
    info = log_hashing_model(uri, run_id, model_dir, INPUT_EXAMPLE, registered_name)
    inputs = run.inputs.dataset_inputs if run.inputs else []
    by_context = {tag.value: entry.dataset for entry in inputs for tag in entry.tags if tag.key == "mlflow.data.context"}
    whole = by_context.get("training", inputs[0].dataset if inputs else None)
    for context, keys in (("validation", ("best_val_precision_at_", "best_epoch")), ("testing", ("test_",))):
        part = {key: value for key, value in metrics.items() if key.startswith(keys)}
        # Each metric linked to the split it was measured on (a run logged before splits were inputs: the whole).
        log_metrics(client, run_id, part, step=step, model_id=info.model_id, dataset=by_context.get(context, whole))
    version = f"{registered_name}/{info.registered_model_version}" if registered_name else None
    client.set_tag(run_id, "model_uri", info.model_uri)
    if version:
        client.set_tag(run_id, "registered_version", version)
    return {"model_uri": info.model_uri, "registered_version": version}
