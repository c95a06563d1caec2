"""Config sections (YAML, checkpoints) into frozen dataclasses, with their types checked.

Every config section in lesionforge is a dataclass whose annotations say what each
key holds (``steps: int``, ``patch: int | None``, ``levels: tuple[int, ...]``).
`check_fields` reads a mapping against one: unknown keys are errors (a typo must not
silently run the defaults) and every value is checked against its annotation, so
``steps: "abc"`` or ``lr: fast`` stops with one line naming the file and the key
before any work starts, instead of a TypeError deep inside training.

Ranges (``steps >= 1``) are the owner's business: they differ per section and are
checked where the section is defined (``__post_init__``) or used.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from augment.errors import ConfigError


def check_fields(
    cls: type, values: Mapping[str, Any] | None, *, source: str | None = None, sep: str = ": "
) -> dict[str, Any]:
    """``values`` checked against dataclass ``cls``: keys known, required ones present,
    each value of its field's annotated type. Nothing is built, so a config file can be
    checked before the data it is combined with is loaded.

    Args:
        source: names the section in errors (a file, ``FILE: config``, ``FILE: tasks.segment``).
        sep: between ``source`` and a key: ``": "`` (``bad.yaml: ngf``) or ``"."``
            (``study.yaml: tasks.segment.steps``).

    Returns:
        The values, converted where the field says so (list -> tuple, int -> float).
    """
    where = source or cls.__qualname__
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {_type_name(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad_keys = sorted(repr(k) for k in values if not isinstance(k, str))
    unknown = sorted(k for k in values if isinstance(k, str) and k not in fields) + bad_keys
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing option(s) {', '.join(missing)}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # annotations naming what this module cannot see: check keys only
        hints = {}
    out = {}
    for key, value in values.items():
        tp = hints.get(key)
        if tp is not None:
            value = _checked(value, tp, f"{where}{sep}{key}")
        elif isinstance(fields[key].default, tuple) and isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def show_value(value: Any) -> str:
    """``repr(value)``, cut to 60 characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _checked(value: Any, tp: Any, where: str) -> Any:
    """``value`` as field type ``tp`` wants it, or a `ConfigError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message
            return _checked(value, options[0], where)
        for option in options:
            try:
                return _checked(value, option, where)
            except ConfigError:
                continue  # not this option: try the next
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {show_value(value)}")
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(
            f"{where}: expected one of {', '.join(map(repr, args))}, got {show_value(value)}"
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {show_value(value)}")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {show_value(value)}")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        hint = ""
        if isinstance(value, str) and _NUMBER_TEXT.match(value):
            # YAML 1.1 reads 1e-4 (no dot) as text.
            hint = f" (text: write it as {float(value)!r})"
        raise ConfigError(f"{where}: expected a number, got {show_value(value)}{hint}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected text, got {show_value(value)}")
    if tp in (Path, os.PathLike):
        if isinstance(value, (str, os.PathLike)):
            return value
        raise ConfigError(f"{where}: expected a path, got {show_value(value)}")
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_describe(tp)}), got {show_value(value)}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_checked(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"{where}: expected {len(args)} values ({_describe(tp)}), got {len(value)}: {show_value(value)}"
            )
        return tuple(
            _checked(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {show_value(value)}")
        return (
            [_checked(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
            if args
            else list(value)
        )
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {show_value(value)}")
        return dict(value)
    return value  # a type this check does not know: the dataclass sees the value as is


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{_describe(args[0])}s"
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    names = {int: "integer", float: "number", bool: "true/false", str: "text", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))



def build_dataclass(cls: type, values: Any, source: str | None = None, *, sep: str = ": ") -> Any:
    """The one config builder: a (frozen) config dataclass from plain data (a YAML
    section, a checkpoint's ``config``, CLI options).

    Keys and types are checked first (`check_fields`: unknown keys, missing required keys
    and values of the wrong type are refused naming ``source`` and the key; lists become
    tuples where the field is a tuple). The dataclass's own ``__post_init__`` checks ranges;
    its `ConfigError` is prefixed with ``source`` too, and any other failure to build
    becomes a `ConfigError` naming ``source``.
    """
    values = check_fields(cls, values, source=source, sep=sep)
    try:
        return cls(**values)
    except ConfigError as e:
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"{source or cls.__qualname__}: invalid options ({reason})") from None
