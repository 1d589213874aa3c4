"""Search CorrSH hyper-parameters with Ray Tune + Optuna; register the best model as the champion.

Examples:
  python jobs/tune.py --data data/20ng --bits 64 --num-samples 16 --name ng64-tune
  ray job submit ... -- python jobs/tune.py --data "$PWD/data/20ng" --storage "$PWD/runs/tune"  # see README
  python jobs/tune.py --data data/20ng --space lr=loguniform:3e-4:3e-3 --space rank=choice:0,10

Optuna's TPE (seeded) samples dropout, rank v, mixture k and lr (default space; override with
--space NAME=SPEC or --space-file YAML; a dimension's own flag, e.g. --dropout 0.1, pins it). ASHA
stops weak trials early on val precision@k. Each trial is one MLflow child run of the job's parent
run. The best trial (by val precision) is scored once on test, logged, and registered as a new
version of corrhash-DATASET-BITSb; the alias `champion` moves to it only if its val precision beats
the current champion's. Starting the same --name again resumes an interrupted search.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import CLI, add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.data.uri import absolute  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402
from corrhash.models import ModelConfig  # noqa: E402
from corrhash.runs.space import TUNABLE, space_specs  # noqa: E402
from corrhash.runs.spec import JobInputs, RunSpec  # noqa: E402
from corrhash.runs.tune import TuneOptions  # noqa: E402
from corrhash.train import TrainConfig  # noqa: E402


def pinned(argv: list[str], values: dict) -> dict:
    """The tunable options given on the command line ({name: value}): they pin that dimension."""
    flags = {name: "--" + name.replace("_", "-") for name in TUNABLE}
    return {name: values[name] for name, flag in flags.items()
            if any(a in (flag, "--no-" + flag[2:]) or a.startswith(flag + "=") for a in argv)}


@dataclass
class SpaceOptions:
    space: list[str] = field(default_factory=list, metadata={CLI: {"action": "append", "metavar": "NAME=SPEC"}})
    """override one search dimension (repeatable), e.g. dropout=uniform:0:0.3, rank=choice:0,10"""
    space_file: Path | None = None
    """YAML mapping NAME: SPEC overriding the default space"""


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, JobInputs, "data, model family and output")
    add_dataclass_args(parser, SpaceOptions, "search space")
    add_dataclass_args(parser, TuneOptions, "search, Ray and MLflow")
    add_dataclass_args(parser, ModelConfig, "model (a flag pins that search dimension)", skip=("name", "seed"))
    add_dataclass_args(parser, TrainConfig, "training (a flag pins that search dimension)")
    args = parser.parse_args(argv)
    inputs, space, options = (dataclass_from_args(cls, args) for cls in (JobInputs, SpaceOptions, TuneOptions))
    model = dataclass_from_args(ModelConfig, args, name=inputs.model, seed=vars(args)["TrainConfig.seed"])
    train = dataclass_from_args(TrainConfig, args)
    spec = RunSpec(absolute(inputs.data), model, train)
    specs = space_specs(space.space_file, space.space, pinned(argv, {**model.to_dict(), **train.to_dict()}))
    return inputs, spec, specs, options


def main(argv=None) -> int:
    try:
        inputs, spec, specs, options = parse_args(argv)
        print(f"model: {dataclasses.asdict(spec.model)}\ntrain: {dataclasses.asdict(spec.train)}\n"
              f"space: {specs}", flush=True)
        from corrhash.runs.tune import run_tune
        results = run_tune(spec, specs, options, inputs.out)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    # `ray job stop` and `kill` send SIGTERM: exit through Python, so runs end KILLED and temporaries go.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
