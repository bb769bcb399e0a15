"""The JSON API routes shared by ``serve`` and ``cluster``: ``/api/history``, ``/api/cameras`` (with
``PUT /api/cameras/NAME/zones``) and ``/api/events``."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable

from streamrec.config import CameraConfig
from streamrec.configfile import write_zones
from streamrec.database import DatabaseUnavailable
from streamrec.errors import Busy, StreamrecError
from streamrec.redact import mask_credentials, printable
from streamrec.live.history import HistoryStore
from streamrec.timespan import time_span
from streamrec.events.manager import EventManager
from streamrec.events.store import row_event
from streamrec.serve.files import FileBody
from streamrec.serve.heads import strict_json
from streamrec.serve.server import ApiRoute, Reply
from streamrec.validate import from_text, text_flag
from streamrec.zones import ZoneConfig, parse_zones

logger = logging.getLogger(__name__)


def query_int(query: dict[str, list[str]], name: str, lo: int, hi: int, default: int) -> int:
    """The whole number ``lo..hi`` in the query parameter ``name`` (``default`` without one): ASCII
    digits only, never converted when longer than ``hi`` can be; otherwise a :class:`StreamrecError`."""
    text = (query.get(name) or [None])[0]
    if text is None:
        return default
    digits = re.fullmatch(r"[ \t]*([0-9]{1,%d})[ \t]*" % len(str(hi)), text)  # blanks: spaces and tabs only
    if digits is not None and lo <= int(digits[1]) <= hi:
        return int(digits[1])
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise StreamrecError(f"{name}: expected a whole number {lo}..{hi}, got {shown!r}")


def query_text(query: dict[str, list[str]], name: str) -> str | None:
    """The query parameter ``name`` (``None`` without one); one holding a NUL, which no name holds
    and PostgreSQL cannot compare, is a :class:`StreamrecError`."""
    text = (query.get(name) or [None])[0]
    if text is not None and "\x00" in text:
        raise StreamrecError(f"{name}: expected a name, got {shorten(text)!r}")
    return text


def shorten(text: str, most: int = 40) -> str:
    """``text`` as an answer quotes it: at most ``most`` characters."""
    return text if len(text) <= most else text[:most] + "..."


ERROR_MAX_CHARS = 300  # an error answer's length: a value quoted in it is cut


def query_times(query: dict[str, list[str]]) -> tuple[float | None, float | None]:
    """The ``since`` and ``until`` parameters (see :func:`~streamrec.timespan.time_span`)."""
    return time_span((query.get("since") or [None])[0], (query.get("until") or [None])[0], ("since", "until"))


HISTORY_API_LIMIT = 10_000  # segments in one /api/history answer: the newest; "truncated" says so


def history_api(store: HistoryStore, *, limit: int = HISTORY_API_LIMIT) -> ApiRoute:
    """``GET /api/history?camera=&zone=&since=&until=``: the recorded segments (the page's timelines),
    at most the newest ``limit``, oldest first; ``"truncated": true`` when there were more."""
    def handler(method: str, path: str, query: dict[str, list[str]], body: Any = None) -> Reply:
        if path.strip("/").count("/") != 1:  # /api/history/anything
            return NOT_FOUND
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
            why = str(exc) if isinstance(exc, StreamrecError) else f"history database unavailable: {printable(str(exc).strip())}"
            logger.warning("history: %s", why)
            return Reply(503, {"error": why})
        return Reply(200, {"segments": rows[-limit:], "truncated": len(rows) > limit})

    return ApiRoute(handler)


SetZones = Callable[[str, "tuple[ZoneConfig, ...]", bool], CameraConfig]


def cameras_api(*, listing: Callable[[], dict[str, Any]], add: Callable[[CameraConfig], Any],
                remove: Callable[[str], bool], set_zones: SetZones | None = None,
                config_file: Callable[[], str | None] = lambda: None,
                status: Callable[[str], dict[str, Any]] | None = None) -> ApiRoute:
    """The admin camera API (token required): ``GET /api/cameras`` (``listing()``), ``POST
    /api/cameras`` (``add``: the camera as a JSON body, or in the query string, see
    :func:`camera_of`; a :class:`StreamrecError` is a 400 naming it), ``DELETE /api/cameras/NAME``
    and ``PUT /api/cameras/NAME/zones`` (see :func:`put_zones`; 405 where ``set_zones`` is ``None``). With ``status`` (a camera's status message), the listing's
    ``"zones"`` holds each camera's ``{"zones": [...], "whole_frame": bool}``. Each request runs in a thread of its own (see
    :class:`~streamrec.serve.server.WebServer`)."""
    allow = ("GET", "HEAD", "POST", "DELETE")

    def handler(method: str, path: str, query: dict[str, list[str]], body: Any = None) -> Reply:
        parts = path.strip("/").split("/")[2:]  # after api/cameras
        if len(parts) == 2 and parts[1] == "zones":
            if set_zones is None:  # streamrec cluster
                return Reply(405, {"error": "zones are not changed at run time here: set them in the config file"},
                             allow=())
            if method == "PUT":
                return put_zones(parts[0], query, body, listing, set_zones, config_file())
            return Reply(405, {"error": "PUT /api/cameras/NAME/zones"}, allow=("PUT",))
        if len(parts) == 1:
            return remove_camera(parts[0], remove) if method == "DELETE" else \
                Reply(405, {"error": "DELETE /api/cameras/NAME"}, allow=("DELETE",))
        if parts:  # /api/cameras/a/b/c
            return NOT_FOUND
        if method == "GET":
            out = listing()
            if status is not None:
                out["zones"] = zones_listing(list(out.get("cameras", {})), status)
            return Reply(200, out)
        if method == "POST":
            try:
                cam = camera_of(query, body)
                add(cam)
            except Busy as exc:
                return Reply(409, {"error": shorten(mask_credentials(str(exc)), ERROR_MAX_CHARS)})
            except StreamrecError as exc:  # the values sent are quoted: never a password
                return Reply(400, {"error": shorten(mask_credentials(str(exc)), ERROR_MAX_CHARS)})
            return Reply(201, {"added": cam.name})
        if method == "DELETE":
            return Reply(400, {"error": "DELETE /api/cameras/NAME: expected a camera name in the path"})
        return Reply(405, {"error": "GET, POST or DELETE" + (" (or PUT /api/cameras/NAME/zones)" if set_zones else "")},
                     allow=allow)

    def reads_body(method: str, path: str) -> bool:
        parts = path.strip("/").split("/")[2:]
        return (method == "POST" and not parts) or (
            method == "PUT" and set_zones is not None and len(parts) == 2 and parts[1] == "zones")

    return ApiRoute(handler, admin=True, reads_body=reads_body)


NOT_FOUND = Reply(404, {"error": "not found"})  # a path no route has (an extra segment)


def remove_camera(name: str, remove: Callable[[str], bool]) -> Reply:
    """``DELETE /api/cameras/NAME``: 200, 404 for no such camera, 409 while its zones are being changed."""
    try:
        removed = remove(name)
    except Busy as exc:
        return Reply(409, {"error": shorten(str(exc), ERROR_MAX_CHARS)})
    if not removed:
        return Reply(404, {"error": f"no camera {shorten(name)!r}"})
    return Reply(200, {"removed": name})


def camera_of(query: dict[str, list[str]], body: Any) -> CameraConfig:
    """The camera a ``POST /api/cameras`` adds: its JSON body, an object with the options of a
    ``[[cameras]]`` table (``{"name": "gate", "source": "rtsp://...", "zones": [...]}``), or else
    its query string (``?name=gate&source=...&loop=true``, values converted to each option's type).
    A source with a password or key is refused in the query string, which proxies and logs keep."""
    given = {k: v[0] for k, v in query.items() if k != "token"}
    if body is not None:
        if given:
            raise StreamrecError(f"POST /api/cameras: expected the camera in the JSON body or in the query string, "
                                 f"not both (the query string has {shorten(', '.join(sorted(given)))})")
        return CameraConfig.from_dict(body)
    source = given.get("source", "")
    if hidden(source) != source:
        raise StreamrecError(f"source: a password or key goes in a JSON body, not the query string that proxies and logs "
                             f"keep: POST /api/cameras with {{\"name\": ..., \"source\": ...}}, got {hidden(source)!r}")
    return CameraConfig.from_dict(from_text(CameraConfig, given))


def hidden(source: str) -> str:
    """``source`` with its secrets masked: a URL's user and password (any user: a token may be one)
    and the values of query keys that hold secrets.

    Example:
        >>> hidden("rtsp://admin%3As3cret@10.0.0.7/s1"), hidden("rtsp://10.0.0.7/s1")
        ('rtsp://***@10.0.0.7/s1', 'rtsp://10.0.0.7/s1')
    """
    scheme, sep, rest = source.partition("://")
    host, slash, path = rest.partition("/")
    if sep and "@" in host:
        source = f"{scheme}{sep}***@{host.rpartition('@')[2]}{slash}{path}"
    return mask_credentials(source)


def zones_listing(names: list[str], status: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Each camera's zones and ``whole_frame`` (a camera removed meanwhile is left out)."""
    out = {}
    for name in names:
        try:
            msg = status(name)
        except KeyError:
            continue
        out[name] = {"zones": msg.get("zones", []), "whole_frame": msg.get("whole_frame", True)}
    return out


ZONES_QUERY_MAX_CHARS = 8000  # the request line is at most 8 KiB


def put_zones(name: str, query: dict[str, list[str]], body: Any, listing: Callable[[], dict[str, Any]],
              set_zones: SetZones, config_file: str | None) -> Reply:
    """``PUT /api/cameras/NAME/zones`` with the JSON body ``{"zones": [...], "whole_frame": true}``
    (or ``?zones=<JSON array>&whole_frame=true|false``): the camera's zones replaced (its streams
    restart), then written to ``config_file`` when that file holds the camera's ``[[cameras]]`` table.
    200 with the zones and ``"saved_to"`` (the file, or ``null``: kept in memory only); a bad value
    is a 400 with one line, an unknown camera a 404."""
    now = listing()
    if name not in now.get("cameras", {}) and name not in now.get("adding", ()):  # adding: set_zones says 409
        return Reply(404, {"error": f"no camera {shorten(name)!r}"})
    try:
        if body is not None and set(query) - {"token"}:
            raise StreamrecError("PUT /api/cameras/NAME/zones: expected the zones in the JSON body or in the query "
                                 f"string, not both (the query string has {shorten(', '.join(sorted(query)))})")
        zones, whole_frame = zones_body(body, name) if body is not None else zones_query(query, name)
        cfg = set_zones(name, zones, whole_frame)
    except Busy as exc:
        return Reply(409, {"error": shorten(str(exc), ERROR_MAX_CHARS)})
    except StreamrecError as exc:
        return Reply(400, {"error": shorten(str(exc), ERROR_MAX_CHARS)})
    saved = None
    if config_file is not None:
        try:
            saved = config_file if write_zones(config_file, name, cfg.zones, cfg.whole_frame, source=cfg.source) else None
        except StreamrecError as exc:  # the camera runs with its new zones; the file could not follow
            logger.warning("camera %s: %s", name, exc)
            return Reply(500, {"error": f"camera {name!r}: zones set but not saved: {exc}"})
    return Reply(200, {"camera": name, "zones": [z.to_json() for z in cfg.zones], "whole_frame": cfg.whole_frame,
                       "saved_to": saved})


def zones_body(body: Any, camera: str) -> tuple[tuple[ZoneConfig, ...], bool]:
    """The validated ``zones`` and ``whole_frame`` of a JSON body."""
    if not isinstance(body, dict) or set(body) - {"zones", "whole_frame"} or "zones" not in body:
        raise StreamrecError('request body: expected {"zones": [...], "whole_frame": true|false}, got '
                             f"{shorten(json.dumps(body))}")
    items, flag = body["zones"], body.get("whole_frame")
    if not isinstance(items, list):
        raise StreamrecError(f"zones: expected a JSON array, got {shorten(json.dumps(items))}")
    if not isinstance(flag, bool):
        raise StreamrecError(f"whole_frame: expected true or false, got {'nothing' if flag is None else shorten(json.dumps(flag))}")
    return parse_zones(items, camera=camera), flag


def zones_query(query: dict[str, list[str]], camera: str) -> tuple[tuple[ZoneConfig, ...], bool]:
    """The validated ``zones`` (strict JSON: no NaN, no repeated keys) and ``whole_frame`` of a query."""
    text = (query.get("zones") or [None])[0]
    if text is None:
        raise StreamrecError("zones: expected a JSON array of zones in the query string, e.g. "
                             '?zones=[{"name":"rack","x":0,"y":0,"w":0.5,"h":0.5}]&whole_frame=true')
    if len(text) > ZONES_QUERY_MAX_CHARS:
        raise StreamrecError(f"zones: expected at most {ZONES_QUERY_MAX_CHARS} characters, got {len(text)}")
    try:
        items = strict_json(text, "zones", "a JSON array")
    except ValueError as exc:
        raise StreamrecError(str(exc)) from None
    if not isinstance(items, list):
        raise StreamrecError(f"zones: expected a JSON array, got {shorten(text)!r}")
    whole_frame = text_flag("whole_frame", (query.get("whole_frame") or [None])[0])  # as POST /api/cameras reads it
    return parse_zones(items, camera=camera), whole_frame


EVENTS_API_LIMIT = 1000  # events in one /api/events answer (the newest); ?limit= asks for fewer


def events_api(events: EventManager) -> ApiRoute:
    """``GET /api/events?camera=&zone=&rule=&since=&until=&limit=`` (newest first), ``GET /api/events/ID``,
    ``GET /api/events/ID/clip.mp4`` (Range requests answered 206), ``GET /api/events/ID/thumb.jpg``
    and ``DELETE /api/events/ID`` (token required)."""

    def handler(method: str, path: str, query: dict[str, list[str]], body: Any = None) -> Reply:
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
        if len(parts) == 2 and parts[1] in FILES and method != "GET":
            return Reply(405, {"error": f"GET /api/events/ID/{parts[1]}"})
        if len(parts) in (1, 2) and method == "GET" and (len(parts) == 1 or parts[1] in FILES):
            try:
                return one_event(events, *parts)
            except DatabaseUnavailable as exc:  # a PostgreSQL restarting, a SQLite file locked: ask again later
                return unavailable(exc)
        if len(parts) > 1:  # /api/events/ID/anything, /api/events/ID/clip.mp4/more
            return NOT_FOUND
        return Reply(405, {"error": "GET /api/events[/ID[/clip.mp4|/thumb.jpg]] or DELETE /api/events/ID"},
                     allow=("GET", "HEAD", "DELETE") if len(parts) == 1 else ("GET", "HEAD"))

    return ApiRoute(handler, admin_methods=("DELETE",))


FILES = {"clip.mp4": ("clip", "video/mp4"), "thumb.jpg": ("thumbnail", "image/jpeg")}


def one_event(events: EventManager, event_id: str, file: str | None = None) -> Reply:
    """``GET /api/events/ID`` (``file`` None), or its clip or thumbnail (``file`` a key of :data:`FILES`)."""
    row = events.store.get(event_id)
    if row is None:
        return Reply(404, {"error": f"no event {shorten(event_id)!r}"})
    if file is None:  # as the list gives it: a clip or thumbnail gone from the disk reads as none
        return Reply(200, row_event(events.with_files_on_disk(row)))
    kind, content_type = FILES[file]
    found = events.file_of(event_id, kind)
    if found is None and events.with_files_on_disk(row).get(kind):  # a .part: written until the event ends
        return Reply(404, {"error": f"the {file} of event {shorten(event_id)!r} is still being written (until the "
                                    "event ends, and a few seconds on)"})
    if found is None:
        return Reply(404, {"error": f"event {shorten(event_id)!r} has no {file}"})
    return Reply(200, FileBody(found, content_type))


def unavailable(exc: Exception) -> Reply:
    """The 503 of a request the events database cannot answer now (logged in one line)."""
    text = printable(str(exc).strip())
    logger.warning("events: cannot read the database: %s", text)
    return Reply(503, {"error": f"events database unavailable: {text}"})


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
        return unavailable(exc)
    return Reply(200, {"events": [row_event(events.with_files_on_disk(r)) for r in rows]})
