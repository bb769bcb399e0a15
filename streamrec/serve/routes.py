"""The JSON API routes shared by ``serve`` and ``cluster``: ``/api/history`` and ``/api/cameras``."""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

from streamrec.config import CameraConfig
from streamrec.errors import StreamrecError
from streamrec.redact import printable
from streamrec.live.history import HistoryStore, parse_time
from streamrec.events.manager import EventManager
from streamrec.events.store import row_event
from streamrec.serve.files import FileBody
from streamrec.serve.server import ApiRoute, Reply
from streamrec.validate import from_text

logger = logging.getLogger(__name__)


def query_int(query: dict[str, list[str]], name: str, lo: int, hi: int, default: int) -> int:
    """The whole number ``lo..hi`` in the query parameter ``name`` (``default`` without one): ASCII
    digits only, never converted when longer than ``hi`` can be; otherwise a :class:`StreamrecError`."""
    text = (query.get(name) or [None])[0]
    if text is None:
        return default
    digits = text.strip()
    if re.fullmatch(r"[0-9]{1,%d}" % len(str(hi)), digits) and lo <= int(digits) <= hi:
        return int(digits)
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise StreamrecError(f"{name}: expected a whole number {lo}..{hi}, got {shown!r}")


def query_text(query: dict[str, list[str]], name: str) -> str | None:
    """The query parameter ``name`` (``None`` without one); one holding a NUL, which no name holds
    and PostgreSQL cannot compare, is a :class:`StreamrecError`."""
    text = (query.get(name) or [None])[0]
    if text is not None and "\x00" in text:
        raise StreamrecError(f"{name}: expected a name, got {shorten(text)!r}")
    return text


def shorten(text: str) -> str:
    """``text`` as an answer quotes it: at most 40 characters."""
    return text if len(text) <= 40 else text[:40] + "..."


def query_times(query: dict[str, list[str]]) -> tuple[float | None, float | None]:
    """The ``since`` and ``until`` parameters (see :func:`~streamrec.live.history.parse_time`)."""
    return (parse_time((query.get("since") or [None])[0], "since"),
            parse_time((query.get("until") or [None])[0], "until"))


HISTORY_API_LIMIT = 10_000  # segments in one /api/history answer: the newest; "truncated" says so


