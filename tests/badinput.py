"""Bad-input cases: a job's own `main(argv)` run in this process, its exit status, message and files.

Running `main` in-process keeps each case at milliseconds instead of a Python start-up per case;
an exception escaping `main` fails the case, which is the point (a traceback is not an answer).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@cache
def job(name: str):
    """The module of the job `jobs/NAME.py` runs: `corrhash.commands.NAME` (its options, `parse_args` and `main`),
    else the script itself."""
    if importlib.util.find_spec(f"corrhash.commands.{name}") is not None:
        return importlib.import_module(f"corrhash.commands.{name}")
    spec = importlib.util.spec_from_file_location(f"corrhash_job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_job(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `python jobs/NAME.py ARGV`, the command-line parser's own exits (tyro's) included."""
    status, _, stderr = run_job_output(name, argv, capsys)
    return status, stderr


def assert_named_error(status: int, stderr: str, *names: str) -> None:
    """Exit status 2 and one error line naming each of `names` (a file, row or option)."""
    assert status == 2, f"exit {status}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "error:" in stderr, stderr
    for name in names:
        assert str(name) in stderr, f"{name!r} not named in:\n{stderr}"


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) with its bytes: compare before/after to prove nothing changed."""
    path = Path(path)
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_job_output(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python jobs/NAME.py ARGV`, the command-line parser's own exits (tyro's) included."""
    capsys.readouterr()
    try:
        status = job(name).main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def tiny_model(data: Path, out: Path, epochs: int = 2) -> Path:
    """A 16-bit NASH trained in this process on the prepared folder `data` and saved to `out` with its vocabulary:
    the real loading code's input, in seconds."""
    import json

    from corrhash.artifact import save_model
    from corrhash.data import TfidfShards
    from corrhash.models import ModelConfig
    from corrhash.train import TrainConfig, fit

    shards = TfidfShards(data)
    result = fit(ModelConfig(name="nash", bits=16, hidden=16), TrainConfig(epochs=epochs, batch_size=20, eval_k=10),
                 shards.split("train"), val=shards.split("val"))
    return save_model(out, result.model, json.loads((Path(data) / "vocab.json").read_text()),
                      {"label_names": shards.label_names})
