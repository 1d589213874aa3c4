"""Serve a trained model and an index over HTTP with Ray Serve: `corrhash-serve` (corrhash.commands.serve), run as
a script, e.g. by `ray job submit -- python jobs/serve.py ...`."""

import sys

from corrhash.commands.serve import main

if __name__ == "__main__":
    sys.exit(main())
