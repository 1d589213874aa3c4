"""Search hashing models and their training recipes with Ray Tune + Optuna; register the best as the champion.

Examples:
  python jobs/tune.py --data data/20ng --bits 64 --num-samples 16 --name ng64-tune
  python jobs/tune.py --data data/reuters --models corrsh,nash,bmsh,sth --num-samples 24 --max-epochs 60
  ray job submit ... -- python jobs/tune.py --data "$PWD/data/20ng" --storage "$PWD/runs/tune"  # see README
  python jobs/tune.py --data data/20ng --space lr=loguniform:3e-4:3e-3 --space rank=choice:0,10

Each model declares its own default space (its recipe dimensions and its own, e.g. CorrSH's rank v and mixture k;
STH's neighbours and SVM C; `python -c "import corrhash.models as m; print(m.model_class('corrsh').search_space)"`).
--models searches several at once: one Optuna study whose conditional space picks the model, then that model's
dimensions (named MODEL.DIM). Override a dimension with --space NAME=SPEC (NAME or MODEL.NAME) or --space-file
YAML; a dimension's own flag, e.g. --dropout 0.1, pins it. ASHA stops weak trials early on val precision@k, with
epochs as the fidelity (a closed-form model's trial reports once and ends) and --max-epochs as the top. Each trial
is one MLflow child run of the job's parent run, which records each model's best trial. The best trial (by val
precision, across models) is scored once on test, logged, and registered as a new version of
corrhash-DATASET-BITSb; the alias `champion` moves to it only if its val precision beats the current champion's.
Starting the same --name again resumes an interrupted search.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import CLI, JobParser, add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.data.uri import absolute  # noqa: E402
from corrhash.errors import ConfigError, CorrhashError  # noqa: E402
from corrhash.models import ModelConfig  # noqa: E402
from corrhash.runs.space import TUNABLE, model_names, model_spaces, space_params  # noqa: E402
from corrhash.runs.spec import JobInputs, RunSpec, parse_job_args  # noqa: E402
from corrhash.runs.tune import TuneOptions  # noqa: E402
from corrhash.train import TrainConfig  # noqa: E402


def pinned(argv: list[str], values: dict) -> dict:
    """The tunable options given on the command line ({name: value}): they pin that dimension."""
    flags = {name: "--" + name.replace("_", "-") for name in TUNABLE}
    return {name: values[name] for name, flag in flags.items()
            if any(a in (flag, "--no-" + flag[2:]) or a.startswith(flag + "=") for a in argv)}


@dataclass
class SpaceOptions:
    models: str | None = None
    """search these models together, comma-separated (corrsh,nash,bmsh,sth) or 'all' (default: --model alone)"""
    max_epochs: int | None = None
    """the budget's top: most epochs of any trial and ASHA's max_t (default: --epochs)"""
    space: list[str] = field(default_factory=list, metadata={CLI: {"action": "append", "metavar": "NAME=SPEC"}})
    """override one search dimension (repeatable), e.g. dropout=uniform:0:0.3, corrsh.rank=choice:0,10"""
    space_file: Path | None = None
    """YAML mapping NAME: SPEC overriding the models' default spaces"""


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = JobParser(__doc__)
    add_dataclass_args(parser, JobInputs, "data, model family and output")
    add_dataclass_args(parser, SpaceOptions, "search space")
    add_dataclass_args(parser, TuneOptions, "search, Ray and MLflow")
    add_dataclass_args(parser, ModelConfig, "model (a flag pins that search dimension)", skip=("name", "seed"))
    add_dataclass_args(parser, TrainConfig, "training (a flag pins that search dimension)")
    args = parse_job_args(parser, argv)
    inputs, space, options = (dataclass_from_args(cls, args) for cls in (JobInputs, SpaceOptions, TuneOptions))
    models = model_names(space.models) if space.models else [inputs.model]
    model = dataclass_from_args(ModelConfig, args, name=models[0], seed=vars(args)["TrainConfig.seed"])
    train = dataclass_from_args(TrainConfig, args)
    if space.max_epochs is not None:
        if space.max_epochs < 1:
            raise ConfigError(f"--max-epochs {space.max_epochs}: must be >= 1")
        train = replace(train, epochs=space.max_epochs)
    spec = RunSpec(absolute(inputs.data), model, train)
    spaces = model_spaces(models, space.space_file, space.space, pinned(argv, {**model.to_dict(), **train.to_dict()}))
    return inputs, spec, spaces, options


def main(argv=None) -> int:
    try:
        inputs, spec, spaces, options = parse_args(argv)
        print(f"recipe: {inputs.recipe}\nmodel: {dataclasses.asdict(spec.model)}\n"
              f"train: {dataclasses.asdict(spec.train)}\nspace: {space_params(spaces)}", flush=True)
        from corrhash.runs.tune import run_tune
        results = run_tune(spec, spaces, options, inputs.out)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    # `ray job stop` and `kill` send SIGTERM: exit through Python, so runs end KILLED and temporaries go.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
