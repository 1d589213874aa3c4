"""The jobs' command lines, one module per job: its docstring is its `--help` page, its options are dataclasses
(a field's docstring is its help, cleanrl style) parsed by tyro, and its `main(argv=None) -> int` is the console
script `corrhash-NAME` (pyproject.toml) that `jobs/NAME.py` also runs.

What every job shares is here, once:

- `parse`: the options from the command line with tyro. Flags are unprefixed even for nested dataclasses
  (`--bits`, not `--model.bits`); a bool field is `--flag/--no-flag`; a `Literal` field takes one of its values;
  an optional field (`X | None = None`) takes an X (`None` is only its default).
  Every job also answers `--version` and has the output options `-q/--quiet` (only warnings and errors) and
  `-v/--verbose` (also debug lines), applied through `corrhash.log` as soon as the command line is parsed.
- `run`: a job's exit status. SIGTERM (`ray job stop`, `kill`) exits through Python with 128 + the signal, so
  MLflow runs end KILLED and temporaries go; a `CorrhashError` (or, last resort, an `OSError`) is printed as one
  `error: ...` line on stderr and exits 2. A command line tyro cannot parse exits 2 with tyro's own message.

Nothing below this package imports it: the option dataclasses live with the code they configure and carry only
tyro's type annotations (`Literal`, `tyro.conf.*`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import typing
from typing import Annotated, Callable, Sequence, TypeVar

import tyro

from corrhash.errors import CorrhashError
from corrhash.log import quiet_dependencies, set_level

T = TypeVar("T")
_QUIET_OR_VERBOSE = tyro.conf.create_mutex_group(required=False, title="output")


@dataclasses.dataclass
class OutputOptions:
    quiet: Annotated[bool, tyro.conf.arg(aliases=("-q",)), tyro.conf.FlagCreatePairsOff, _QUIET_OR_VERBOSE] = False
    """only warnings and errors on stderr: no progress lines or bars"""
    verbose: Annotated[bool, tyro.conf.arg(aliases=("-v",)), tyro.conf.FlagCreatePairsOff, _QUIET_OR_VERBOSE] = False
    """also debug lines, and Ray Train's DEBUG lines and per-rank report and checkpoint lines"""

    def apply(self) -> None:
        set_level(logging.WARNING if self.quiet else logging.DEBUG if self.verbose else logging.INFO)
        quiet_dependencies()


def version_line() -> str:
    from importlib.metadata import version  # the installed version: the package root would pull tracking/ in

    return f"corrhash {version('corrhash')}"


def _command_type(options: type, title: str) -> type:
    """A dataclass of the job's options (group `title`) and the options every job has (`parse` answers
    --version before tyro parses; the field puts it in the help page)."""
    version = Annotated[bool, tyro.conf.FlagCreatePairsOff, tyro.conf.arg(help="print corrhash's version and exit")]
    return dataclasses.make_dataclass(f"{options.__name__}Command", [
        ("options", Annotated[options, tyro.conf.arg(name=title)]),
        ("output", OutputOptions, dataclasses.field(default_factory=OutputOptions)),
        ("version", version, False),
    ])


def parse(options: type[T], doc: str | None, argv: Sequence[object] | None = None, *,
          title: str = "job", default: T | None = None) -> T:
    """`options` from `argv` (default: the process's arguments), with `doc` as the --help page; `default`, an
    instance, gives the options' starting values (a flag given wins over it). Applies -q/-v; `--version` prints
    the version and exits 0 whatever else is given (as argparse's version action does, before required options
    are checked). A command line tyro refuses exits 2 (SystemExit); a `CorrhashError` raised by an options
    dataclass's `__post_init__` propagates to `run`."""
    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if "--version" in (args[:args.index("--")] if "--" in args else args):
        print(version_line())
        raise SystemExit(0)
    kwargs = {} if default is None else {"default": _command_type(options, title)(options=default)}
    command = tyro.cli(_command_type(options, title), args=args, description=doc,
                       config=(tyro.conf.OmitArgPrefixes, tyro.conf.DisallowNone), **kwargs)
    command.output.apply()
    return command.options


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM: exit through Python (finally blocks and context managers run: MLflow runs end KILLED, a Serve app
    is deleted). Ray's C++ handler, which sees SIGTERM first in a process connected to Ray and passes it on, may
    have set a 3 s alarm that aborts the process (ray-project/ray#64830); the cleanup can take longer, so the alarm
    is cancelled."""
    signal.alarm(0)
    sys.exit(128 + signum)


def install_sigterm() -> None:
    """(Re)install `exit_on_sigterm`, e.g. after `ray.init`, which installs its own handler."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)


def run(job: Callable[[], int | None]) -> int:
    """The exit status of `job()` (which parses its options and runs): its own status (0 for None); 2, with
    `error: ...` on stderr, when it raises a CorrhashError or (last resort: the library names what it can as a
    DataError) an OSError. SIGTERM exits with 128 + 15 while it runs."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm) if in_main_thread else None
    try:
        status = job()
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:  # a main(argv) called in-process (tests) leaves the caller's handler as it was
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0 if status is None else status


def optional_flags(config: type, skip: tuple[str, ...] = ()) -> type:
    """A dataclass with one optional flag per field of the dataclass `config` (but `skip`): the field's type, its
    docstring as help, its default shown, and None when the flag is not given. tyro cannot tell a flag given from a
    default (brentyi/tyro#254); a job that must know (a training recipe's values are overridden only by the flags
    given; a tune's flag pins its dimension) parses these and reads `given`."""
    import docstring_parser  # tyro's own docstring reader

    docs = {p.arg_name: p.description for p in docstring_parser.parse_from_object(config).params}
    hints = typing.get_type_hints(config, include_extras=True)
    fields = []
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = tyro.conf.arg(help=docs.get(f.name) or "", help_behavior_hint=f"(default: {default})")
        fields.append((f.name, Annotated[hints[f.name] | None, tyro.conf.DisallowNone, shown], None))
    return dataclasses.make_dataclass(f"{config.__name__}Flags", fields)


def given(flags: object) -> dict:
    """{field: value} of the `optional_flags` given on the command line."""
    return {k: v for k, v in dataclasses.asdict(flags).items() if v is not None}
