"""The field types of the config dataclasses, checked when they are built.

Config values come from TOML files, the command line and the camera API's query string. A
value of the wrong type must stop with one line naming the option, not with a ``TypeError``
somewhere later (``open_timeout = "x"``) or a silent truth (``loop = "no"`` is a non-empty
string). :func:`check_types` checks the simple fields (``bool``, ``int``, ``float``, ``str``,
each possibly optional) of a dataclass instance; :func:`from_text` turns query-string text
into those types first.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opts:
    ...     port: int = 8000
    ...     loop: bool | None = None
    ...     def __post_init__(self):
    ...         check_types(self)
    >>> Opts(port="80")
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: port: expected an integer, got '80'
    >>> Opts(**from_text(Opts, {"port": "80", "loop": "no"}))
    Opts(port=80, loop=False)
    >>> from_text(Opts, {"loop": "maybe"})
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: loop: expected true or false (1/0, yes/no, on/off), got 'maybe'
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import fields
from typing import Any

from streamrec.errors import StreamrecError

_SIMPLE = (bool, int, float, str)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@functools.cache
def _field_kinds(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Each field's simple types and whether it may be None (fields of other types: no kinds)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = typing.get_args(hint) if union else (hint,)
        out[f.name] = (tuple(a for a in args if a in _SIMPLE), type(None) in args)
    return out


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # before int: a bool is an int to Python
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    return isinstance(value, str) and str in kinds


def check_types(obj: Any, *, prefix: str = "") -> None:
    """Raise :class:`StreamrecError` for the first simple field of ``obj`` whose value has
    another type (an int is accepted where a float is expected, a bool nowhere but bool)."""
    for name, (kinds, optional) in _field_kinds(type(obj)).items():
        value = getattr(obj, name)
        if not kinds or (value is None and optional):
            continue
        if not _fits(value, kinds):
            raise StreamrecError(f"{prefix}{name}: expected {' or '.join(_NAMES[k] for k in kinds)}, got {value!r}")


def from_text(cls: type, values: dict[str, str], *, prefix: str = "") -> dict[str, Any]:
    """``values`` (text, as a query string gives them) converted to the field types of the
    dataclass ``cls``. Names that are not fields are passed through for ``cls`` to refuse."""
    kinds_of = _field_kinds(cls)
    out: dict[str, Any] = {}
    for name, text in values.items():
        kinds = kinds_of.get(name, ((str,), False))[0]
        if bool in kinds:
            if text.lower() not in _TRUE + _FALSE:
                raise StreamrecError(f"{prefix}{name}: expected true or false (1/0, yes/no, on/off), got {text!r}")
            out[name] = text.lower() in _TRUE
        elif int in kinds or float in kinds:
            try:
                number = int(text) if int in kinds and float not in kinds else float(text)
            except ValueError:
                number = None
            if number is None or not math.isfinite(number):
                kind = "an integer" if float not in kinds else "a number"
                raise StreamrecError(f"{prefix}{name}: expected {kind}, got {text!r}") from None
            out[name] = number
        else:
            out[name] = text
    return out
