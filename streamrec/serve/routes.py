"""The JSON API routes shared by ``serve`` and ``cluster``: ``/api/history`` and ``/api/cameras``."""

from __future__ import annotations

import logging
from typing import Any, Callable

from streamrec.config import CameraConfig
from streamrec.errors import StreamrecError
from streamrec.live.history import HistoryStore, parse_time
from streamrec.serve.server import ApiRoute, Reply
from streamrec.validate import from_text

logger = logging.getLogger(__name__)


HISTORY_API_LIMIT = 10_000  # segments in one /api/history answer: the newest; "truncated" says so


def history_api(store: HistoryStore, *, limit: int = HISTORY_API_LIMIT) -> ApiRoute:
    """``GET /api/history?camera=&since=&until=``: the recorded segments (the page's timelines),
    at most the newest ``limit``, oldest first; ``"truncated": true`` when there were more."""
    def handler(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        if method != "GET":
            return Reply(405, {"error": "GET only"})
        one = lambda k: (query.get(k) or [None])[0]  # noqa: E731
        try:
            since, until = parse_time(one("since")), parse_time(one("until"))
        except StreamrecError as exc:
            return Reply(400, {"error": str(exc)})
        try:
            rows = store.query(camera=one("camera"), since=since, until=until, limit=limit + 1)
        except Exception as exc:  # noqa: BLE001 - the database went away: the page asks again in 5 s
            logger.warning("history: cannot read the database: %s", str(exc).strip())
            return Reply(503, {"error": f"history database unavailable: {str(exc).strip()}"})
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
                return Reply(404, {"error": f"no camera {name!r}"})
            return Reply(200, {"removed": name})
        return Reply(405, {"error": "GET, POST or DELETE"})

    return ApiRoute(handler, admin=True)
