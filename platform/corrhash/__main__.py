"""`python -m corrhash COMMAND [OPTIONS]`: the `corrhash` command (corrhash.commands.dispatch)."""

import sys

from corrhash.commands.dispatch import main

sys.exit(main())
