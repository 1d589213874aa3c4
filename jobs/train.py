"""Train a hashing model on prepared shards; select on validation, score test once, save the model.

Example:
  python jobs/train.py --data data/20ng --model corrsh --bits 64 --out runs/20ng-corrsh-64
Writes OUT/metrics.jsonl (per epoch), OUT/results.json and OUT/model/ (safetensors + JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402
from corrhash.models import ModelConfig, list_models  # noqa: E402
from corrhash.train import TrainConfig  # noqa: E402
from corrhash.train.run import train_and_evaluate  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder written by jobs/prepare_data.py")
    parser.add_argument("--out", type=Path, required=True, help="run folder for metrics, results and the model")
    parser.add_argument("--skip-test", action="store_true",
                        help="do not score the test split (exploratory runs select and report on val only)")
    parser.add_argument("--model", default="corrsh", choices=list_models(), help="model name (default: corrsh)")
    add_dataclass_args(parser, ModelConfig, "model", skip=("name", "seed"))
    add_dataclass_args(parser, TrainConfig, "training")
    args = parser.parse_args(argv)
    return (args, dataclass_from_args(ModelConfig, args, name=args.model, seed=args.__dict__["TrainConfig.seed"]), dataclass_from_args(TrainConfig, args))


def main(argv=None) -> int:
    try:
        args, model_config, train_config = parse_args(argv)
        print(f"model: {dataclasses.asdict(model_config)}\ntrain: {dataclasses.asdict(train_config)}", flush=True)
        summary = train_and_evaluate(args.data, model_config, train_config, args.out, score_test=not args.skip_test)
    except (CorrhashError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["test_precision"] is not None:
        print(f"test precision@{train_config.eval_k}: {summary['test_precision']:.4f} (tie-aware), "
              f"{summary['test_precision_ordered']:.4f} (ordered); model in {args.out / 'model'}")
    else:
        print(f"val precision@{train_config.eval_k}: {summary['val_precision']:.4f}; model in {args.out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
