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
import errno
import math
import os
import stat
import re
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable

from streamrec.errors import StreamrecError
from streamrec.redact import mask_credentials

_SIMPLE = (bool, int, float, str)
MAX_BATCH = 4096  # windows or clips in one forward pass (--batch-size, --batches)
LR_FIND_STEPS = 60  # optimizer steps of lr-find's range test, by default
LR_FIND_STEPS_RANGE = (10, 10_000)  # fewer than 10 points make no curve; more is hours on a CPU
NESTING_MAX = 32  # lists and tables inside each other in a config file or request body (zones nest 4 deep)
SHOWN_MAX = 80  # characters of a bad value that a one-line error quotes
NUMBER_MAX = 10**9  # the size of any number an option holds (seconds: 31 years; a timer of 10**13 s overflows)
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


SECRET_FIELDS = frozenset({"secret", "token", "password"})  # options whose value an error never shows


def described(value: Any) -> str:
    """``value`` as a one-line error shows it: a table by its keys and a list by its length, never
    their contents (a table may hold a password, a list may nest a thousand deep); anything else,
    a list of a few levels without tables included, as ``repr`` with passwords in URLs masked,
    cut after :data:`SHOWN_MAX` characters.

    >>> described({"name": "gym", "password": "hunter2"}), described([[[[1]]]]), described([[0, 1], 2.5])
    ("a table of 'name', 'password'", 'a list of 1 item', '[[0, 1], 2.5]')
    """
    if isinstance(value, dict):
        keys = ", ".join(mask_credentials(repr(k))[:SHOWN_MAX] for k in list(value)[:20])
        return f"a table of {keys}" if value else "an empty table"
    if isinstance(value, (list, tuple)) and (nesting(value) > 3 or any(isinstance(v, dict) for v in value)):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    text = mask_credentials(repr(value))
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX] + "..."


