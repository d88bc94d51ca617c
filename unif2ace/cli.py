"""Bind a config dataclass to a command line: one ``--flag-name`` per field, its docstring as
the help text, its default as the default, booleans as ``--flag / --no-flag``. Every command in
``unif2ace.commands`` declares its options this way (kebab-case flags; run-recipe overrides
stay ``key=value`` positionals).

    from unif2ace.cli import parse_dataclass, parse_with_extras
    cfg = parse_dataclass(TrainClipConfig, argv, description=__doc__)
    cfg, args = parse_with_extras(PrecomputeConfig, argv, __doc__, extras=add_source_flags,
                                  exclude=("command",))      # args: the extra flags

Values go through the config library's coercion, so a bad value is a one-line error naming
the flag, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, TypeVar

from unif2ace.config import ConfigError, coerce, field_docs

T = TypeVar("T")


def flag(name: str) -> str:
    """``image_size`` → ``--image-size``: the one flag spelling of every command."""
    return "--" + name.replace("_", "-")


def build_parser(cls: type, description: str = "", required: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass ``cls`` (except ``exclude``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = docs.get(f.name, "")
        if hints[f.name] is bool:
            p.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                           help=help_)
        else:
            p.add_argument(flag(f.name), dest=f.name, default=default, required=f.name in required,
                           metavar=f.name.upper(), help=f"{help_} (default: {default!r})")
    return p


def parse_with_extras(cls: type[T], argv: list[str] | None = None, description: str = "",
                      required: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                      extras: Callable[[argparse.ArgumentParser], None] | None = None,
                      ) -> tuple[T, argparse.Namespace]:
    """Parse ``argv`` into an instance of ``cls`` plus a namespace of the options ``extras`` added
    (flags that are not fields: inputs to resolve, switches of the command itself). Excluded
    fields keep their defaults. Exits with a one-line message on a bad value."""
    p = build_parser(cls, description, required, exclude)
    if extras is not None:
        extras(p)
    ns = vars(p.parse_args(argv))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        v = ns.pop(f.name)
        if isinstance(v, str) and hints[f.name] is not str:
            try:
                v = _yaml_scalar(v)
            except ValueError as e:
                p.error(f"{flag(f.name)}: {e}")
        try:
            values[f.name] = coerce(v, hints[f.name], flag(f.name))
        except ConfigError as e:
            p.error(str(e))
    return cls(**values), argparse.Namespace(**ns)


def parse_dataclass(cls: type[T], argv: list[str] | None = None, description: str = "",
                    required: tuple[str, ...] = ()) -> T:
    """Parse ``argv`` into an instance of ``cls``; exits with a one-line message on a bad value."""
    return parse_with_extras(cls, argv, description, required)[0]


def _yaml_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {text!r}: {e}") from None
