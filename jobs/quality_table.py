"""A markdown table of test precision@k from results.json files: `corrhash-quality-table`
(corrhash.commands.quality_table), run as a script."""

import sys

from corrhash.commands.quality_table import main

if __name__ == "__main__":
    sys.exit(main())
