"""Render an MLflow run as one HTML page: `corrhash-report` (corrhash.commands.report), run as a script."""

import sys

from corrhash.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
