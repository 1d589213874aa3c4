"""Turn a raw corpus into Parquet TF-IDF shards (train/val/test), vocab.json and manifest.json.

Examples:
  python jobs/prepare_data.py 20ng --raw 20news-bydate.tar.gz --out data/20ng
  python jobs/prepare_data.py 20ng --release 18828 --raw 20news-bydate.tar.gz --out data/20ng-paper
  python jobs/prepare_data.py reuters --raw reuters21578/ --out data/reuters --top-labels 20
  python jobs/prepare_data.py text --raw corpus.jsonl --out data/mine
  python jobs/prepare_data.py text --raw parts/*.jsonl --out data/big --ray   # Ray Data, same output
Without --raw the corpus is looked up under $CORRHASH_RAW_DIR; 20ng is otherwise downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import JobParser, add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.data.prepare import PrepareConfig, prepare  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[PrepareConfig, argparse.Namespace]:
    parser = JobParser(__doc__)
    add_dataclass_args(parser, PrepareConfig, "corpus and output")
    where = parser.add_argument_group("where it runs (not part of the output: both give the same files)")
    where.add_argument("--ray", action="store_true",
                       help="text only: spread the work over a Ray cluster with Ray Data (same output as without)")
    where.add_argument("--address", default=None,
                       help="with --ray: the Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    if args.address is not None and not args.ray:
        parser.error("--address applies with --ray only")
    return dataclass_from_args(PrepareConfig, args), args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    print(f"config: {config}", flush=True)
    try:
        if args.ray:
            from corrhash.data.prepare_ray import prepare_on_ray

            manifest = prepare_on_ray(config, args.address)
        else:
            manifest = prepare(config)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {name: split["documents"] for name, split in manifest["splits"].items()}
    print(f"wrote {config.out}: {counts}, n_features={manifest['n_features']}, "
          f"content_hash={manifest['content_hash']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
