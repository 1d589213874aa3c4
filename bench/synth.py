"""Generate a seeded synthetic text corpus (Zipfian pseudo-words, topic-mixture labels, log-normal lengths,
train/val/test splits) as JSONL or Parquet files that `prepare_data.py text` reads.

Examples (from the repository root):
  python -m bench.synth --out data/raw/synth-100k --n-docs 100000 --files 8
  python jobs/prepare_data.py text --raw data/raw/synth-100k --out data/synth-100k
  python jobs/prepare_data.py text --raw data/raw/synth-100k --out data/synth-100k-ray --ray
"""

from __future__ import annotations

import sys
import time

from bench.synthetic import SynthConfig, write_corpus
from bench.options import JobParser, add_dataclass_args, dataclass_from_args
from corrhash.errors import CorrhashError


def parse_args(argv: list[str] | None = None) -> SynthConfig:
    parser = JobParser(__doc__, prog="python -m bench.synth")
    add_dataclass_args(parser, SynthConfig, "corpus and output")
    return dataclass_from_args(SynthConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(f"config: {config}", flush=True)
    started = time.monotonic()
    try:
        files = write_corpus(config)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {config.out}: {config.n_docs} documents in {len(files)} file(s), {size / 2**20:.1f} MiB, "
          f"{elapsed:.1f}s ({config.n_docs / max(elapsed, 1e-9):,.0f} docs/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
