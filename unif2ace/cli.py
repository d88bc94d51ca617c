"""Bind a flat config dataclass to a command line: one ``--flag-name`` per field, its docstring
as the help text, its default as the default, booleans as ``--flag / --no-flag``.

    from unif2ace.cli import parse_dataclass
    cfg = parse_dataclass(TrainClipConfig, argv, description=__doc__)

Values go through the config library's coercion, so a bad value is a one-line error naming
the flag, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from unif2ace.config import ConfigError, _coerce, field_docs

T = TypeVar("T")


def build_parser(cls: type, description: str = "", required: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass ``cls``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = docs.get(f.name, "")
        if hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            p.add_argument(flag, default=default, required=f.name in required, metavar=f.name.upper(),
                           help=f"{help_} (default: {default!r})")
    return p


def parse_dataclass(cls: type[T], argv: list[str] | None = None, description: str = "",
                    required: tuple[str, ...] = ()) -> T:
    """Parse ``argv`` into an instance of ``cls``; exits with a one-line message on a bad value."""
    p = build_parser(cls, description, required)
    ns = vars(p.parse_args(argv))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        v = ns[f.name]
        if isinstance(v, str) and hints[f.name] is not str:
            try:
                v = _yaml_scalar(v)
            except ValueError as e:
                p.error(f"--{f.name.replace('_', '-')}: {e}")
        try:
            values[f.name] = _coerce(v, hints[f.name], "--" + f.name.replace("_", "-"))
        except ConfigError as e:
            p.error(str(e))
    return cls(**values)


def _yaml_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {text!r}: {e}") from None
