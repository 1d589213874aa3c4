"""`corrhash COMMAND [OPTIONS]` (and `python -m corrhash`): every job under one command, as `ray`, `mlflow` and
`optuna` have one. Each COMMAND is the job of the same name (`corrhash train` is `corrhash-train` is
`python jobs/train.py`); `corrhash COMMAND --help` gives its page."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

COMMANDS = {
    "prepare-data": "prepare_data", "graph": "graph", "train": "train", "tune": "tune", "ablate": "ablate",
    "search": "search", "serve": "serve", "report": "report", "quality-table": "quality_table",
}
"""Command name -> its module in corrhash.commands, in the order a user meets them."""


def summary(module: str) -> str:
    """The first line of a command's help page (its module's docstring), read from its source: importing every
    command (torch, Ray, MLflow) made `corrhash --help` take 12 s, and over 120 s on a busy machine."""
    source = Path(importlib.util.find_spec(f"corrhash.commands.{module}").origin).read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].split(" (")[0].rstrip(".:")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary(module)}" for name, module in COMMANDS.items()]
    return ("usage: corrhash COMMAND [OPTIONS]   (corrhash COMMAND --help: the command's options)\n\ncommands:\n"
            + "\n".join(lines) + "\n\nEach command is also a script of its own (corrhash-train, ...) and a job script "
            "for `ray job submit` (python jobs/train.py, ...).")


def main(argv: list[str] | None = None) -> int:
    from corrhash.commands import version_line

    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(version_line())
        return 0
    module = COMMANDS.get(args[0])
    if module is None:
        print(f"error: unknown command {args[0]!r}; the commands are {', '.join(COMMANDS)} (corrhash --help)",
              file=sys.stderr)
        return 2
    sys.argv = [f"corrhash {args[0]}", *args[1:]]  # the command's usage line says `corrhash train ...`
    return importlib.import_module(f"corrhash.commands.{module}").main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
