"""Run an ablation grid across a Ray cluster: `corrhash-ablate` (corrhash.commands.ablate), run as a script, e.g.
by `ray job submit -- python jobs/ablate.py ...`."""

import sys

from corrhash.commands.ablate import main

if __name__ == "__main__":
    sys.exit(main())
