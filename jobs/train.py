"""Train a hashing model on prepared shards: `corrhash-train` (corrhash.commands.train), run as a script, e.g. by
`ray job submit -- python jobs/train.py ...`."""

import sys

from corrhash.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
