"""The serve config file (``serve --config FILE``): read (:func:`load_toml`), and a camera's zones
written back to it (:func:`write_zones`).

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
import tomllib
from pathlib import Path
from typing import Any, Sequence

import tomlkit
from tomlkit.exceptions import TOMLKitError

from streamrec.errors import StreamrecError
from streamrec.redact import mask_url, printable
from streamrec.fsutil import atomic_write_text
from streamrec.validate import NESTING_MAX, nesting, not_a_file
from streamrec.zones import ZoneConfig

logger = logging.getLogger(__name__)

WRITE_LOCK = threading.Lock()  # one rewrite of a file at a time (each API request runs in a thread)


def write_zones(path: str | os.PathLike, camera: str, zones: Sequence[ZoneConfig], whole_frame: bool, *,
                source: str | None = None) -> bool:
    """Set ``camera``'s zones and ``whole_frame`` in the TOML file ``path``, keeping the rest of
    it. ``False`` (nothing written) when the file has no ``[[cameras]]`` table of that name (and of
    that ``source``, as the file is read, where one is given: a camera added at run time under a
    name the file has);
    a file that cannot be read, parsed or written is a one-line :class:`StreamrecError`."""
    p = Path(path).resolve()  # a symbolic link stays one: its target is rewritten
    with WRITE_LOCK:
        doc = read_document(p)
        table = camera_table(doc, camera)
        if table is None or (source is not None and table_source(p, table) != source):
            return False
        started = not refusal(p, tomlkit.dumps(doc))  # a file that needs options from the command line: not checked
        set_zones(table, zones, whole_frame)
        text = tomlkit.dumps(doc)
        if started and (why := refusal(p, text)):  # a rule edited in by hand since the start names a zone that goes
            raise StreamrecError(f"--config {p}: not written: serve would not start from it with these zones: {why}")
        try:
            atomic_write_text(p, text)
        except OSError as exc:
            raise StreamrecError(f"--config {p}: cannot write it: {exc.strerror or exc}") from None
    logger.info("camera %s: zones written to %s", camera, p)
    return True


def refusal(p: Path, text: str) -> str:
    """Why ``serve --config p`` would refuse the config ``text`` (of the file ``p``) with no other
    option given ("" when it would start): what a write-back must not bring about."""
    from streamrec.config import ServeConfig

    try:
        values = _paths_from(p.parent, tomllib.loads(text))
        ServeConfig.from_sources(values, {}, file_label=str(p))
    except (StreamrecError, tomllib.TOMLDecodeError, ValueError) as exc:
        return printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return ""


def table_source(p: Path, table: Any) -> Any:
    """A camera table's ``source`` as :func:`load_toml` reads it (a path relative to the file ``p``
    joined to its folder), as the running camera has it."""
    try:
        return _paths_from(p.parent, {"source": str(table.get("source"))})["source"]
    except StreamrecError:
        return None


def read_document(p: Path) -> Any:
    """The parsed TOML document of ``p`` (a one-line :class:`StreamrecError` where it cannot be)."""
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte order mark (Notepad's) is left out, as load_toml does
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
        body = table.value.body
        while trailing and body and body[-1][0] is None and isinstance(body[-1][1], (tomlkit.items.Whitespace,
                                                                                      tomlkit.items.Null)):
            body.pop()  # the blank line tomlkit set before the zones: the old zones' own lines take its place
        body.extend(trailing)  # the comments that led to the next table
        return
    if isinstance(table, tomlkit.items.InlineTable):
        table["zones"] = [z.to_toml_dict() for z in zones]
        return
    body = table.value.body
    n = len(body)
    while n and body[n - 1][0] is None and isinstance(body[n - 1][1], (tomlkit.items.Whitespace, tomlkit.items.Null)):
        n -= 1
    tail = body[n:] if not trailing else []  # blank lines that led to the next table (zones cleared before left them)
    del body[len(body) - len(tail):]
    tables = tomlkit.aot()
    for i, z in enumerate(zones):
        t = tomlkit.table()
        t.update(z.to_toml_dict())
        if i == len(zones) - 1:  # a blank line (or the old zones' last lines) before the next table
            t.value.body.extend(trailing or tail or [(None, tomlkit.nl())])
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


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file; one-line error when missing or malformed. File paths in it
    (``source``, ``weights``, ``db``, each camera's ``source`` and ``weights``) are relative to
    the file, as in docker-compose, not to wherever streamrec is started; ``~`` is the home."""
    p = Path(path)
    if not str(path).strip():
        raise StreamrecError(f"--config: expected a TOML file, got {str(path)!r}")
    try:
        if p.exists() and not p.is_dir() and not p.is_file():  # a FIFO or a device would be read forever
            raise StreamrecError(f"--config: expected a TOML file, got {p} ({not_a_file(p)})")
        with p.open("rb") as fh:  # a byte order mark (Windows' Notepad writes one) is no TOML: left out
            doc = tomllib.loads(fh.read().removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        if nesting(doc) > NESTING_MAX:  # a later message or walk of it would recurse
            raise RecursionError
        return _paths_from(p.resolve().parent, doc)
    except PermissionError:
        raise StreamrecError(f"--config: cannot read {p} (permission denied)") from None
    except IsADirectoryError:
        raise StreamrecError(f"--config: expected a TOML file, got a directory: {p}") from None
    except OSError as exc:  # missing, or a link that loops or names nothing
        if p.is_symlink():
            raise StreamrecError(f"--config: {p} is a symbolic link that never reaches a file") from None
        if isinstance(exc, FileNotFoundError):
            raise StreamrecError(f"--config: file not found: {p}") from None
        raise StreamrecError(f"--config: cannot read {p} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:  # tomllib decodes UTF-8 itself: a binary file
        raise StreamrecError(f"--config {p}: not valid TOML: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise StreamrecError(f"--config {p}: not valid TOML: {exc}") from None
    except RecursionError:  # arrays or inline tables inside each other hundreds deep: no config is
        raise StreamrecError(f"--config {p}: not valid TOML: arrays or tables nested too deep") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise StreamrecError(f"--config {p}: not valid TOML: {printable(str(exc).split(';')[0])}") from None


def _paths_from(base: Path, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with their relative file paths joined to ``base``: a URL, a webcam index,
    ``DEFAULT``/``none`` weights and a ``postgresql://`` or ``:memory:`` database stay as they are.

    >>> d = _paths_from(Path("/etc/streamrec"), {"source": "clips/a.mp4", "weights": "DEFAULT",
    ...                  "db": "../h.db", "cameras": [{"name": "c", "source": "0"}, {"name": "d", "source": "rtsp://h/s"}]})
    >>> d["source"], d["weights"], d["db"], [c["source"] for c in d["cameras"]]
    ('/etc/streamrec/clips/a.mp4', 'DEFAULT', '/etc/h.db', ['0', 'rtsp://h/s'])
    """
    def file(key: str, value: Any, *keep: str) -> Any:
        if isinstance(value, str) and "\0" in value:  # no file's name: open() and os.scandir() raise on it
            raise StreamrecError(f"{key}: expected a path or URL, got {mask_url(value)!r} (a NUL character)")
        if not isinstance(value, str) or not value.strip() or "://" in value or value.strip().isdigit() \
                or value.lower() in keep:
            return value
        home = os.path.expanduser(value)
        if home.startswith("~"):  # not joined to the config's folder as if it were a name there
            raise StreamrecError(f"{key}: expected a path, got {value!r} (no such user: {value.split('/')[0]})")
        return os.path.normpath(base / home)  # an absolute path stays itself

    def joined(d: dict[str, Any]) -> dict[str, Any]:
        out = dict(d)
        for key, keep in (("source", ()), ("weights", ("default", "none")), ("db", (":memory:",))):
            if key in out:
                out[key] = file(key, out[key], *keep)
        return out

    out = joined(values)
    if isinstance(out.get("recording"), dict) and "dir" in out["recording"]:
        out["recording"] = {**out["recording"], "dir": file("[recording] dir", out["recording"]["dir"])}
    notify = out.get("notify")
    if isinstance(notify, dict):  # the channels' CA files
        out["notify"] = {k: {**v, "ca_file": file(f"[notify.{k}] ca_file", v["ca_file"])}
                         if isinstance(v, dict) and "ca_file" in v else v for k, v in notify.items()}
    if isinstance(out.get("cameras"), list):  # a malformed list is ServeConfig's to report
        out["cameras"] = [joined(cam) if isinstance(cam, dict) else cam for cam in out["cameras"]]
    return out
