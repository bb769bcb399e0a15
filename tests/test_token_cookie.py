"""The token in an HttpOnly cookie, not in the page's addresses.

* on a real :class:`~streamrec.serve.server.WebServer` in process (port 0) with the real events
  and history routes: ``/?token=T`` is a 303 to the same page without the token, with the cookie
  ``streamrec_token=T; HttpOnly; SameSite=Lax; Path=/``; the cookie alone opens every protected
  route and the websocket; a wrong cookie is a 401; ``Bearer`` and ``?token=`` still work; a
  request that changes something with the cookie alone from another origin is a 403;
* in real headless Chromium on a real ``streamrec serve --token``: after ``/?token=T`` the page
  works (live labels, pictures, a clip, the zones editor) and no request it makes carries the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime
from urllib.parse import quote

import numpy as np
import pytest
import websockets

from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.manager import EventManager
from streamrec.events.store import Event, EventStore
from streamrec.live.history import HistoryStore
from streamrec.serve.routes import events_api, history_api
from streamrec.serve.hub import Hub
from streamrec.serve.server import ApiRoute, Reply, Route, WebServer, json_route
from streamrec.supervision import Supervisor

from browser import MARKS, chromium_page
from conftest import ROOT, free_port, streamrec_cmd, wait_http

TOKEN = "c00kie-t0ken"
PAGE = b"<html>page</html>"
THUMB = b"\xff\xd8thumb\xff\xd9"
CLIP = bytes(range(256)) * 40


def admin_route() -> ApiRoute:
    """An admin route that answers with the method it got."""
    return ApiRoute(lambda method, path, query, body: Reply(200, {"method": method}, allow=("GET", "HEAD", "PUT")), admin=True)


def start_server(folder, token: str | None):
    clips = folder / "clips"
    clips.mkdir()
    (clips / "e1.mp4").write_bytes(CLIP)
    (clips / "e1.jpg").write_bytes(THUMB)
    rule = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0)
    events = EventManager(rules=(rule,), notify=NotifyConfig(), recording=RecordingConfig(dir=str(clips)),
                          db=str(folder / "events.db"), classes=["pouring"], supervisor=Supervisor(),
                          publish=lambda message: None)
    events.store.opened(Event("e1", "pour", "cam", "pouring", 1000.0, 0.9, 0.8), clip="e1.mp4", now=1000.0)
    events.store.set_files("e1", thumbnail="e1.jpg", clip_bytes=len(CLIP))
    history = HistoryStore(str(folder / "history.db"))
    routes = {"/": Route("text/html; charset=utf-8", lambda: PAGE),
              "/healthz": json_route(lambda: {"status": "ok", "cameras": {}}, public=lambda: {"status": "ok"}),
              "/metrics": Route("text/plain; version=0.0.4", lambda: b"streamrec_up 1\n")}
    api = {"/api/history": history_api(history), "/api/events": events_api(events), "/api/admin": admin_route()}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(Hub(), host="127.0.0.1", port=0, routes=routes, api=api, token=token)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)

    def close() -> None:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        history.close()
        events.store.close()

    return server, close


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server, close = start_server(tmp_path_factory.mktemp("cookie"), TOKEN)
    yield server
    close()


def http(port: int, method: str, target: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request as written: its status, headers (lower-case names) and body."""
    with socket.socket() as s:
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall("\r\n".join([f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers, "", ""]).encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body


COOKIE = f"Cookie: streamrec_token={TOKEN}"
COOKIE_HEADER = f"streamrec_token={TOKEN}; HttpOnly; SameSite=Lax; Path=/"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("query, location", [("token=" + TOKEN, "/"),
                                             (f"camera=gate&token={TOKEN}&overlay=1", "/?camera=gate&overlay=1"),
                                             (f"camera=caf%C3%A9&token={TOKEN}", "/?camera=caf%C3%A9")])
def test_the_page_trades_its_token_for_an_http_only_cookie(served, method, query, location):
    status, headers, body = http(served.port, method, f"/?{query}")
    assert (status, headers["location"], headers["set-cookie"], body) == (303, location, COOKIE_HEADER, b"")
    assert headers["cache-control"] == "no-store"


def test_the_token_a_request_names_outranks_its_cookie(served):
    status, headers, _ = http(served.port, "GET", f"/?token={TOKEN}", "Cookie: streamrec_token=old-token")
    assert (status, headers["set-cookie"]) == (303, COOKIE_HEADER)  # a new token replaces an old cookie
    assert http(served.port, "GET", "/metrics", COOKIE)[0] == 200
    assert http(served.port, "GET", "/metrics", "Authorization: Bearer wrong", COOKIE)[0] == 401
    status, headers, body = http(served.port, "GET", "/?token=wrong", COOKIE)
    assert (status, body) == (401, b"missing or wrong token: open /?token=...\n") and "set-cookie" not in headers


@pytest.mark.parametrize("target, body", [("/", PAGE), ("/healthz", b'{"status": "ok", "cameras": {}}'),
                                          ("/metrics", b"streamrec_up 1\n"), ("/api/events/e1/thumb.jpg", THUMB),
                                          ("/api/events/e1/clip.mp4", CLIP), ("/api/admin", b'{"method": "GET"}')])
def test_the_cookie_alone_opens_every_protected_route(served, target, body):
    assert http(served.port, "GET", target, COOKIE)[::2] == (200, body)
    assert http(served.port, "GET", target, "Cookie: theme=dark; " + COOKIE[8:] + "; lang=en")[::2] == (200, body)


def test_the_cookie_alone_opens_the_history_and_events_lists(served):
    status, _, body = http(served.port, "GET", "/api/events", COOKIE)
    assert status == 200 and [e["id"] for e in json.loads(body)["events"]] == ["e1"]
    status, _, body = http(served.port, "GET", "/api/history?since=0", COOKIE)
    assert status == 200 and "segments" in json.loads(body)


def test_a_cookie_planted_beside_the_right_one_locks_no_one_out(served):
    # a page of another port of this host can set streamrec_token=x with a longer path: the
    # browser then sends that one first; the right one beside it still opens the API
    planted = f"Cookie: streamrec_token=planted; streamrec_token={TOKEN}"
    assert http(served.port, "GET", "/api/events", planted)[0] == 200
    assert http(served.port, "GET", "/api/events", "Cookie: streamrec_token=planted; streamrec_token=x")[0] == 401


@pytest.mark.parametrize("target, right", [("/", 200), ("/metrics", 200), ("/api/events", 200),
                                           ("/api/events/e1/clip.mp4", 200), ("/api/admin", 200), ("/ws", 426)])
@pytest.mark.parametrize("cookie", ["streamrec_token=wrong", "streamrec_token=", f"streamrec_token={TOKEN}x",
                                    f"other_token={TOKEN}"])
def test_a_wrong_cookie_is_a_401(served, target, right, cookie):
    assert http(served.port, "GET", target, COOKIE)[0] == right  # 426: the websocket, without its Upgrade header
    assert http(served.port, "GET", target, f"Cookie: {cookie}")[0] == 401


def test_a_wrong_cookie_gets_the_public_health_only(served):
    assert http(served.port, "GET", "/healthz", COOKIE)[::2] == (200, b'{"status": "ok", "cameras": {}}')
    assert http(served.port, "GET", "/healthz", "Cookie: streamrec_token=wrong")[::2] == (200, b'{"status": "ok"}')


def test_the_websocket_opens_with_the_cookie(served):
    async def one_message() -> str:
        url = f"ws://127.0.0.1:{served.port}/ws"
        async with websockets.connect(url, additional_headers={"Cookie": COOKIE[8:]}, open_timeout=10) as ws:
            for _ in range(100):  # the client is counted once its sender runs
                if served.hub.clients:
                    break
                await asyncio.sleep(0.05)
            served.hub.publish_threadsafe("status:cam", '{"type": "status"}')
            return await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(one_message()) == '{"type": "status"}'


@pytest.mark.parametrize("origin, status", [(None, 426), ("http://127.0.0.1:{port}", 426),
                                            ("http://127.0.0.1:1", 403), ("http://elsewhere.example", 403)])
def test_the_websocket_origin_check_stays_with_the_cookie(served, origin, status):
    extra = [f"Origin: {origin.format(port=served.port)}"] if origin else []
    assert http(served.port, "GET", "/ws", COOKIE, *extra)[0] == status  # 426: no Upgrade header


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_change_with_the_cookie_from_another_origin_is_a_403(served, method):
    same = f"Origin: http://127.0.0.1:{served.port}"
    assert http(served.port, method, "/api/admin", COOKIE, same)[::2] == (200, json.dumps({"method": method}).encode())
    assert http(served.port, method, "/api/admin", COOKIE)[0] == 200  # no Origin: not a page of another origin
    status, _, body = http(served.port, method, "/api/admin", COOKIE, "Origin: http://127.0.0.1:1")
    assert (status, json.loads(body)) == (403, {"error": f"{method} /api/admin: cross-origin request refused (Origin "
                                                         f"'http://127.0.0.1:1' is not this server, Host "
                                                         f"'127.0.0.1:{served.port}')"})
    assert http(served.port, method, "/api/admin", COOKIE, "Origin: http://[::1")[0] == 403
    # what else a browser says of a request from another site's page
    status, _, body = http(served.port, method, "/api/admin", COOKIE, same, "Sec-Fetch-Site: cross-site")
    assert (status, json.loads(body)["error"]) == (403, f"{method} /api/admin: cross-origin request refused "
                                                         "(Sec-Fetch-Site 'cross-site')")
    assert http(served.port, method, "/api/admin", COOKIE, same, "Sec-Fetch-Site: same-site")[0] == 403
    assert http(served.port, method, "/api/admin", COOKIE, same, "Sec-Fetch-Site: same-origin")[0] == 200
    assert http(served.port, method, "/api/admin", COOKIE, "Referer: http://evil.example/x")[0] == 403
    assert http(served.port, method, "/api/admin", COOKIE, "Referer: http://[::1")[0] == 403
    assert http(served.port, method, "/api/admin", COOKIE, f"Referer: http://127.0.0.1:{served.port}/")[0] == 200
    # the Bearer header is no cookie a browser adds by itself: another origin's script must know the token
    assert http(served.port, method, "/api/admin", f"Authorization: Bearer {TOKEN}", "Origin: http://127.0.0.1:1")[0] == 200


def test_any_token_fits_in_the_cookie(tmp_path):
    token = 'a b;c=d,"é%'
    server, close = start_server(tmp_path, token)
    try:
        status, headers, _ = http(server.port, "GET", f"/?token={quote(token, safe='')}")
        value = headers["set-cookie"].split(";")[0]
        assert (status, value) == (303, f"streamrec_token={quote(token, safe='')}")
        assert http(server.port, "GET", "/metrics", f"Cookie: {value}")[0] == 200
    finally:
        close()


# -- the page in real Chromium ----------------------------------------------------------------------

CONFIG = """model = "tiny3d"
weights = "none"
device = "cpu"

[[cameras]]
name = "gym"
source = "{clip}"
loop = true

[[cameras.zones]]
name = "rack"
x = 0
y = 0
w = 0.5
h = 0.5

[recording]
dir = "{clips}"
"""


def seed_event(db, clips, demo_clip) -> str:
    """An event of a few minutes ago with its thumbnail and clip (the demo clip: H.264)."""
    import cv2

    (clips / "gym").mkdir(parents=True)
    shutil.copy(demo_clip, clips / "gym" / "seed.mp4")
    cv2.imwrite(str(clips / "gym" / "seed.jpg"), np.full((90, 160, 3), 128, np.uint8))
    store = EventStore(str(db))
    now = time.time()
    midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    start = max(now - 120, midnight + 1)  # today: the list shows today's events
    ev = Event(f"{int(start)}-seed0001", "lifting", "gym", "deadlifting", start, 0.9, 0.8)
    store.opened(ev, clip="gym/seed.mp4", now=start)
    ev.end_ts = start + 20
    store.closed(ev, now=start + 20)
    store.set_files(ev.id, thumbnail="gym/seed.jpg", clip_bytes=(clips / "gym" / "seed.mp4").stat().st_size)
    store.close()
    return ev.id


@pytest.mark.slow
@MARKS[0]
@MARKS[1]
def test_the_page_works_with_the_cookie_and_no_request_carries_the_token(demo_clip, tmp_path):
    db, clips, cfg = tmp_path / "h.db", tmp_path / "clips", tmp_path / "serve.toml"
    event_id = seed_event(db, clips, demo_clip)
    cfg.write_text(CONFIG.format(clip=demo_clip, clips=clips))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--port", str(port), "--db", str(db),
                                          "--token", TOKEN),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_http(f"{base}/healthz", proc=proc)
        with chromium_page(1000, 900) as page:
            urls: list[str] = []
            refused: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            page.on("websocket", lambda ws: urls.append(ws.url))
            page.on("response", lambda r: r.status in (401, 403) and refused.append(r.url))
            page.goto(f"{base}/?token={TOKEN}")
            assert page.url == f"{base}/"
            cookies = page.context.cookies()
            assert [(c["name"], c["value"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == \
                [("streamrec_token", TOKEN, True, "Lax", "/")]
            assert page.evaluate("document.cookie") == ""  # the page's scripts never see it
            # live: the websocket brings labels and pictures
            page.wait_for_selector("#conn.ok", timeout=60_000)
            page.wait_for_function("document.querySelector('[data-testid=zone-label][data-zone=rack]')?.dataset.label",
                                   timeout=60_000)
            page.wait_for_function("Number(document.querySelector('.tile img')?.dataset.frames || 0) > 0", timeout=30_000)
            # the event's thumbnail and clip
            item = f"[data-testid=event][data-id='{event_id}']"
            page.wait_for_function(f"document.querySelector(\"{item} img.thumb\")?.naturalWidth === 160", timeout=30_000)
            page.click(item)
            page.wait_for_function("document.querySelector('[data-testid=player]').readyState >= 2", timeout=30_000)
            assert page.get_attribute("[data-testid=player]", "src") == f"{base}/api/events/{event_id}/clip.mp4"
            # the zones editor (the admin API) saves with the cookie
            page.click("[data-testid=zones-edit]")
            page.click("[data-testid=zones-save]")
            page.wait_for_selector("[data-testid=zone-editor]", state="hidden", timeout=20_000)
            assert page.inner_text("[data-testid=zones-note]") == f"Zones saved to {cfg}."
        assert refused == []
        assert any(u.startswith(f"ws://127.0.0.1:{port}/ws") for u in urls), urls
        assert any("/api/history" in u for u in urls) and any("/clip.mp4" in u for u in urls), urls
        assert [u for u in urls if "token" in u] == [f"{base}/?token={TOKEN}"], urls  # the address typed in alone
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read()
    assert rc == 0 and "Traceback" not in err, err
