"""Writing a camera's zones back to the serve config file (``serve --config FILE``).

The file is edited with ``tomlkit``, which keeps its comments, order and formatting: only the
camera's ``whole_frame`` and its ``[[cameras.zones]]`` tables change. The new text is written to a
temporary file in the same folder, synced and renamed over the old one, so a crash leaves either
the old file or the new one.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "serve.toml"
    >>> _ = p.write_text('# my gym\\n[[cameras]]\\nname = "gym"  # the back room\\nsource = "0"\\n')
    >>> write_zones(p, "gym", (ZoneConfig("rack", 0, 0, 0.5, 0.5),), False)
    True
    >>> print(p.read_text(), end="")
    # my gym
    [[cameras]]
    name = "gym"  # the back room
    source = "0"
    whole_frame = false
    <BLANKLINE>
    [[cameras.zones]]
    name = "rack"
    x = 0.0
    y = 0.0
    w = 0.5
    h = 0.5
    <BLANKLINE>
    >>> write_zones(p, "porch", (), True)
    False
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import tomlkit
from tomlkit.exceptions import TOMLKitError

from streamrec.errors import StreamrecError
from streamrec.fsutil import atomic_write_text
from streamrec.zones import ZoneConfig

logger = logging.getLogger(__name__)

WRITE_LOCK = threading.Lock()  # one rewrite of a file at a time (each API request runs in a thread)


def write_zones(path: str | os.PathLike, camera: str, zones: Sequence[ZoneConfig], whole_frame: bool, *,
                source: str | None = None) -> bool:
    """Set ``camera``'s zones and ``whole_frame`` in the TOML file ``path``, keeping the rest of
    it. ``False`` (nothing written) when the file has no ``[[cameras]]`` table of that name (and of
    that ``source`` where one is given: a camera added at run time under a name the file has);
    a file that cannot be read, parsed or written is a one-line :class:`StreamrecError`."""
    p = Path(path).resolve()  # a symbolic link stays one: its target is rewritten
    with WRITE_LOCK:
        doc = read_document(p)
        table = camera_table(doc, camera)
        if table is None or (source is not None and str(table.get("source")) != source):
            return False
        set_zones(table, zones, whole_frame)
        try:
            atomic_write_text(p, tomlkit.dumps(doc))
        except OSError as exc:
            raise StreamrecError(f"--config {p}: cannot write it: {exc.strerror or exc}") from None
    logger.info("camera %s: zones written to %s", camera, p)
    return True


def read_document(p: Path) -> Any:
    """The parsed TOML document of ``p`` (a one-line :class:`StreamrecError` where it cannot be)."""
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamrecError(f"--config {p}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise StreamrecError(f"--config {p}: not valid TOML: {str(exc).splitlines()[0]}") from None


def camera_table(doc: Any, camera: str) -> Any:
    """The ``[[cameras]]`` table named ``camera`` in ``doc``, or ``None``."""
    cams = doc.get("cameras")
    if not isinstance(cams, list):
        return None
    return next((t for t in cams if isinstance(t, dict) and t.get("name") == camera), None)


def set_zones(table: Any, zones: Sequence[ZoneConfig], whole_frame: bool) -> None:
    """``whole_frame`` and the zones in one camera's table (an inline table gets inline zones).
    The comments and blank lines after the old zones (those before the next table) stay there."""
    trailing = trailing_items(table.get("zones"))
    if "zones" in table:
        del table["zones"]
    if "whole_frame" in table or isinstance(table, tomlkit.items.InlineTable):
        table["whole_frame"] = whole_frame  # in its place
    else:  # after the camera's last key, before the comments that led to its zones
        body = table.value.body
        n = len(body)
        while n and body[n - 1][0] is None:
            n -= 1
        comments = body[n:]
        del body[n:]
        table["whole_frame"] = whole_frame
        body.extend(comments)
    if not zones:
        table.value.body.extend(trailing)  # the comments that led to the next table
        return
    if isinstance(table, tomlkit.items.InlineTable):
        table["zones"] = [z.to_toml_dict() for z in zones]
        return
    tables = tomlkit.aot()
    for i, z in enumerate(zones):
        t = tomlkit.table()
        t.update(z.to_toml_dict())
        if i == len(zones) - 1:  # a blank line (or the old zones' last lines) before the next table
            t.value.body.extend(trailing or [(None, tomlkit.nl())])
        tables.append(t)
    table["zones"] = tables
    before = [item for _, item in table.value.body[:-1] if not isinstance(item, tomlkit.items.Null)]
    if before and isinstance(before[-1], tomlkit.items.Comment):  # a comment heads the zones: no blank line between
        tables[0].trivia.indent = ""


def trailing_items(old: Any) -> list[Any]:
    """The comments and blank lines that end the last table of ``old`` (an array of tables)."""
    if not isinstance(old, tomlkit.items.AoT) or not old.body:
        return []
    body = old.body[-1].value.body
    n = len(body)
    while n and body[n - 1][0] is None:
        n -= 1
    return body[n:]
