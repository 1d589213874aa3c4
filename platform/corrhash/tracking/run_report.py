"""What a report page shows, read from an MLflow run, and the finished page logged back to it.

A run is one of three kinds, told apart by the tags the launchers set (tracking/runs.py, runs/tune.py,
ablate/driver.py): an ablation's parent (tag `corrhash.ablation`, no parent of its own), a tune's parent (child
runs tagged `corrhash.trial`), or any other run (a training job, one trial, one ablation cell). The page itself
is drawn by `corrhash.report.page`; an ablation's rows come from `corrhash.ablate.driver.ablation_rows` over what
`finished_cells` and `cell_codes` read here, which the job script composes (tracking may not import the launchers).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from corrhash.data import TfidfShards
from corrhash.errors import ConfigError, CorrhashError, DataError
from corrhash.report.page import CURVE_COLUMNS, Codes, PageInput, Trial
from corrhash.retrieval.codes import unpack_codes
from corrhash.serve.hashing import load as load_hashing_model
from corrhash.tracking.download import missing_sqlite_store
from corrhash.tracking.runs import ABLATION_TAG, PARENT_TAG, TRIAL_TAG, filter_value

PAGE_ARTIFACT = "report/report.html"
KINDS = {"run": "Run", "tune": "Tune", "ablation": "Ablation"}


def require_store(uri: str) -> None:
    """Refuse a SQLite store that does not exist: MlflowClient would create an empty one and then find no run."""
    if missing_sqlite_store(uri):
        raise ConfigError(f"--mlflow-uri {uri}: no MLflow database there (pass --mlflow-uri or set "
                          "MLFLOW_TRACKING_URI)")


def find_run(client: MlflowClient, ref: str):
    """The run with id `ref`, else the one top-level run (no parent) named `ref` in any experiment; a
    ConfigError naming --run when there is none or several, or when its artifacts are out of this URI's reach."""
    try:
        return reachable(client, client.get_run(ref))
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(experiments, filter_string=f"attributes.run_name = {filter_value(ref)}",
                                          max_results=1000) if PARENT_TAG not in r.data.tags] if experiments else []
    if not runs:
        raise ConfigError(f"--run {ref}: no run with that id, and no top-level run with that name at "
                          f"{client.tracking_uri}")
    if len(runs) > 1:
        ids = ", ".join(r.info.run_id for r in runs[:10])
        raise ConfigError(f"--run {ref}: {len(runs)} top-level runs have that name ({ids}); pass a run id")
    return reachable(client, runs[0])


def reachable(client: MlflowClient, run):
    """`run`, if this client can read its artifacts: a run made through a tracking server keeps them at
    mlflow-artifacts:/, which only that server's http(s) address reaches (a database URI raised a traceback)."""
    if run.info.artifact_uri.startswith("mlflow-artifacts:") and not client.tracking_uri.startswith("http"):
        raise ConfigError(f"--run {run.info.run_id}: its artifacts are kept by the MLflow server it was logged through "
                          f"({run.info.artifact_uri}), which --mlflow-uri {client.tracking_uri} cannot reach; give "
                          "that server's address (--mlflow-uri http://HOST:PORT)")
    return run


def child_runs(client: MlflowClient, run) -> list:
    return client.search_runs([run.info.experiment_id], max_results=10_000,
                              filter_string=f"tags.`{PARENT_TAG}` = {filter_value(run.info.run_id)}")


