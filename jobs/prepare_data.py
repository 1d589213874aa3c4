"""Turn a raw corpus into Parquet TF-IDF shards: `corrhash-prepare-data` (corrhash.commands.prepare_data), run as a
script, e.g. by `ray job submit -- python jobs/prepare_data.py ...`."""

import sys

from corrhash.commands.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
