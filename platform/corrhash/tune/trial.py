"""One Tune trial: the shared epoch loop in the trial's process, reporting every epoch to Tune."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from corrhash.data import TfidfShards
from corrhash.device import resolve_device
from corrhash.errors import ConfigError, CorrhashError
from corrhash.models import ModelConfig
from corrhash.train.config import TrainConfig
from corrhash.train import checkpoint as checkpoint_format
from corrhash.train.loop import fit, new_state
from corrhash.tune.space import TUNABLE


def trial_configs(config: dict) -> tuple[ModelConfig, TrainConfig]:
    model = dict(config["base_model"])
    train = dict(config["base_train"])
    for name, value in config.items():
        if name in TUNABLE:
            (model if TUNABLE[name] == "model" else train)[name] = value
    return ModelConfig.from_dict(model), TrainConfig.from_dict(train)


def _drawable(name: str, domain) -> list:
    """The extreme values a domain can draw (every value of a choice); a plain value is fixed."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, (Float, Integer)):
        if not domain.lower < domain.upper:
            raise ConfigError(f"search space {name}: empty range {domain.lower}..{domain.upper}")
        # Tune's upper bounds are exclusive: the largest draw is just below `upper`.
        top = domain.upper - 1 if isinstance(domain, Integer) else math.nextafter(domain.upper, domain.lower)
        return [domain.lower, top]
    return [domain]


def check_space(space: dict, base_model: ModelConfig, base_train: TrainConfig) -> None:
    """Every value the search can draw must make a valid ModelConfig/TrainConfig of the right type.
    Checked in the driver before Ray starts: a bad range would otherwise fail every trial."""
    fixed = {"base_model": base_model.to_dict(), "base_train": base_train.to_dict()}
    for name, domain in space.items():
        default = getattr(base_model if TUNABLE[name] == "model" else base_train, name)
        for value in _drawable(name, domain):
            kind_ok = (isinstance(value, bool) if isinstance(default, bool)
                       else not isinstance(value, bool) and isinstance(value, int if isinstance(default, int)
                                                                       else (int, float)))
            if not kind_ok:
                raise ConfigError(f"search space {name}: can draw {value!r}, but {name} is a "
                                  f"{type(default).__name__}")
            try:
                trial_configs({**fixed, name: value})
            except (ValueError, CorrhashError) as exc:
                raise ConfigError(f"search space {name}: can draw {value!r}, which is invalid ({exc})") from exc


def tune_trial(config: dict) -> None:
    """Tune function trainable. `config`: tuned params + data, base_model, base_train, mlflow, threads."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from corrhash.tracking.runs import filter_value, flatten, log_metrics

    torch.set_num_threads(int(config.get("threads", 1)))
    model_config, train_config = trial_configs(config)
    device = resolve_device("auto")
    train_config = TrainConfig.from_dict({**train_config.to_dict(), "device": str(device)})
    shards = TfidfShards(config["data"])
    train, val = shards.split("train"), shards.split("val")
    state = new_state(model_config, train_config, shards.n_features, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            checkpoint_format.restore(Path(directory), state, 0, device)

    trial_id = tune.get_context().get_trial_id()
    client = MlflowClient(config["mlflow"]["uri"])
    found = client.search_runs([config["mlflow"]["experiment_id"]],
                               filter_string=f"tags.`corrhash.trial` = {filter_value(trial_id)} and tags."
                                             f"`mlflow.parentRunId` = {filter_value(config['mlflow']['parent_run_id'])}")
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(config["mlflow"]["experiment_id"], run_name=trial_id, tags={
            "mlflow.parentRunId": config["mlflow"]["parent_run_id"], "corrhash.trial": trial_id}).info.run_id
        for key, value in flatten({"model": model_config.to_dict(), "train": train_config.to_dict()}).items():
            client.log_param(run_id, key, value)

    def on_epoch(metrics: dict, state) -> bool:
        log_metrics(client, run_id, metrics, step=metrics["epoch"])
        with tempfile.TemporaryDirectory() as directory:
            checkpoint_format.save(Path(directory), state)
            tune.report({**metrics, "mlflow_run_id": run_id},
                        checkpoint=tune.Checkpoint.from_directory(directory))
        return False

    try:
        fit(model_config, train_config, train, val=val, on_epoch=on_epoch, state=state)
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # the driver closes only runs of trials that reported
        raise