def history_api(store: HistoryStore, *, limit: int = HISTORY_API_LIMIT) -> ApiRoute:
    """``GET /api/history?camera=&zone=&since=&until=``: the recorded segments (the page's timelines),
    at most the newest ``limit``, oldest first; ``"truncated": true`` when there were more."""
    def handler(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        if method != "GET":
            return Reply(405, {"error": "GET only"})
        try:
            since, until = query_times(query)
            camera, zone = query_text(query, "camera"), query_text(query, "zone")
        except StreamrecError as exc:
            return Reply(400, {"error": str(exc)})
        try:
            rows = store.query(camera=camera, since=since, until=until, limit=limit + 1, zone=zone)
        except Exception as exc:  # noqa: BLE001 - the database went away: the page asks again in 5 s
            logger.warning("history: cannot read the database: %s", printable(str(exc).strip()))
            return Reply(503, {"error": f"history database unavailable: {printable(str(exc).strip())}"})
        return Reply(200, {"segments": rows[-limit:], "truncated": len(rows) > limit})

    return ApiRoute(handler)


def cameras_api(*, listing: Callable[[], dict[str, Any]], add: Callable[[CameraConfig], Any],
                remove: Callable[[str], bool]) -> ApiRoute:
    """The admin camera API (token required): ``GET /api/cameras`` (``listing()``), ``POST
    /api/cameras?name=...&source=...&loop=...`` (``add``: values in the query string, converted to
    each option's type; a :class:`StreamrecError` is a 400 naming it) and ``DELETE /api/cameras/NAME``.
    Each request runs in a thread of its own (see :class:`~streamrec.serve.server.WebServer`)."""

    def handler(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        if method == "GET":
            return Reply(200, listing())
        if method == "POST":
            text = {k: v[0] for k, v in query.items() if k != "token"}
            try:
                cam = CameraConfig.from_dict(from_text(CameraConfig, text))
                add(cam)
            except StreamrecError as exc:
                return Reply(400, {"error": str(exc)})
            return Reply(201, {"added": cam.name})
        if method == "DELETE":
            name = path.rsplit("/", 1)[-1]
            if path.count("/") < 3 or not name:
                return Reply(400, {"error": "DELETE /api/cameras/NAME: expected a camera name in the path"})
            if not remove(name):
                return Reply(404, {"error": f"no camera {shorten(name)!r}"})
            return Reply(200, {"removed": name})
        return Reply(405, {"error": "GET, POST or DELETE"}, allow=("GET", "HEAD", "POST", "DELETE"))

    return ApiRoute(handler, admin=True)


EVENTS_API_LIMIT = 1000  # events in one /api/events answer (the newest); ?limit= asks for fewer


def events_api(events: EventManager) -> ApiRoute:
    """``GET /api/events?camera=&zone=&rule=&since=&until=&limit=`` (newest first), ``GET /api/events/ID``,
    ``GET /api/events/ID/clip.mp4`` (Range requests answered 206), ``GET /api/events/ID/thumb.jpg``
    and ``DELETE /api/events/ID`` (token required)."""

    def handler(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        parts = path.strip("/").split("/")[2:]  # after api/events
        if not parts and method == "GET":
            return list_events(events, query)
        if parts and "\x00" in parts[0] and method in ("GET", "DELETE"):  # no id (nor PostgreSQL text) holds a NUL
            return Reply(404, {"error": f"no event {shorten(parts[0])!r}"})
        if len(parts) == 1 and method == "DELETE":
            try:
                deleted = events.delete(parts[0])
            except StreamrecError as exc:  # the events thread waits for a database that does not answer
                return Reply(503, {"error": str(exc)})
            if not deleted:
                return Reply(404, {"error": f"no event {shorten(parts[0])!r}"})
            return Reply(200, {"deleted": parts[0]})
        if len(parts) == 1 and method == "GET":
            row = events.store.get(parts[0])
            return Reply(200, row_event(row)) if row else Reply(404, {"error": f"no event {shorten(parts[0])!r}"})
        if len(parts) == 2 and parts[1] in FILES and method != "GET":
            return Reply(405, {"error": f"GET /api/events/ID/{parts[1]}"})
        if len(parts) == 2 and parts[1] in FILES:
            kind, content_type = FILES[parts[1]]
            found = events.file_of(parts[0], kind)
            if found is None:
                return Reply(404, {"error": f"event {shorten(parts[0])!r} has no {parts[1]}"})
            return Reply(200, FileBody(found, content_type))
        return Reply(405 if len(parts) <= 1 else 404, {"error": "GET /api/events[/ID[/clip.mp4|/thumb.jpg]] or DELETE "
                                                                "/api/events/ID"},
                     allow=("GET", "HEAD", "DELETE") if len(parts) == 1 else ("GET", "HEAD"))

    return ApiRoute(handler, admin_methods=("DELETE",))


FILES = {"clip.mp4": ("clip", "video/mp4"), "thumb.jpg": ("thumbnail", "image/jpeg")}


def list_events(events: EventManager, query: dict[str, list[str]]) -> Reply:
    try:
        since, until = query_times(query)
        limit = query_int(query, "limit", 1, EVENTS_API_LIMIT, EVENTS_API_LIMIT)
        camera, rule, zone = query_text(query, "camera"), query_text(query, "rule"), query_text(query, "zone")
    except StreamrecError as exc:
        return Reply(400, {"error": str(exc)})
    try:
        rows = events.store.query(camera=camera, rule=rule, since=since, until=until, limit=limit, zone=zone)
    except Exception as exc:  # noqa: BLE001 - the database went away: the page asks again later
        logger.warning("events: cannot read the database: %s", printable(str(exc).strip()))
        return Reply(503, {"error": f"events database unavailable: {printable(str(exc).strip())}"})
    return Reply(200, {"events": [row_event(r) for r in rows]})
