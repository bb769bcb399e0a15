"""Times as the history and events commands and APIs take them (``--since``/``--until``,
``?since=``/``?until=``): Unix seconds, an ISO-8601 time, or a relative ``-10m``/``-2h``/``-1d``,
within the years 1 to 9999."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from streamrec.errors import StreamrecError

# a number as --since/--until and ?since=/?until= take it: ASCII digits (not 1_000 or digits of other
# scripts, which float() takes); inf and nan too, to be refused as out of range
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan)"
UNIX_SECONDS = re.compile(rf"[+-]?(?:{_NUMBER})")
RELATIVE_TIME = re.compile(rf"-({_NUMBER})([smhd])")


YEAR_10000_S = 253402300800  # 10000-01-01T00:00:00Z in Unix seconds: times end before it


def parse_time(text: str | None, name: str = "--since/--until") -> float | None:
    """Unix seconds, an ISO-8601 time, or a relative ``-10m`` / ``-2h`` / ``-1d``, within the years
    1 to 9999, numbers in ASCII digits; anything else (``nan``, ``inf``, ``1e999``, ``1_000``, a number
    of 5,000 digits...) is a :class:`StreamrecError` naming ``name`` (the option or query parameter)."""
    if text is None:
        return None
    t = text.strip(" \t")  # blanks: spaces and tabs; other spacing or control characters are refused
    shown = t if len(t) <= 40 else t[:40] + "..."
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    relative = RELATIVE_TIME.fullmatch(t)
    if relative:
        value = datetime.now(timezone.utc).timestamp() - float(relative[1]) * units[relative[2]]
    elif UNIX_SECONDS.fullmatch(t):
        value = float(t)
    else:
        try:
            if not (t.isascii() and t.isprintable()):  # fromisoformat stops at a NUL
                raise ValueError(t)
            dt = datetime.fromisoformat(t)
        except ValueError:
            raise StreamrecError(f"{name}: expected Unix seconds, an ISO time or -10m/-2h/-1d, got {shown!r}") from None
        value = _iso_seconds(dt)
    if not -62135596800 <= value < YEAR_10000_S:  # 0001-01-01 to the end of 9999-12-31 UTC; false for NaN too
        raise StreamrecError(f"{name}: expected a time within the years 1 to 9999, got {shown!r}")
    return value


def time_span(since: str | None, until: str | None, names: tuple[str, str] = ("--since", "--until")) -> tuple[float | None, float | None]:
    """``since`` and ``until`` read by :func:`parse_time`, each error naming its own option of
    ``names``; a ``since`` after ``until`` (a span with nothing in it) is a :class:`StreamrecError` too.

    >>> time_span("100", "200")
    (100.0, 200.0)
    >>> time_span("200", "100", ("since", "until"))
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: since, until: expected since at or before until, got since '200' after until '100'
    """
    start, end = parse_time(since, names[0]), parse_time(until, names[1])
    if start is not None and end is not None and start > end:
        raise StreamrecError(f"{names[0]}, {names[1]}: expected {names[0]} at or before {names[1]}, got {names[0]} "
                             f"{since.strip()[:40]!r} after {names[1]} {until.strip()[:40]!r}")
    return start, end


def _iso_seconds(dt: datetime) -> float:
    """Unix seconds of ``dt``; a time without an offset is local time. Years 1 and 9999 included:
    the C library's local time overflows there, so the offset of now is taken instead.

    >>> _iso_seconds(datetime(1, 1, 1, tzinfo=timezone.utc)), _iso_seconds(datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc))
    (-62135596800.0, 1.0)
    """
    if dt.tzinfo is not None:
        since = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
        if since < timedelta(seconds=YEAR_10000_S) <= timedelta(seconds=since.total_seconds()):
            return YEAR_10000_S - 0.001  # the float of 9999-12-31T23:59:59.999999 rounds up to year 10000
        return since.total_seconds()
    try:
        return dt.astimezone().timestamp()
    except (OverflowError, OSError, ValueError):
        offset = datetime.now().astimezone().utcoffset()
        return (dt - datetime(1970, 1, 1)).total_seconds() - (offset.total_seconds() if offset else 0.0)
