"""Bind a config dataclass to a command line: one ``--flag-name`` per field, its docstring as
the help text, its default as the default, booleans as ``--flag / --no-flag``; a nested
section's fields get the section's name in front (``model.widths`` → ``--model-widths``).
Every command in ``unif2ace.commands`` declares its options this way (kebab-case flags;
run-recipe overrides stay ``key=value`` positionals).

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
from typing import Any, Callable, Iterator, TypeVar

from unif2ace.config import ConfigError, coerce, field_docs, set_dotted

T = TypeVar("T")


def flag(dotted: str) -> str:
    """``image_size`` → ``--image-size``, ``model.stem_stride`` → ``--model-stem-stride``: the one
    flag spelling of every command."""
    return "--" + dotted.replace(".", "-").replace("_", "-")


def _leaves(cls: type, exclude: tuple[str, ...], prefix: str = "") -> Iterator[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, docstring) of every non-section field, sections flattened."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = prefix + f.name
        if dotted in exclude:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], exclude, dotted + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        yield dotted, hints[f.name], default, docs.get(f.name, "")


def build_parser(cls: type, description: str = "", required: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass ``cls`` (except the dotted
    names in ``exclude``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dotted, tp, default, doc in _leaves(cls, exclude):
        help_ = doc.replace("%", "%%")  # argparse formats help strings with %
        if tp is bool:
            p.add_argument(flag(dotted), dest=dotted, action=argparse.BooleanOptionalAction, default=default,
                           help=help_)
        else:
            p.add_argument(flag(dotted), dest=dotted, default=default, required=dotted in required,
                           metavar=dotted.rsplit(".", 1)[-1].upper(), help=f"{help_} (default: {default!r})")
    return p


def _construct(cls: type, tree: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{k: _construct(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in tree.items()})


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
    tree: dict[str, Any] = {}
    for dotted, tp, _, _ in _leaves(cls, exclude):
        v = ns.pop(dotted)
        if isinstance(v, str) and tp is not str:
            try:
                v = _yaml_scalar(v)
            except ValueError as e:
                p.error(f"{flag(dotted)}: {e}")
        try:
            v = coerce(v, tp, flag(dotted))
        except ConfigError as e:
            p.error(str(e))
        set_dotted(tree, dotted, v)
    return _construct(cls, tree), argparse.Namespace(**ns)


def parse_dataclass(cls: type[T], argv: list[str] | None = None, description: str = "",
                    required: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> T:
    """Parse ``argv`` into an instance of ``cls``; exits with a one-line message on a bad value."""
    return parse_with_extras(cls, argv, description, required, exclude)[0]


def _yaml_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {text!r}: {e}") from None
