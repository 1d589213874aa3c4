"""Search hashing models and their training recipes with Ray Tune + Optuna: `corrhash-tune`
(corrhash.commands.tune), run as a script, e.g. by `ray job submit -- python jobs/tune.py ...`."""

import sys

from corrhash.commands.tune import main

if __name__ == "__main__":
    sys.exit(main())