def nesting(value: Any) -> int:
    """How deep ``value`` (parsed JSON) nests its lists and objects, counted without recursion.

    >>> nesting(1), nesting([]), nesting({"a": [[1], 2]})
    (0, 1, 3)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_types(obj: Any, *, prefix: str = "") -> None:
    """Raise :class:`StreamrecError` for the first simple field of ``obj`` whose value has
    another type (an int is accepted where a float is expected, a bool nowhere but bool), is a
    float that is not finite (``nan``, ``inf``: no option means either), or, where a number is
    expected, is one beyond :data:`NUMBER_MAX` either way (its message quotes 40 digits at most)."""
    for name, (kinds, optional) in _field_kinds(type(obj)).items():
        value = getattr(obj, name)
        if not kinds or (value is None and optional):
            continue
        if not _fits(value, kinds):  # a secret's value is never shown, only what it is
            kind = type(value).__name__
            shown = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" if name in SECRET_FIELDS else described(value)
            raise StreamrecError(f"{prefix}{name}: expected {' or '.join(_NAMES[k] for k in kinds)}, got {shown}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML has inf and nan; so has float("inf")
            raise StreamrecError(f"{prefix}{name}: expected a finite number, got {value!r}")
        if (float in kinds or int in kinds) and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and abs(value) > NUMBER_MAX:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise StreamrecError(f"{prefix}{name}: expected a number of at most 1e{len(str(NUMBER_MAX)) - 1} in size "
                                 f"(no option needs more; timers and clocks overflow beyond), got {shown}")


def from_text(cls: type, values: dict[str, str], *, prefix: str = "") -> dict[str, Any]:
    """``values`` (text, as a query string gives them) converted to the field types of the
    dataclass ``cls``. Names that are not fields are passed through for ``cls`` to refuse."""
    kinds_of = _field_kinds(cls)
    out: dict[str, Any] = {}
    for name, text in values.items():
        kinds = kinds_of.get(name, ((str,), False))[0]
        if bool in kinds:
            out[name] = text_flag(f"{prefix}{name}", text)
        elif int in kinds or float in kinds:
            out[name] = _number(f"{prefix}{name}", text, integer=float not in kinds)
        else:
            out[name] = text
    return out


def text_flag(name: str, text: str | None) -> bool:
    """The yes or no of query text ``text`` (``true``/``false``, ``1``/``0``, ``yes``/``no``,
    ``on``/``off``, any case); anything else, or nothing, is a :class:`StreamrecError` naming ``name``.

    >>> text_flag("whole_frame", "True"), text_flag("whole_frame", "off")
    (True, False)
    """
    if text is None or text.lower() not in _TRUE + _FALSE:
        shown = "nothing" if text is None else repr(text if len(text) <= 40 else text[:40] + "...")
        raise StreamrecError(f"{name}: expected true or false (1/0, yes/no, on/off), got {shown}")
    return text.lower() in _TRUE


_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")


def _number(name: str, text: str, *, integer: bool) -> int | float:
    """``text`` as an integer (``integer``) or a finite number, written in ASCII digits (no ``1_000``,
    no digits of other scripts, no ``nan`` or ``inf``); otherwise a :class:`StreamrecError` naming ``name``."""
    t = text.strip()
    if (_INTEGER if integer else _DECIMAL).fullmatch(t):
        number = int(t) if integer else float(t)
        if math.isfinite(number):
            return number
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise StreamrecError(f"{name}: expected {'an integer' if integer else 'a number'}, got {shown!r}")


def ascii_float(text: str) -> float:
    """``text`` as ``float()`` reads it, but only as written in ASCII (``1_0`` and digits of other
    scripts, which ``float()`` takes, are a :class:`ValueError`): what a user means as a number.

    >>> ascii_float(" 2.5e1 "), ascii_float("inf")
    (25.0, inf)
    >>> ascii_float("1_0")
    Traceback (most recent call last):
    ...
    ValueError: not a number in ASCII digits: '1_0'
    """
    if not text.isascii() or "_" in text:
        raise ValueError(f"not a number in ASCII digits: {text!r}")
    return float(text)


def finite_float(option: str, *, positive: bool = False, minimum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` for a number option: finite (``inf`` and ``nan`` parse as floats
    but mean nothing as a timeout, a stride or a rate), optionally > 0 or >= ``minimum``.

    >>> finite_float("--stride-ms")("inf")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: --stride-ms: expected a finite number, got 'inf'
    """
    import argparse

    def parse(text: str) -> float:
        try:
            value = ascii_float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{option}: expected a finite number, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{option}: expected > 0, got {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{option}: expected >= {minimum:g}, got {text}")
        return value

    return parse


def not_a_file(path: str | os.PathLike) -> str:
    """What ``path`` is, when it is no regular file to read: ``"a folder"``, ``"not a regular file:
    a FIFO"`` (a socket, a device), ``"a symbolic link that never reaches a file"`` (one that loops
    or names nothing), ``"a name too long for the file system"`` or ``"no such file"``.

    >>> not_a_file("/"), not_a_file("/no/such/file"), not_a_file("/tmp/" + "a" * 300)
    ('a folder', 'no such file', 'a name too long for the file system')
    """
    try:
        mode = os.stat(path).st_mode
    except ValueError:
        return "a NUL character in the name"
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return "a name too long for the file system"
        return "a symbolic link that never reaches a file" if os.path.islink(path) else "no such file"
    if stat.S_ISDIR(mode):
        return "a folder"
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device" if (
        stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "something else"
    return f"not a regular file: {kind}"


def whole_number(option: str, most: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count option: ASCII digits (a sign allowed; the command checks its
    lower bound), at most ``most``; a longer number is never converted, and ``1_0`` and digits of
    other scripts, which ``int()`` takes, are refused.

    >>> whole_number("--limit", 10**9)("99999999999999999999999")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: --limit: expected a whole number up to 1000000000, got '99999999999999999999999'
    """
    import argparse

    def parse(text: str) -> int:
        digits = text.strip()
        if re.fullmatch(r"[+-]?[0-9]{1,%d}" % len(str(most)), digits) and abs(int(digits)) <= most:
            return int(digits)
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(f"{option}: expected a whole number up to {most}, got {shown!r}")

    return parse


def check_weights_arg(weights: str, option: str = "--weights") -> str:
    """``weights`` when it can be a model's weights: ``DEFAULT``, ``none``, or a file that starts
    as torch.save (a zip or a pickle), TorchScript (a zip) or ONNX (by its suffix) files do.
    A missing path, a folder or another kind of file is a one-line error at once, before any
    process is started to load it (checked without torch).

    >>> check_weights_arg("/")
    Traceback (most recent call last):
    ...
    streamrec.errors.WeightsError: --weights: expected DEFAULT, none or a file, got '/' (a folder)
    """
    import os

    from streamrec.errors import WeightsError

    if weights.upper() in ("DEFAULT", "NONE"):
        return weights
    if not os.path.isfile(weights):  # a FIFO or a device is no file to load either
        raise WeightsError(f"{option}: expected DEFAULT, none or a file, got {weights!r} ({not_a_file(weights)})")
    if weights.lower().endswith(".onnx"):
        return weights
    try:
        with open(weights, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise WeightsError(f"{option}: cannot read {weights}: {exc.strerror}") from None
    if head != b"PK" and not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):  # zip; pickle protocol 2-5
        raise WeightsError(f"{option}: {weights} is not a file torch.save wrote "
                           "(expected a state_dict, a streamrec checkpoint, TorchScript or ONNX)")
    return weights


def unknown_keys(cls: type, d: Any, where: str) -> None:
    """Refuse a TOML table ``d`` for the dataclass ``cls`` that is not a table, has an option
    ``cls`` does not know or lacks one ``cls`` needs (no default), naming ``where`` it is.

    >>> from streamrec.event_config import MqttConfig
    >>> unknown_keys(MqttConfig, {"topic_prefix": "gym"}, "[notify.mqtt]")
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: [notify.mqtt] url: expected a value, got a table without it
    """
    if not isinstance(d, dict):
        raise StreamrecError(f"{where}: expected a table, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise StreamrecError(f"{where}: unknown option {unknown[0]!r}; expected one of {', '.join(sorted(names))}")
    needed = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in d]
    if needed:
        raise StreamrecError(f"{where} {needed[0]}: expected a value, got a table without it")
