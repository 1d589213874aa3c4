"""Command-line options generated from config dataclasses (each field's docstring is its --help)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing


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


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str, skip: tuple[str, ...] = ()) -> None:
    """One --option per field (`--energy-terms` for a bool); defaults come from the dataclass."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        default = field.default
        help_text = f"{docs.get(field.name, '')} (default: {default})"
        if kind is bool:
            group.add_argument(flag, dest=f"{cls.__name__}.{field.name}", action=argparse.BooleanOptionalAction,
                               default=default, help=help_text)
        else:
            group.add_argument(flag, dest=f"{cls.__name__}.{field.name}", type=kind, default=default, metavar=field.name.upper(),
                               help=help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides):
    prefix = cls.__name__ + "."
    values = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    values.update(overrides)
    return cls(**values)
