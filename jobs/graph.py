"""Search and cache a corpus's document graph: `corrhash-graph` (corrhash.commands.graph), run as a script, e.g. by
`ray job submit -- python jobs/graph.py --data ... --ray`."""

import sys

from corrhash.commands.graph import main

if __name__ == "__main__":
    sys.exit(main())
