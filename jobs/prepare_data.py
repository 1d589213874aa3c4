"""Turn a raw corpus into Parquet TF-IDF shards (train/val/test), vocab.json and manifest.json.

Examples:
  python jobs/prepare_data.py 20ng --raw 20news-bydate.tar.gz --out data/20ng
  python jobs/prepare_data.py reuters --raw reuters21578/ --out data/reuters --top-labels 20
  python jobs/prepare_data.py text --raw corpus.jsonl --out data/mine
Without --raw the corpus is looked up under $CORRHASH_RAW_DIR; 20ng is otherwise downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.data import DATASETS, PrepareConfig, TfidfRecipe, prepare  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    defaults = TfidfRecipe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS, help="kind of raw corpus")
    parser.add_argument("--raw", type=Path, help="raw archive, folder or file (default: $CORRHASH_RAW_DIR, "
                        "else download for 20ng)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder written by "
                        "prepare_data (never any other folder, a file, or one holding the raw input)")
    parser.add_argument("--encoding", help="text encoding of the raw files (default: utf-8 for text; latin-1 for "
                        "20ng, reuters and tmc, whose files are not all UTF-8)")
    recipe = parser.add_argument_group("TF-IDF recipe (vocabulary fitted on train only)")
    recipe.add_argument("--max-features", type=int, default=defaults.max_features, help="vocabulary size")
    recipe.add_argument("--max-df", type=float, default=defaults.max_df,
                        help="drop terms in more than this fraction of train documents")
    recipe.add_argument("--min-df", type=int, default=defaults.min_df,
                        help="drop terms in fewer than this many train documents")
    recipe.add_argument("--no-stop-words", action="store_true", help="keep English stop words")
    recipe.add_argument("--min-tokens", type=int, default=defaults.min_tokens,
                        help="drop documents with fewer in-vocabulary tokens")
    recipe.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="drop documents with more in-vocabulary tokens")
    recipe.add_argument("--norm", choices=("l2", "none"), default=defaults.norm,
                        help="row normalization of the TF-IDF vectors")
    parser.add_argument("--rows-per-shard", type=int, default=2000, help="documents per Parquet file")
    parser.add_argument("--seed", type=int, default=0, help="seed for the val/test halving and text splits")
    parser.add_argument("--keep-boilerplate", action="store_true",
                        help="20ng: keep headers, signature footers and quoted replies")
    parser.add_argument("--top-labels", type=int, default=20, help="reuters: keep the N most frequent categories "
                        "(0 keeps all)")
    parser.add_argument("--label-delimiter", default=",", help="text: delimiter of a string labels column")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="text without a split column: fraction held out, then halved into val/test")
    parser.add_argument("--limit", type=int, help="keep a seeded sample of at most N documents per split "
                        "(vocabulary still fitted on the full train split)")
    args = parser.parse_args(argv)
    recipe_args = TfidfRecipe(max_features=args.max_features, max_df=args.max_df, min_df=args.min_df,
                              stop_words=None if args.no_stop_words else "english",
                              min_tokens=args.min_tokens, max_tokens=args.max_tokens, norm=args.norm)
    return PrepareConfig(dataset=args.dataset, out=args.out, raw=args.raw, recipe=recipe_args,
                         rows_per_shard=args.rows_per_shard, seed=args.seed,
                         keep_boilerplate=args.keep_boilerplate, top_labels=args.top_labels,
                         label_delimiter=args.label_delimiter, test_fraction=args.test_fraction,
                         overwrite=args.overwrite, limit=args.limit, encoding=args.encoding)


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
