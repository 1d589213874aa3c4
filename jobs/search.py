"""Hash a corpus with a trained model and answer queries with the nearest documents (JSONL out).

Examples:
  python jobs/search.py --model models:/corrhash-20ng-64b@champion --corpus data/20ng --index-out idx.npz
  echo "the shuttle launch was delayed" | python jobs/search.py --model ... --index idx.npz --queries - --k 5
  python jobs/search.py --model runs:/RUN_ID/model --corpus docs.jsonl --queries questions.txt

--corpus is a prepared shard folder (its --split, ids = doc_id), a .jsonl file (a `text` field and an
optional `id`), or a text file (one document per line, ids = line numbers). Queries come one per line
from --queries FILE or stdin (-). Each answer line: {"query": i, "text": ..., "hits": [{"id", "distance"}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.errors import CorrhashError, DataError  # noqa: E402


def read_corpus(path: Path, split: str):
    """(texts or None, features or None, ids) of a corpus path."""
    from corrhash.data import TfidfShards

    if path.is_dir():
        data = TfidfShards(path).split(split)
        return None, data.features, data.doc_ids
    if not path.is_file():
        raise DataError(f"{path}: no such corpus file or shard folder")
    texts, ids = [], []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                texts.append(str(row["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}, line {line_no}: expected a JSON object with a 'text' field") from exc
            ids.append(row.get("id", line_no - 1))
        else:
            texts.append(line)
            ids.append(line_no - 1)
    return texts, None, ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="models:/NAME@champion, runs:/ID/model or a model folder")
    parser.add_argument("--corpus", type=Path, help="documents to index (shard folder, .jsonl or .txt)")
    parser.add_argument("--split", default="train", help="split of a shard folder to index (default: train)")
    parser.add_argument("--index", type=Path, help="load a saved index instead of hashing --corpus")
    parser.add_argument("--index-out", type=Path, help="save the index here (.npz + .json beside it)")
    parser.add_argument("--queries", help="file of queries, one per line, or - for stdin")
    parser.add_argument("--k", type=int, default=10, help="hits per query (default: 10)")
    args = parser.parse_args(argv)
    try:
        import corrhash
        from corrhash.serve.index import HammingIndex

        if (args.corpus is None) == (args.index is None):
            raise DataError("give exactly one of --corpus (to hash) or --index (to load)")
        model = corrhash.load(args.model)
        if args.index:
            index = HammingIndex.load(args.index)
            if index.bits != model.bits:
                raise DataError(f"{args.index}: {index.bits}-bit codes, but the model makes {model.bits}-bit codes")
        else:
            texts, features, ids = read_corpus(args.corpus, args.split)
            index = model.index(texts, ids=ids, features=features)
            print(f"indexed {len(index)} documents from {args.corpus}", file=sys.stderr)
        if args.index_out:
            index.save(args.index_out)
            print(f"saved index to {args.index_out}", file=sys.stderr)
        if args.queries:
            source = sys.stdin if args.queries == "-" else open(args.queries, encoding="utf-8")
            queries = [line.rstrip("\n") for line in source if line.strip()]
            ids, distances = model.search(index, queries, args.k) if queries else ([], [])
            for i, query in enumerate(queries):
                hits = [{"id": int(d), "distance": int(h)} for d, h in zip(ids[i], distances[i])]
                print(json.dumps({"query": i, "text": query, "hits": hits}))
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