def run_kind(run, children: list) -> str:
    """"ablation", "tune" or "run" (see the module docstring)."""
    if ABLATION_TAG in run.data.tags and PARENT_TAG not in run.data.tags:
        return "ablation"
    if any(TRIAL_TAG in child.data.tags for child in children):
        return "tune"
    return "run"


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(epoch, value)] by epoch} of the per-epoch metrics a page draws. A resumed run may log an
    epoch twice; the later value wins."""
    curves = {}
    for name in CURVE_COLUMNS:
        if name in run.data.metrics:
            by_step = {}
            for metric in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.timestamp):
                by_step[metric.step] = metric.value
            curves[name] = sorted(by_step.items())
    return curves


def _value(text: str | None):
    """A param as logged (`str(value)`) back to a number or bool where it reads as one."""
    if text is None:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def searched_space(run) -> dict[str, str]:
    """A tune's searched dimensions, {param: spec}: its `space.NAME` (`space.MODEL.NAME` over several models)
    params that are a kind:args spec (a plain value there was fixed, not searched)."""
    return {key[len("space."):]: value for key, value in run.data.params.items()
            if key.startswith("space.") and ":" in value}


def trials_of(client: MlflowClient, children: list, space: dict) -> list[Trial]:
    """The tune's trials, in the order they started: each child run's model, searched values (its `model.NAME`
    or `train.NAME` param; a search over several models names them MODEL.NAME, and a trial has only its own
    model's), best val precision (its last `best_val_precision`, which never falls) and epochs run."""
    trials = []
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        if TRIAL_TAG not in run.data.tags:
            continue
        params, metrics = run.data.params, run.data.metrics
        model = params.get("model.name", "")
        values = {}
        for name in space:
            owner, dot, field = name.rpartition(".")
            if not dot or owner == model:
                values[name] = _value(params.get(f"model.{field}", params.get(f"train.{field}")))
        best = metrics.get("best_val_precision", metrics.get("val_precision"))
        trials.append(Trial(name=run.info.run_name or run.data.tags[TRIAL_TAG], run_id=run.info.run_id,
                            status=run.info.status, params={k: v for k, v in values.items() if v is not None},
                            best_val=best, epochs=int(metrics.get("epoch", 0)),
                            stopped_early=run.data.tags.get("corrhash.stopped_by") == "scheduler", model=model))
    return trials


def data_folder(run) -> str | None:
    return run.data.tags.get("data.path") or run.data.params.get("data")


def _download(client: MlflowClient, uri: str, folder: str) -> Path:
    """An artifact URI as a local path, through `client`'s store. A logged model's `models:/m-ID` is resolved
    to its artifact location first: MLflow resolves that form through the global tracking URI whatever
    `tracking_uri` says (and would create ./mlflow.db when none is set)."""
    logged_model = re.fullmatch(r"models:/(m-[0-9a-f]+)", uri)
    try:
        if logged_model:
            uri = client.get_logged_model(logged_model.group(1)).artifact_location
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder,
                                                        tracking_uri=client.tracking_uri))
    except (MlflowException, OSError) as exc:
        raise DataError(f"no codes map: cannot download {uri} ({' '.join(str(exc).split())})") from exc


def model_codes(client: MlflowClient, run) -> Codes:
    """The test split's codes of the run's model, with labels: from its `test_codes.npy` artifact (an ablation
    cell), else by encoding the data's test split with the model publish_model logged (its `model_uri` tag:
    MLflow 3 keeps a logged model outside the run's own artifacts). A DataError says why there are none (no
    model, data folder not on this machine, data other than the model's)."""
    data = data_folder(run)
    if not data:
        raise DataError("no codes map: the run records no data folder (tag data.path or param data)")
    if not Path(data).is_dir():
        raise DataError(f"no codes map: the run's data folder {data} is not on this machine")
    shards = TfidfShards(data)
    test = shards.split("test")
    run_id = run.info.run_id
    model_uri = run.data.tags.get("model_uri")
    with tempfile.TemporaryDirectory(prefix="corrhash-report-") as tmp:
        if any(a.path == "test_codes.npy" for a in client.list_artifacts(run_id)):
            packed = np.load(_download(client, f"runs:/{run_id}/test_codes.npy", tmp), allow_pickle=False)
            bits = int(run.data.params.get("model.bits", packed.shape[1] * 8))
            source = f"Codes: the run's test_codes.npy; labels: {data}."
        elif model_uri:
            model = load_hashing_model(_download(client, model_uri, tmp))
            if model.info.get("content_hash") not in (None, shards.content_hash):
                raise DataError(f"no codes map: {data} is not the data the model was trained on (content hash "
                                f"{shards.content_hash[:12]}, the model's {str(model.info['content_hash'])[:12]})")
            packed, bits = model.encode_features(test.features), model.bits
            source = f"Codes: {model_uri} on the test split of {data}."
        else:
            raise DataError("no codes map: the run has no logged model (model_uri tag) and no test_codes.npy")
    if len(packed) != len(test):
        raise DataError(f"no codes map: {len(packed)} codes for the {len(test)} test documents of {data}")
    try:
        unpacked = unpack_codes(packed, bits)
    except ValueError as exc:  # model.bits and the codes' width disagree
        raise DataError(f"no codes map: {exc}") from exc
    return Codes(bits=unpacked, labels=test.labels.argmax(axis=1), label_names=shards.label_names, source=source)


