"""Rows printed as JSON or CSV (``--format``), for ``history`` and ``events``."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any, Iterable, Sequence


def local_time(t: float | None, missing: str = "(open)") -> str:
    """``t`` (seconds since the epoch) as local ``YYYY-mm-dd HH:MM:SS``; a time no date holds
    (a row written by another program) as the number itself, never a traceback.

    >>> local_time(None), local_time(1e20)
    ('(open)', '1e+20')
    """
    from datetime import datetime

    if t is None:
        return missing
    try:
        return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{t:g}"


def write_rows(rows: Iterable[dict[str, Any]], columns: Sequence[str], form: str) -> bool:
    """Write ``rows`` to stdout as a JSON array (streamed) or CSV with ``columns``; ``False`` for
    any other ``form`` (the caller prints its table)."""
    if form == "json":
        sys.stdout.write("[")
        for i, r in enumerate(rows):
            sys.stdout.write(("," if i else "") + "\n " + json.dumps(r, allow_nan=False))
        sys.stdout.write("\n]\n")
        return True
    if form == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return True
    return False
