"""Hash a corpus with a trained model and answer queries (JSONL out): `corrhash-search` (corrhash.commands.search),
run as a script, e.g. by `ray job submit -- python jobs/search.py ...`."""

import sys

from corrhash.commands.search import main

if __name__ == "__main__":
    sys.exit(main())