def page_input(client: MlflowClient, run, command: str, *, with_codes: bool = True) -> PageInput:
    """Everything but an ablation's rows (see the module docstring) for the page of `run`."""
    children = child_runs(client, run)
    kind = run_kind(run, children)
    page = PageInput(title=f"{KINDS[kind]} {run.info.run_name or run.info.run_id}", run_id=run.info.run_id,
                     mlflow_uri=client.tracking_uri, command=command, kind=kind, params=dict(run.data.params),
                     metrics=dict(run.data.metrics), curves=histories(client, run))
    if kind == "tune":
        page.space = searched_space(run)
        page.trials = trials_of(client, children, page.space)
        scored = [t for t in page.trials if t.best_val is not None]
        if not page.curves and scored:  # the parent logs no epochs: its best trial's curves stand in
            best = max(scored, key=lambda t: t.best_val)
            page.curves = histories(client, client.get_run(best.run_id))
            page.curves_of = f"the best trial, {best.name} (run {best.run_id})"
    if with_codes and kind != "ablation":  # an ablation's codes are per cell, in its own figures
        try:
            page.codes = model_codes(client, run)
        except CorrhashError as exc:
            page.notes.append(str(exc))
    return page


def grid_file(client: MlflowClient, run, folder: Path) -> Path:
    """The grid file an ablation parent logged (artifact `grid/NAME.yaml`), downloaded into `folder`."""
    files = [a.path for a in client.list_artifacts(run.info.run_id, "grid") if not a.is_dir]
    if len(files) != 1:
        raise DataError(f"run {run.info.run_id}: expected one grid file under its artifacts' grid/, found "
                        f"{len(files)}")
    return Path(client.download_artifacts(run.info.run_id, files[0], str(folder)))


def log_page(client: MlflowClient, run_id: str, page: Path) -> str:
    """Log the page as the run's `report/report.html` (whatever the local file is called); returns that path."""
    with tempfile.TemporaryDirectory(prefix="corrhash-report-") as tmp:
        copy = Path(tmp) / Path(PAGE_ARTIFACT).name
        copy.write_bytes(page.read_bytes())
        client.log_artifact(run_id, str(copy), str(Path(PAGE_ARTIFACT).parent))
    return PAGE_ARTIFACT


@dataclass
class CellRecord:
    """What MLflow recorded of one FINISHED ablation cell."""

    run_id: str
    metrics: dict
    val_curve: list[float]
    node: str


def finished_cells(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[str, CellRecord]:
    """{cell id: its record} of an ablation's FINISHED cells, its val precision curve in epoch order."""
    from corrhash.tracking.runs import CELL_TAG, NODE_TAG, cell_runs

    cells = {}
    for run in cell_runs(client, experiment_id, parent_id):
        if run.info.status != "FINISHED":
            continue
        curve = sorted(client.get_metric_history(run.info.run_id, "val_precision"), key=lambda m: m.step)
        cells[run.data.tags[CELL_TAG]] = CellRecord(run.info.run_id, dict(run.data.metrics), [m.value for m in curve],
                                                    run.data.tags.get(NODE_TAG, ""))
    return cells


def cell_codes(client: MlflowClient, run_id: str) -> np.ndarray:
    """A cell's packed test codes (its test_codes.npy artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="test_codes.npy", dst_path=tmp,
                                                   tracking_uri=client.tracking_uri)
        return np.load(path, allow_pickle=False)


def find_job_run(client: MlflowClient, experiment: str, job_name: str) -> tuple[str, str] | None:
    """(experiment id, run id) of the job named `job_name` in `experiment`; None when there is none."""
    from corrhash.tracking.runs import JOB_TAG

    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{JOB_TAG}` = {filter_value(job_name)}",
                              max_results=1) if found else []
    return (found.experiment_id, runs[0].info.run_id) if runs else None
