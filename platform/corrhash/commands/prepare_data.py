"""Turn a raw corpus into Parquet TF-IDF shards (train/val/test), vocab.json and manifest.json.

Examples:
  python jobs/prepare_data.py 20ng --raw 20news-bydate.tar.gz --out data/20ng
  python jobs/prepare_data.py 20ng --release 18828 --raw 20news-bydate.tar.gz --out data/20ng-paper
  python jobs/prepare_data.py reuters --raw reuters21578/ --out data/reuters --top-labels 20
  python jobs/prepare_data.py text --raw corpus.jsonl --out data/mine
  python jobs/prepare_data.py text --raw parts/*.jsonl --out data/big --ray   # Ray tasks, same output

Without --raw the corpus is looked up under $CORRHASH_RAW_DIR; 20ng is otherwise downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.constructors import PrimitiveConstructorSpec

from corrhash import commands
from corrhash.data.featurize import TfidfRecipe
from corrhash.data.prepare import DATASETS, PrepareConfig, prepare
from corrhash.errors import ConfigError

# On the command line the stop-word list is one flag taking no value, --no-stop-words (None: keep them).
_NO_STOP_WORDS = PrimitiveConstructorSpec(nargs=0, metavar="", instance_from_str=lambda args: None,
                                          is_instance=lambda value: value is None or isinstance(value, str),
                                          str_from_instance=lambda value: [])


def plain(flags, cls):
    """The options as the plain `cls` they extend (dataclass equality compares classes; manifests print it)."""
    return cls(**{f.name: getattr(flags, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class TfidfFlags(TfidfRecipe):
    """TfidfRecipe on the command line: the stop-word list is the flag --no-stop-words."""

    stop_words: Annotated[str | None, _NO_STOP_WORDS, tyro.conf.arg(name="no-stop-words",
                                                                    help_behavior_hint="(default: english)")] = "english"
    """Stop-word list removed before counting: scikit-learn's 'english'; --no-stop-words keeps them (None)."""


@dataclass
class PrepareFlags(PrepareConfig):
    """PrepareConfig on the command line: the dataset positional, --raw taking several paths or URIs."""

    dataset: Annotated[Literal[DATASETS], tyro.conf.Positional]  # type: ignore[valid-type]
    """Corpus kind: 20ng, reuters, tmc, text (JSONL/CSV/Parquet) or mat (VDSH .mat file)."""
    raw: Annotated[Path | list[Path | str] | None,
                   tyro.conf.arg(constructor_factory=lambda: list[str] | None, metavar="PATH|URI [...]",
                                 help_behavior_hint="(default: None)")] = None
    """Raw archive, folder or file; text takes several files, folders of them, glob patterns or URIs (s3://,
    gs://, file://: an object or a prefix), read in the order given as one table; default: $CORRHASH_RAW_DIR,
    else (20ng only) download."""
    recipe: TfidfFlags = TfidfFlags()
    """TF-IDF recipe (vocabulary fitted on train only)"""

    def config(self) -> PrepareConfig:
        """The plain PrepareConfig (and TfidfRecipe) these flags give."""
        config = plain(self, PrepareConfig)
        config.recipe = plain(self.recipe, TfidfRecipe)
        return config


@dataclass
class WhereOptions:
    """Where it runs (not part of the output: both give the same files)."""

    ray: bool = False
    """text only: spread the work over a Ray cluster as Ray tasks (same output as without)"""
    address: str | None = None
    """with --ray: the Ray cluster (default: $RAY_ADDRESS, else a local Ray)"""

    def __post_init__(self) -> None:
        if self.address is not None and not self.ray:
            raise ConfigError("--address applies with --ray only")


@dataclass
class PrepareJob:
    config: PrepareFlags
    """corpus and output"""
    where: WhereOptions = field(default_factory=WhereOptions)
    """where it runs (not part of the output: both give the same files)"""


def parse_args(argv: list[str] | None = None) -> tuple[PrepareConfig, WhereOptions]:
    job = commands.parse(PrepareJob, __doc__, argv, title="prepare")
    return job.config.config(), job.where


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
