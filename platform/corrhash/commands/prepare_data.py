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

from dataclasses import dataclass, field

from corrhash import commands
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.errors import ConfigError


@dataclass
class WhereOptions:
    """Where it runs (not part of the output: both give the same files)."""

    ray: bool = False
    """text only: spread the work over a Ray cluster with Ray Data (same output as without)"""
    address: str | None = None
    """with --ray: the Ray cluster (default: $RAY_ADDRESS, else a local Ray)"""

    def __post_init__(self) -> None:
        if self.address is not None and not self.ray:
            raise ConfigError("--address applies with --ray only")


@dataclass
class PrepareJob:
    config: PrepareConfig
    """corpus and output"""
    where: WhereOptions = field(default_factory=WhereOptions)
    """where it runs (not part of the output: both give the same files)"""


def parse_args(argv: list[str] | None = None) -> tuple[PrepareConfig, WhereOptions]:
    job = commands.parse(PrepareJob, __doc__, argv, title="prepare")
    return job.config, job.where


def main(argv: list[str] | None = None) -> int:
    def job() -> None:
        config, where = parse_args(argv)
        print(f"config: {config}", flush=True)
        if where.ray:
            from corrhash.data.prepare_ray import prepare_on_ray

            manifest = prepare_on_ray(config, where.address)
        else:
            manifest = prepare(config)
        counts = {name: split["documents"] for name, split in manifest["splits"].items()}
        print(f"wrote {config.out}: {counts}, n_features={manifest['n_features']}, "
              f"content_hash={manifest['content_hash']}")

    return commands.run(job)
