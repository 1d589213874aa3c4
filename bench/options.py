"""Command-line options from dataclasses for the benchmark scripts: argparse only, as the GPU machine has no tyro.

A field becomes `--field-name` (`--flag/--no-flag` for a bool); a field without a default is required.
A field whose type is itself a dataclass gets its own group of options. `field(metadata={CLI: {...}})`
adjusts one option: `positional`, `flags` (other option strings), or any `add_argument` keyword
(`choices`, `action`, `const`, ...).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import textwrap
import typing

from corrhash.log import quiet_dependencies, set_level

CLI = "cli"  # the dataclasses.field metadata key read here


class JobParser(argparse.ArgumentParser):
    """A job's parser: the job's docstring as its help page, `--version`, and the output options every job has
    (`--quiet`, `--verbose`), applied as soon as the command line is parsed."""

    def __init__(self, doc: str | None, **kwargs):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        from importlib.metadata import version  # not corrhash.__version__: the package root imports tracking/

        self.add_argument("--version", action="version", version=f"corrhash {version('corrhash')}")
        group = self.add_argument_group("output").add_mutually_exclusive_group()
        group.add_argument("-q", "--quiet", action="store_true", dest="JobParser.quiet",
                           help="only warnings and errors on stderr: no progress lines or bars")
        group.add_argument("-v", "--verbose", action="store_true", dest="JobParser.verbose",
                           help="also debug lines, and Ray Train's DEBUG lines and per-rank report and checkpoint lines")

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        options = vars(namespace)
        set_level(logging.WARNING if options.get("JobParser.quiet") else
                  logging.DEBUG if options.get("JobParser.verbose") else logging.INFO)
        quiet_dependencies()
        return namespace, rest


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a dataclass body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _base_type(annotation) -> type:
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # "float | None" under postponed annotations
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default  # MISSING: the option is required


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str, skip: tuple[str, ...] = (),
                       defaults: object | None = None) -> None:
    """One option per field of `cls` in a group titled `title`; defaults come from the dataclass (or from
    `defaults`, an instance: a nested field's default_factory)."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = _base_type(hints[field.name])
        if dataclasses.is_dataclass(kind):
            nested = _default(field)
            add_dataclass_args(parser, kind, docs.get(field.name, field.name),
                               defaults=None if nested is dataclasses.MISSING else nested)
            continue
        options = dict(field.metadata.get(CLI, {}))
        dest = f"{cls.__name__}.{field.name}"
        help_text = docs.get(field.name, "")
        default = _default(field) if defaults is None else getattr(defaults, field.name)
        if default is not dataclasses.MISSING:
            help_text += f" (default: {default})" if default not in (None, []) else ""
            options.setdefault("default", default)
        if options.pop("positional", False):
            group.add_argument(dest, metavar=field.name, type=kind, help=help_text, **options)
            continue
        flags = options.pop("flags", ["--" + field.name.replace("_", "-")])
        if default is dataclasses.MISSING:
            options["required"] = True
        if kind is bool and "action" not in options:
            options["action"] = argparse.BooleanOptionalAction
        elif "action" not in options:
            options.setdefault("type", kind)
            if "choices" not in options:  # argparse shows {a,b} for choices
                options.setdefault("metavar", field.name.upper())
        group.add_argument(*flags, dest=dest, help=help_text, **options)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides):
    """`cls` built from the options `add_dataclass_args` added (nested dataclasses included)."""
    prefix = cls.__name__ + "."
    values = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = _base_type(hints[field.name])
        if dataclasses.is_dataclass(kind) and field.name not in overrides:
            values[field.name] = dataclass_from_args(kind, args)
    values.update(overrides)
    return cls(**values)

