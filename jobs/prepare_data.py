"""Turn a raw corpus into Parquet TF-IDF shards (train/val/test), vocab.json and manifest.json.

Examples:
  python jobs/prepare_data.py 20ng --raw 20news-bydate.tar.gz --out data/20ng
  python jobs/prepare_data.py 20ng --release 18828 --raw 20news-bydate.tar.gz --out data/20ng-paper
  python jobs/prepare_data.py reuters --raw reuters21578/ --out data/reuters --top-labels 20
  python jobs/prepare_data.py text --raw corpus.jsonl --out data/mine
Without --raw the corpus is looked up under $CORRHASH_RAW_DIR; 20ng is otherwise downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.data import PrepareConfig, prepare  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, PrepareConfig, "corpus and output")
    return dataclass_from_args(PrepareConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(f"config: {config}", flush=True)
    try:
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
