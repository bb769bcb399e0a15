"""What the HTTP server answers, on a real :class:`~streamrec.serve.server.WebServer` in process
(port 0) with the real history and events routes over SQLite and files of synthetic bytes:

* every request is answered, whatever a handler, a file or the client's numbers do: an over-long
  or absurd number is a 400 naming the parameter (or a ``Range`` ignored or a 416, as RFC 9110
  says), a failing handler a 500, and 100 such requests in a row leave the server answering;
* a file without ``Range`` is answered whole (200), however large; a range gets a 206 of that part;
* ``HEAD`` gets what ``GET`` gets, without the body, on every route; another method is a 405 with ``Allow``;
* the ``Bearer`` scheme is read in any case;
* an answer reaches a client that reads slowly whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.manager import EventManager
from streamrec.events.store import Event
from streamrec.live.history import HistoryStore
from streamrec.serve.files import FileBody
from streamrec.serve.routes import events_api, history_api
from streamrec.serve.hub import Hub
from streamrec.serve.server import ApiRoute, Reply, Route, WebServer, json_route
from streamrec.supervision import Supervisor

from conftest import run_cli, run_main

TOKEN = "answers-token"
MIB = 2**20
SIZES = {"empty": 0, "one": 1, "under": 4 * MIB - 1, "four": 4 * MIB, "over": 4 * MIB + 1, "big": 9 * MIB + 7}
BIG_JSON = json.dumps({"rows": ["x" * 100] * 80_000}).encode()  # 8 MiB


def api_files(folder):
    def handler(method: str, path: str, query: dict, body: object) -> Reply:
        name = path.rsplit("/", 1)[-1]
        return Reply(200, FileBody(folder / name, "application/octet-stream"))

    return ApiRoute(handler)


def failing(kind: str) -> ApiRoute:
    def handler(method: str, path: str, query: dict, body: object) -> Reply:
        if kind == "raises":
            raise RuntimeError("broken handler")
        if kind == "unserialisable":
            return Reply(200, {"value": object()})
        if kind == "nan":  # no JSON: a 500, never a 200 whose body a strict parser refuses
            return Reply(200, {"value": float("nan")})
        return Reply(299_999, {})  # no HTTP status

    return ApiRoute(handler)


class Served:
    def __init__(self, port: int, folder, clip: bytes, thumb: bytes) -> None:
        self.port, self.folder, self.clip, self.thumb = port, folder, clip, thumb


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    rng = np.random.default_rng(0)
    for name, size in SIZES.items():
        (folder / name).write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    clips = folder / "clips"
    clips.mkdir()
    clip, thumb = rng.integers(0, 256, 9 * MIB, dtype=np.uint8).tobytes(), b"\xff\xd8thumb\xff\xd9"
    (clips / "e1.mp4").write_bytes(clip)
    (clips / "e1.jpg").write_bytes(thumb)
    rule = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0)
    events = EventManager(rules=(rule,), notify=NotifyConfig(), recording=RecordingConfig(dir=str(clips)),
                          db=str(folder / "events.db"), classes=["pouring", "walking"], supervisor=Supervisor(),
                          publish=lambda message: None)
    events.store.opened(Event("e1", "pour", "cam", "pouring", 1000.0, 0.9, 0.8), clip="e1.mp4", now=1000.0)
    events.store.set_files("e1", thumbnail="e1.jpg", clip_bytes=len(clip))
    history = HistoryStore(str(folder / "history.db"))
    for zone in (None, "rack"):  # one segment of the whole frame, one of a zone
        tracker = history.tracker("cam", zone)
        tracker.update("walking", 0.8, 30.0)
        tracker.update("walking", 0.6, 31.0)
        tracker.close()
    history.flush()
    routes = {"/": Route("text/html; charset=utf-8", lambda: b"<html>page</html>"),
              "/healthz": json_route(lambda: {"ok": True}, public=lambda: {"ok": True}),
              "/metrics": Route("text/plain; version=0.0.4", lambda: b"streamrec_up 1\n"),
              "/big": Route("application/json", lambda: BIG_JSON)}
    api = {"/api/history": history_api(history), "/api/events": events_api(events), "/api/files": api_files(folder),
           **{f"/api/{kind}": failing(kind) for kind in ("raises", "unserialisable", "nostatus", "nan")}}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(Hub(), host="127.0.0.1", port=0, routes=routes, api=api, token=TOKEN)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield Served(server.port, folder, clip, thumb)
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    history.close()
    events.store.close()


def http(port: int, method: str, target: str, *headers: str, token: bool = True, rcvbuf: int | None = None,
         pause_s: float = 0.0) -> tuple[int, dict[str, str], bytes]:
    """One request as written: its status, headers (lower-case names) and body as received until
    the server closes. ``rcvbuf`` and ``pause_s``: a client that reads slowly."""
    auth = [f"Authorization: Bearer {TOKEN}"] if token else []
    with socket.socket() as s:
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(30)  # an answer that never comes fails the test
        s.connect(("127.0.0.1", port))
        s.sendall("\r\n".join([f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *auth, *headers, "", ""]).encode())
        time.sleep(pause_s)
        data = b""
        while chunk := s.recv(MIB):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body


# -- files: whole without Range, a part with one ---------------------------------------------------

@pytest.mark.parametrize("name", list(SIZES))
def test_a_file_without_range_is_answered_whole(served, name):
    status, headers, body = http(served.port, "GET", f"/api/files/{name}")
    assert (status, int(headers["content-length"]), "content-range" in headers) == (200, SIZES[name], False)
    assert body == (served.folder / name).read_bytes()


def test_an_event_clip_and_thumbnail_are_answered_whole(served):
    status, headers, body = http(served.port, "GET", "/api/events/e1/clip.mp4")
    assert (status, headers["content-type"], headers["accept-ranges"], body == served.clip) == (200, "video/mp4", "bytes", True)
    status, headers, body = http(served.port, "GET", "/api/events/e1/thumb.jpg")
    assert (status, headers["content-type"], body) == (200, "image/jpeg", served.thumb)


N = 9 * MIB
LONG = "9" * 5000
RANGES = [  # (Range header, status, first byte, last byte or None for a 416)
    ("bytes=0-99", 206, 0, 99),
    ("bytes=100-", 206, 100, N - 1),  # more than 4 MiB: the whole rest
    ("bytes=-10", 206, N - 10, N - 1),
    ("bytes=5-4999999999", 206, 5, N - 1),
    ("BYTES=5-9", 206, 5, 9),  # the unit in any case
    ("bytes= 5-9 ", 206, 5, 9),
    ("bytes=" + "0" * 5000 + "5-9", 206, 5, 9),  # leading zeros of any length
    (f"bytes=0-{LONG}", 206, 0, N - 1),  # an over-long last position: to the end
    (f"bytes=-{LONG}", 206, 0, N - 1),  # an over-long suffix: the whole file
    (f"bytes={LONG}-", 416, None, None),  # an over-long first position: past the end
    (f"bytes={LONG}-{'9' * 3000}", 416, None, None),
    (f"bytes={N}-", 416, None, None),
    ("bytes=-0", 416, None, None),
    ("items=0-5", 200, 0, N - 1),  # another unit: ignored
    ("bytes=0-1,5-6", 200, 0, N - 1),  # several ranges: ignored
    ("bytes=9-5", 200, 0, N - 1),  # an invalid range: ignored
    ("bytes=abc", 200, 0, N - 1),
    ("bytes=-", 200, 0, N - 1),
    ("bytes=٣-", 200, 0, N - 1),  # a digit to Unicode, not to HTTP
    (f"{LONG}", 200, 0, N - 1),
]


@pytest.mark.parametrize("header, status, first, last", RANGES, ids=[r[0][:24] for r in RANGES])
def test_a_range_is_answered_as_rfc_9110_says(served, header, status, first, last):
    got, headers, body = http(served.port, "GET", "/api/events/e1/clip.mp4", f"Range: {header}")
    assert got == status
    if status == 416:
        assert (headers["content-range"], body) == (f"bytes */{N}", b"")
        return
    assert body == served.clip[first:last + 1] and int(headers["content-length"]) == len(body)
    assert headers.get("content-range") == (f"bytes {first}-{last}/{N}" if status == 206 else None)


def test_if_range_lets_a_range_count_only_for_the_same_file(served):
    import os

    clip = served.folder / "clips" / "e1.mp4"
    os.utime(clip, (1_700_000_000, 1_700_000_000))  # a date names a file only once it is a second old
    status, headers, _ = http(served.port, "HEAD", "/api/events/e1/clip.mp4")
    etag, modified = headers["etag"], headers["last-modified"]
    assert (status, modified) == (200, "Tue, 14 Nov 2023 22:13:20 GMT") and etag == f'"{N:x}-{1_700_000_000 * 10**9:x}"'
    for if_range, status in [(etag, 206), (modified, 206), ('"other"', 200), (f"W/{etag}", 200),
                             ("Wed, 15 Nov 2023 22:13:20 GMT", 200), ("garbage", 200)]:
        got, headers, body = http(served.port, "GET", "/api/events/e1/clip.mp4", "Range: bytes=0-9",
                                  f"If-Range: {if_range}")
        assert (got, len(body)) == (status, 10 if status == 206 else N), if_range
        assert body == served.clip[:len(body)]
    got, _, body = http(served.port, "GET", "/api/events/e1/clip.mp4", "Range: bytes=0-9", f"If-Range: {etag}",
                        f"If-Range: {etag}")
    assert (got, body) == (400, b"more than one If-Range header\n")


EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


def test_a_revalidated_clip_is_a_304_and_a_condition_it_fails_a_412(served):
    """RFC 9110 13.2: a browser's cache asks whether its copy is current; a download tool that resumes
    asks that the file be the one it has."""
    _, headers, _ = http(served.port, "GET", "/api/events/e1/clip.mp4")
    etag, modified = headers["etag"], headers["last-modified"]
    cases = [([f"If-None-Match: {etag}"], 304), ([f"If-None-Match: W/{etag}"], 304), (["If-None-Match: *"], 304),
             ([f'If-None-Match: "other", {etag}'], 304), (['If-None-Match: "other"'], 200),
             ([f"If-Modified-Since: {modified}"], 304), ([f"If-Modified-Since: {EPOCH}"], 200),
             (["If-Modified-Since: garbage"], 200), ([f"If-Match: {etag}"], 200), (["If-Match: *"], 200),
             (['If-Match: "nope"'], 412), ([f"If-Match: W/{etag}"], 412), ([f"If-Unmodified-Since: {EPOCH}"], 412),
             ([f"If-Unmodified-Since: {modified}"], 200),
             # the tag decides, not the date (13.2.2): If-None-Match over If-Modified-Since, If-Match over If-Unmodified-Since
             (['If-None-Match: "other"', f"If-Modified-Since: {modified}"], 200),
             ([f"If-Match: {etag}", f"If-Unmodified-Since: {EPOCH}"], 200),
             ([f"If-Match: {etag}", f"If-None-Match: {etag}"], 304), (['If-Match: "nope"', f"If-None-Match: {etag}"], 412)]
    for lines, want in cases:
        for method in ("GET", "HEAD"):
            status, got, body = http(served.port, method, "/api/events/e1/clip.mp4", *lines, "Range: bytes=0-9")
            want_body = served.clip[:10] if want == 200 and method == "GET" else b""
            assert (status, body) == (206 if want == 200 else want, want_body), (lines, method)
            assert want != 304 or (got["etag"], got["last-modified"]) == (etag, modified)


@pytest.mark.slow
def test_bad_ranges_never_lock_the_server_out(served):
    for i in range(100):  # more than the 64 connections one address may hold
        header = ("bytes=" + "9" * (4301 + i) + "-", "bytes=-" + "9" * 5000, "bytes=1-" + "9" * 8000)[i % 3]
        assert http(served.port, "GET", "/api/events/e1/clip.mp4", f"Range: {header}")[0] in (206, 416)
    status, _, body = http(served.port, "GET", "/api/events/e1/clip.mp4", "Range: bytes=0-9")
    assert (status, body) == (206, served.clip[:10])


@pytest.mark.parametrize("target", ["/api/events/e1/clip.mp4", "/big"])
@pytest.mark.slow
def test_clients_that_do_not_read_never_lock_the_address_out(served, target):
    stalled = []
    try:
        for _ in range(64):  # every connection one address may hold, each an answer its client does not read
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", served.port))
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
                      f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            stalled.append(s)
        time.sleep(2.5)  # GuardedConnection.STALL_S
        status, _, body = http(served.port, "GET", "/api/events/e1/thumb.jpg")
        assert (status, body) == (200, served.thumb)
    finally:
        for s in stalled:
            s.close()


def test_a_repeated_range_header_is_a_400(served):
    assert http(served.port, "GET", "/api/events/e1/clip.mp4", "Range: bytes=0-1", "Range: bytes=2-3")[0] == 400


COOKIE = f"Cookie: streamrec_token={TOKEN}"


@pytest.mark.parametrize("method, target, headers, name", [
    ("GET", "/ws", ["Upgrade: websocket", "Upgrade: h2c", "Connection: Upgrade"], "Upgrade"),
    ("POST", "/api/raises", [COOKIE, "Origin: http://HOST", "Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: cross-site"],
     "Sec-Fetch-Site"),
    ("POST", "/api/raises", [COOKIE, "Referer: http://HOST/", "Referer: http://evil.example/"], "Referer"),
    ("GET", "/healthz", ["Origin: http://HOST", "Origin: http://evil.example"], "Origin"),
])
def test_a_repeated_header_read_as_one_is_a_400_naming_it(served, caplog, method, target, headers, name):
    """Which of two would count is a guess: the request is refused, never a 500 with a traceback in the log."""
    headers = [h.replace("HOST", f"127.0.0.1:{served.port}") for h in headers]
    with caplog.at_level(logging.ERROR, logger="streamrec.serve.server"):
        status, _, body = http(served.port, method, target, *headers, token=not target.startswith("/api/"))
    assert (status, body) == (400, f"more than one {name} header\n".encode())
    assert caplog.records == []


def test_a_failed_request_is_logged_without_its_query():
    """The query may hold the ``--token``; a log line is the path on one line."""
    from streamrec.serve.server import logged_path

    assert logged_path("/ws?token=S3CRET") == "/ws"
    assert logged_path("/a\x1b[2J\nFAKE?token=S3CRET#x") == "/a\\x1b[2J\\nFAKE"
    assert logged_path("/" + "x" * 500).endswith("... (501 characters)")


def test_a_file_that_went_away_is_a_404(served):
    status, _, body = http(served.port, "GET", "/api/files/no-such-file")
    assert (status, json.loads(body)) == (404, {"error": "the file no longer exists"})


@pytest.mark.parametrize("target", ["/api/files/big", "/big"])
@pytest.mark.slow
def test_a_slow_reader_gets_the_whole_answer(served, target):
    status, headers, body = http(served.port, "GET", target, rcvbuf=4096, pause_s=1.0)
    want = (served.folder / "big").read_bytes() if target == "/api/files/big" else BIG_JSON
    assert (status, int(headers["content-length"]), len(body), body == want) == (200, len(want), len(want), True)


# -- every failure is answered ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["raises", "unserialisable", "nostatus", "nan"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_a_failing_handler_is_a_500(served, kind, method):
    status, _, body = http(served.port, method, f"/api/{kind}")
    assert (status, json.loads(body) if method != "HEAD" else None) == \
        (500, {"error": "internal error"} if method != "HEAD" else None)


NUMBERS = [LONG, "-" + LONG, "1e999", "nan", "inf", "-inf", "Infinity", "1e300", "-1e400d", "-nanh", "-1e12d",
           "1_000", "-1_0d", "%D9%A3", "-%D9%A3d", "%EF%BC%95", "--1d", "-%2B1d", "0x10", "%2Binf", "1e308",
           "2026-01-01T00:00:00%00", "%00", "-1D", "%1C100", "%E2%80%83100", "%C2%85-10m", "100%C2%A0", "%0B-1h",
           "2026-01-01T00:00:00%C2%A0"]


@pytest.mark.parametrize("path", ["/api/history", "/api/events"])
@pytest.mark.parametrize("param", ["since", "until"])
@pytest.mark.parametrize("value", NUMBERS, ids=[v[:12] for v in NUMBERS])
def test_an_absurd_time_is_a_400_naming_it(served, path, param, value):
    status, _, body = http(served.port, "GET", f"{path}?{param}={value}")
    error = json.loads(body)["error"]
    assert status == 400 and error.startswith(f"{param}: expected ") and "\n" not in error and len(error) < 200


@pytest.mark.parametrize("text", ["9" * 8000 + "x", "-" + "9" * 8000 + ".9x", "9" * 8000 + "e" + "9" * 8000 + "x"],
                         ids=["digits", "decimals", "exponent"])
def test_a_long_number_that_is_no_number_is_refused_at_once(text):
    from streamrec.config import CameraConfig
    from streamrec.errors import StreamrecError
    from streamrec.timespan import parse_time
    from streamrec.validate import from_text

    started = time.perf_counter()
    for refuse in (lambda: parse_time(text, "since"), lambda: from_text(CameraConfig, {"open_timeout": text})):
        with pytest.raises(StreamrecError):
            refuse()
    assert time.perf_counter() - started < 0.2  # no backtracking over the digits


@pytest.mark.parametrize("target, status", [("/api/events/a%00b", 404), ("/api/events/%00/clip.mp4", 404),
                                            ("/api/events?camera=%00", 400), ("/api/events?rule=r%00", 400),
                                            ("/api/history?camera=%00", 400), ("/api/events/" + "9" * 5000, 404),
                                            ("/api/events/" + "x" * 5000 + "/thumb.jpg", 404)])
def test_a_name_no_event_can_have_is_a_short_answer(served, target, status):
    got, _, body = http(served.port, "GET", target)
    assert got == status and len(json.loads(body)["error"]) < 120


@pytest.mark.parametrize("method, target", [
    ("GET", "/api/history/x"), ("GET", "/api/history/"), ("GET", "/api/events/e1/"), ("GET", "/api/events//e1"),
    ("GET", "/api/events/e1/clip.mp4/"), ("GET", "/api/events/e1/clip.mp4/x"), ("GET", "/api/events/e1/other"),
    ("HEAD", "/api/events/e1/thumb.jpg/x"), ("DELETE", "/api/events/e1/x"), ("DELETE", "/api/events/e1%2Fx"),
    ("GET", "/api/events/e1%2Fclip.mp4"),
])
def test_a_path_with_segments_no_route_has_is_a_404(served, method, target):
    status, _, body = http(served.port, method, target)
    assert (status, json.loads(body) if method != "HEAD" else None) == (404, {"error": "not found"} if method != "HEAD" else None)
    assert http(served.port, "GET", "/api/events/e1")[0] == 200  # nothing was deleted


@pytest.mark.parametrize("name", ["x" * 5000, "\x00", "caf\u00e9" * 2000])
def test_deleting_a_camera_no_one_has_is_a_short_404(name):
    from streamrec.serve.routes import cameras_api

    reply = cameras_api(listing=dict, add=lambda cam: None, remove=lambda n: False).handler("DELETE", f"/api/cameras/{name}", {})
    assert reply.status == 404 and len(reply.body["error"]) < 80


LIMITS = [LONG, "0" * 5000 + "1", "1e3", "-1", "0", "1001", "1_0", "%D9%A3", "0x10", "%20", "nan", "5.0", "%2B5", "5%00", "%1C5",
          "%E2%80%835", "%0B5%C2%85", "5%C2%A0"]


@pytest.mark.parametrize("value", LIMITS, ids=[v[:12] for v in LIMITS])
def test_an_absurd_limit_is_a_400_naming_it(served, value):
    status, _, body = http(served.port, "GET", f"/api/events?limit={value}")
    assert status == 400
    assert json.loads(body)["error"].startswith("limit: expected a whole number 1..1000, got ")


@pytest.mark.parametrize("path, param, message", [
    ("/api/events", "limit", "limit: expected a whole number 1..1000, got ''"),
    ("/api/events", "since", "since: expected Unix seconds, an ISO time or -10m/-2h/-1d, got ''"),
    ("/api/history", "until", "until: expected Unix seconds, an ISO time or -10m/-2h/-1d, got ''"),
])
def test_a_number_given_empty_is_a_400_not_left_out(served, path, param, message):
    status, _, body = http(served.port, "GET", f"{path}?{param}=")
    assert (status, json.loads(body)) == (400, {"error": message})


@pytest.mark.parametrize("query, zones", [("", [None, "rack"]), ("?zone=", [None]), ("?zone=rack", ["rack"])])
def test_an_empty_zone_selects_the_whole_frames_segments(served, query, zones):
    status, _, body = http(served.port, "GET", f"/api/history{query}")
    assert (status, [seg["zone"] for seg in json.loads(body)["segments"]]) == (200, zones)


@pytest.mark.parametrize("line, status, why", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1", 414, b"request line: expected at most 8190 bytes, got 9014\n"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 9000, 431, b"a header line: expected at most 8190 bytes, got 9007\n"),
    (b"GET / HTTP/1.1" + b"\r\nX-A: b" * 129, 431, b"headers: expected at most 128, got 130\n"),
    (b"GET / HTTP/1.1" + b"\r\nX-A: " + b"b" * 8000 * 3, 431, None),
    (b"GET / HTTP/1.1" + (b"\r\nX-A: " + b"b" * 8000) * 3, 431, b"request head: expected at most 16384 bytes, got "
                                                               b"24062 or more\n"),  # whole in one packet too
])
def test_a_request_over_the_size_limits_is_answered_as_http_not_as_a_websocket(served, line, status, why):
    data = raw_request(served.port, line + b"\r\nHost: 127.0.0.1:%d\r\n\r\n" % served.port)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode() and b"WebSocket" not in body
    assert body == why if why is not None else body.startswith(b"a header line: expected at most 8190 bytes")


@pytest.mark.parametrize("head, status", [
    (b"HEAD /api/events HTTP/1.1\r\nHost: HOST\r\nContent-Length: 70000\r\n\r\n", 413),
    (b"HEAD /api/events HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: HOST\r\n\r\n", 414),
    (b"HEAD / HTTP/1.1\nHost: HOST\n\n", 400),
])
def test_a_head_refused_before_it_is_parsed_gets_no_body(served, head, status):
    """RFC 9110 9.3.2: an answer to HEAD has none, whoever answers it."""
    data = raw_request(served.port, head.replace(b"HOST", b"127.0.0.1:%d" % served.port))
    line, _, body = data.partition(b"\r\n\r\n")
    assert (line.split(b"\r\n")[0].split(b" ")[1], body) == (str(status).encode(), b"")
    assert b"\r\nContent-Length: " in line  # what a GET's answer would carry


@pytest.mark.parametrize("query", ["limit=1", "limit=1000", "limit=0007", "since=0&until=-1h", "since=1700000000",
                                   "limit=%205", "limit=5%09", "since=%20-1h",
                                   "since=2026-01-01T00:00:00%2B00:00", "since=-0", "since=%2B5.&until=.5e3",
                                   "since=-1e-400d", "since=1000&until=2000"])
def test_sensible_numbers_are_answered(served, query):
    status, _, body = http(served.port, "GET", f"/api/events?{query}")
    assert status == 200 and isinstance(json.loads(body)["events"], list)


@pytest.mark.parametrize("command", ["history", "events"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1e400d", LONG])
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_an_absurd_since_on_the_command_line_is_one_line(tmp_path, command, value, option):
    proc = run_main(command, "--db", str(tmp_path / "x.db"), option, value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"streamrec: error: {option}: expected a time within the years 1 to 9999, got ")
    assert proc.stderr.count("\n") == 1 and len(proc.stderr) < 200


@pytest.mark.parametrize("command", ["history", "events"])
@pytest.mark.parametrize("value", ["99999999999999999999999", "1_0"])
def test_an_absurd_limit_on_the_command_line_is_one_line(tmp_path, command, value):
    from streamrec.events.store import EventStore

    EventStore(str(tmp_path / "x.db")).close()  # an existing database: the limit reached SQLite, which refused it
    proc = run_cli(command, "--db", str(tmp_path / "x.db"), "--limit", value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert f"--limit: expected a whole number up to 1000000000, got '{value}'" in proc.stderr


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
numbers = st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(repr),
                    st.text("0123456789", min_size=4300, max_size=6000), st.sampled_from(NUMBERS + LIMITS))


@SETTINGS
@given(path=st.sampled_from(["/api/history", "/api/events"]), param=st.sampled_from(["since", "until", "limit"]),
       value=numbers)
def test_any_query_number_is_answered_or_a_400_naming_it(served, path, param, value):
    status, _, body = http(served.port, "GET", f"{path}?{param}={quote(value, safe='')}")
    assert status in (200, 400)
    if status == 400:
        assert json.loads(body)["error"].startswith(f"{param}: expected ")


range_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
ranges = st.one_of(range_text, range_text.map(lambda t: "bytes=" + t),
                   st.tuples(st.text("0123456789", max_size=8000), st.text("0123456789", max_size=40)).map(
                       lambda ab: f"bytes={ab[0]}-{ab[1]}"))


@SETTINGS
@given(header=ranges)
def test_any_range_is_answered_with_what_it_says(served, header):
    status, headers, body = http(served.port, "GET", "/api/events/e1/thumb.jpg", f"Range: {header}")
    size = len(served.thumb)
    assert status in (200, 206, 416)
    if status == 200:
        assert body == served.thumb and "content-range" not in headers
    elif status == 206:
        first, last = map(int, headers["content-range"].removeprefix("bytes ").removesuffix(f"/{size}").split("-"))
        assert body == served.thumb[first:last + 1] and len(body) == int(headers["content-length"]) > 0
    else:
        assert (headers["content-range"], body) == (f"bytes */{size}", b"")


# -- methods --------------------------------------------------------------------------------------------

HEAD_TARGETS = ["/", "/healthz", "/metrics", "/big", "/api/history", "/api/events", "/api/events/e1",
                "/api/events/e1/clip.mp4", "/api/events/e1/thumb.jpg", "/api/files/big", "/api/files/empty",
                "/api/events/nope", "/nowhere", "/api/raises", "/ws"]


def timeless(headers: dict[str, str]) -> dict[str, str]:
    """An answer's headers but its ``Date``, which two answers a second apart differ in."""
    from email.utils import parsedate_to_datetime

    assert abs(parsedate_to_datetime(headers["date"]).timestamp() - time.time()) < 60  # every answer has one
    return {k: v for k, v in headers.items() if k != "date"}


@pytest.mark.parametrize("target", HEAD_TARGETS)
def test_head_gets_what_get_gets_without_the_body(served, target):
    get_status, get_headers, get_body = http(served.port, "GET", target)
    status, headers, body = http(served.port, "HEAD", target)
    assert (status, timeless(headers), body) == (get_status, timeless(get_headers), b"")
    assert int(headers["content-length"]) == len(get_body)


@pytest.mark.parametrize("token, origin, status", [(False, None, 401), (True, "http://elsewhere.example", 403),
                                                   (False, "http://elsewhere.example", 401), (True, None, 426)])
def test_head_of_the_websocket_is_refused_as_a_get_is(served, token, origin, status):
    extra = [f"Origin: {origin}"] if origin else []
    get_status, get_headers, _ = http(served.port, "GET", "/ws", *extra, token=token)
    head_status, head_headers, _ = http(served.port, "HEAD", "/ws", *extra, token=token)
    assert (head_status, timeless(head_headers)) == (get_status, timeless(get_headers)) and get_status == status


def test_head_of_a_range_gets_the_range_headers(served):
    (head, head_headers), (get, get_headers) = (http(served.port, method, "/api/events/e1/clip.mp4", "Range: bytes=10-19")[:2]
                                                for method in ("HEAD", "GET"))
    assert (head, timeless(head_headers)) == (get, timeless(get_headers))


ALLOWED = {"/": "GET, HEAD", "/healthz": "GET, HEAD", "/metrics": "GET, HEAD", "/ws": "GET, HEAD",
           "/api/history": "GET, HEAD", "/api/events": "GET, HEAD", "/api/events/e1": "GET, HEAD, DELETE",
           "/api/events/e1/clip.mp4": "GET, HEAD", "/api/events/e1/thumb.jpg": "GET, HEAD"}


@pytest.mark.parametrize("target", list(ALLOWED))
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "OPTIONS", "TRACE", "get"])
def test_another_method_is_a_405_with_allow(served, target, method):
    status, headers, _ = http(served.port, method, target)
    assert (status, headers.get("allow")) == (405, ALLOWED[target])


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
@pytest.mark.parametrize("target", ["/metrics", "/api/history", "/api/events/e1/thumb.jpg"])
def test_the_bearer_scheme_is_read_in_any_case(served, scheme, target):
    assert http(served.port, "GET", target, f"Authorization: {scheme} {TOKEN}", token=False)[0] == 200
    assert http(served.port, "GET", target, f"Authorization: {scheme}  {TOKEN} ", token=False)[0] == 200
    assert http(served.port, "GET", target, f"Authorization: {scheme} wrong", token=False)[0] == 401


@pytest.mark.parametrize("between", ["\t", "\t\t", " \t ", "   "])
@pytest.mark.parametrize("target", ["/metrics", "/api/history"])
def test_spaces_or_tabs_may_follow_the_bearer_scheme(served, between, target):
    assert http(served.port, "GET", target, f"Authorization: Bearer{between}{TOKEN}\t", token=False)[0] == 200
    assert http(served.port, "GET", target, f"Authorization: Bearer{between}wrong", token=False)[0] == 401


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(MIB):
            data += chunk
    return data


MALFORMED = [b"GET /api/events/\xff\xfe HTTP/1.1", b"GET /api/events/caf\xc3\xa9/clip.mp4 HTTP/1.1",
             b"GET /api/events?since=\xd9\xa3 HTTP/1.1", b"GET /metrics?token=\xff HTTP/1.1", b"G\xffT / HTTP/1.1",
             b"GET / HTTP/2.0", b"GET /", b"GET / HTTP/1.1 x", b"GET / HTTP/1.1\r\nX: a\x01b", b"GET / HTTP/1.1\r\nno colon"]


@pytest.mark.parametrize("line", MALFORMED, ids=[m.decode("latin-1")[:24] for m in MALFORMED])
def test_a_malformed_request_is_a_400_that_says_why(served, line):
    data = raw_request(served.port, line + b"\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n\r\n"
                       % (served.port, TOKEN.encode()))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and body.startswith(b"malformed request: ") and body.count(b"\n") == 1
    assert all(32 <= c < 127 for c in body[:-1])  # the client's bytes escaped


@pytest.mark.parametrize("head, why", [
    (b"GET /api/cameras?token=%s HTTP/2.0", b"unsupported protocol; expected HTTP/1.1 or HTTP/1.0"),
    (b"GET\t/api/cameras?token=%s HTTP/1.1", b"invalid HTTP request line"),
    (b"GET /x?api-key=%s HTTP/3", b"unsupported protocol; expected HTTP/1.1 or HTTP/1.0"),
    (b"GET / HTTP/1.1\r\nAuthorization: Bearer\r\n %s", b"invalid HTTP header line"),
    (b"GET / HTTP/1.1\r\nCookie: a=b\r\n\tstreamrec_token=%s", b"invalid HTTP header line"),
    (b"GET /api/events?limit=\xef\xbc\x91&token=%s HTTP/1.1",
     b"bytes that are not ASCII in the request line (percent-encode them)"),
], ids=["protocol", "tab", "api-key", "folded-bearer", "folded-cookie", "not-ascii"])
def test_a_malformed_request_says_what_is_wrong_without_quoting_it(served, head, why):
    """The answer to a request the parser refuses names the fault, never the line: a token or a
    key in it would be handed back (and kept in a proxy's log of answers)."""
    data = raw_request(served.port, head % TOKEN.encode() + b"\r\nHost: 127.0.0.1:%d\r\n\r\n" % served.port)
    head_out, _, body = data.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 400 ") and body == b"malformed request: " + why + b"\n"
    assert TOKEN.encode() not in data


@pytest.mark.parametrize("ends", [(b"\n", b"\n"), (b"\r\n", b"\n"), (b"\n", b"\r\n"), (b"\r", b"\r"), (b"\r\n", b"\r\r")])
def test_a_head_whose_lines_end_in_lf_or_cr_alone_is_a_400_at_once(served, ends):
    line, last = ends
    started = time.monotonic()
    data = raw_request(served.port, b"GET /healthz HTTP/1.1" + line + b"Host: 127.0.0.1:%d" % served.port + line + last)
    assert data.startswith(b"HTTP/1.1 400 ") and data.endswith(b"malformed request: lines end with CR LF\n")
    assert time.monotonic() - started < 2  # not the header timeout


@pytest.mark.parametrize("method, target", [("DELETE", "//evil/api/events/e1"), ("GET", "//x/api/events/e1"),
                                            ("GET", "//x/api/history"), ("GET", "//x/metrics")])
def test_a_target_that_starts_with_two_slashes_is_a_404_that_acts_on_nothing(served, method, target):
    assert http(served.port, method, target)[0] == 404
    assert http(served.port, "GET", "/api/events/e1")[0] == 200  # not deleted


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")


@pytest.mark.parametrize("target, status", [("/api/events/e1", 200), ("/", 200), ("/ws", 401), ("/nowhere", 404)])
@pytest.mark.parametrize("after", [b"\r\n", b"GET / HTTP/1.1\r\n\r\n", b"\x81\x85junk"])
def test_bytes_after_a_websocket_request_it_does_not_open_leave_its_answer_whole(served, caplog, target, status, after):
    """A request asking for a websocket that it does not get (not /ws, or no token): its answer
    comes whole, and what followed it is dropped, never read as frames."""
    head = "\r\n".join([f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{served.port}",
                         *([f"Authorization: Bearer {TOKEN}"] if target != "/ws" else []), *UPGRADE, "", ""])
    data = raw_request(served.port, head.encode() + after)
    assert data.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), data[:200]
    time.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.fixture()
def ws_port():
    """A server with the websocket alone, on its own loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(Hub(), host="127.0.0.1", port=0, routes={}, api={}, token=TOKEN)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield server.port
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def masked(opcode: int, payload: bytes) -> bytes:
    """A client's frame (masked, as RFC 6455 says), of up to 65535 bytes."""
    key = b"\x01\x02\x03\x04"
    size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([0x80 | opcode]) + size + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("apart", [False, True], ids=["same packet", "in pieces"])
def test_a_websocket_gets_the_frames_sent_with_its_request(ws_port, apart):
    """A client that sends its first frames before the 101: they are read once the websocket is
    open (a ping here: its pong comes back after the 101)."""
    head = "\r\n".join(["GET /ws HTTP/1.1", f"Host: 127.0.0.1:{ws_port}", f"Authorization: Bearer {TOKEN}",
                         *UPGRADE, "", ""]).encode()
    sent = head + masked(0x2, bytes(60_000)) + masked(0x9, b"abcd")  # 60 kB of early frames, then a ping
    with socket.create_connection(("127.0.0.1", ws_port), timeout=10) as s:
        for i in range(0, len(sent), 7_001 if apart else len(sent)):
            s.sendall(sent[i:i + (7_001 if apart else len(sent))])
        data = b""
        while b"\x8a\x04abcd" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 ") and data.index(b"\x8a\x04abcd") > data.index(b"\r\n\r\n")


def test_a_client_sending_more_than_64_kib_before_the_handshake_ends_is_closed(ws_port):
    """Never a stream with a hole: frames past the bound close the connection, unanswered."""
    head = "\r\n".join(["GET /ws HTTP/1.1", f"Host: 127.0.0.1:{ws_port}", f"Authorization: Bearer {TOKEN}",
                         *UPGRADE, "", ""]).encode()
    with socket.create_connection(("127.0.0.1", ws_port), timeout=10) as s:
        data = b""
        try:
            s.sendall(head + b"".join(masked(0x2, bytes(10_000)) for _ in range(30)) + masked(0x9, b"abcd"))
            while b"\x8a\x04abcd" not in data and (chunk := s.recv(65536)):
                data += chunk
        except ConnectionResetError:
            pass
    if data.startswith(b"HTTP/1.1 101 "):  # the handshake ended before the bound was passed: every frame read
        assert b"\x8a\x04abcd" in data and b"\x88" not in data.partition(b"\r\n\r\n")[2][:2]
    else:
        assert data == b""


@pytest.mark.parametrize("held", [0, 1, 2, 3])
def test_a_head_at_the_16_kib_bound_gets_one_answer_however_it_is_split(served, held):
    """16384 bytes, then its CR LF CR LF, the last ``held`` bytes of it sent a moment later."""
    head = b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-A: %s\r\nX-B: %s\r\nX-C: " % (
        served.port, b"a" * 6000, b"b" * 6000)
    head += b"b" * (16384 - len(head)) + b"\r\n\r\n"  # 16384 bytes before its CR LF CR LF
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
        s.sendall(head[:len(head) - held])
        time.sleep(0.2)
        s.sendall(head[len(head) - held:])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.split(b"\r\n")[0] == b"HTTP/1.1 404 Not Found"


TRAILING = {"a second request": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "a stray CR LF": b"\r\n",
            "bytes that are no request": b"\x00\xff junk", "a body longer than announced": None}


@pytest.mark.parametrize("what", list(TRAILING))
@pytest.mark.parametrize("target, body", [("/healthz", b'{"ok": true}'), ("/", b"<html>page</html>"),
                                          ("/api/events/e1/thumb.jpg", b"\xff\xd8thumb\xff\xd9")])
@pytest.mark.parametrize("apart", [False, True], ids=["same packet", "later packet"])
def test_bytes_after_a_request_leave_its_answer_whole_and_log_no_error(served, caplog, what, target, body, apart):
    head = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n" % (
        target.encode(), served.port, TOKEN.encode())
    if TRAILING[what] is None:
        first, after = head + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", b"cdef"
    else:
        first, after = head + b"\r\n", TRAILING[what]
    with socket.socket() as s:
        s.settimeout(10)  # an answer that never comes fails the test
        s.connect(("127.0.0.1", served.port))
        s.sendall(first if apart else first + after)
        if apart:
            time.sleep(0.05)
            try:
                s.sendall(after)
            except OSError:  # already answered and closed
                pass
        data = b""
        while chunk := s.recv(MIB):
            data += chunk
    reply, _, got = data.partition(b"\r\n\r\n")
    assert (reply.split(b"\r\n")[0], got) == (b"HTTP/1.1 200 OK", body)  # one answer, the first request's
    time.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("value", [f"Basic {TOKEN}", f"Bearer{TOKEN}", TOKEN, f"Token {TOKEN}"])
def test_another_scheme_is_a_401(served, value):
    assert http(served.port, "GET", "/metrics", f"Authorization: {value}", token=False)[0] == 401


# -- the same while serve prepares its model -------------------------------------------------------------

@pytest.fixture
def starting():
    from streamrec.serve.starting import StartingServer

    server = StartingServer("127.0.0.1", 0, token=TOKEN, expected_s=30).start()
    yield server.port
    server.close()


@pytest.mark.parametrize("target, status", [("http://evil.example/healthz", 421), ("http://127.0.0.1:{port}/healthz", 200),
                                            ("/%68ealthz", 200)])
def test_while_preparing_a_target_is_read_as_the_web_server_reads_it(starting, target, status):
    got, _, body = http(starting, "GET", target.format(port=starting))
    assert got == status and (status != 200 or json.loads(body)["status"] == "starting")


@pytest.mark.parametrize("target", ["/", "/healthz", "/api/history"])
def test_head_while_preparing_gets_what_get_gets(starting, target):
    get_status, get_headers, get_body = http(starting, "GET", target)
    status, headers, body = http(starting, "HEAD", target)
    ignore = ("date", "content-length")  # healthz's elapsed seconds may change meanwhile
    assert (status, {k: v for k, v in headers.items() if k not in ignore}, body) == \
        (get_status, {k: v for k, v in get_headers.items() if k not in ignore}, b"")
    assert status == (503 if target.startswith("/api") else 200) and int(headers["content-length"]) > 0


def test_the_page_trades_its_token_for_the_cookie_while_preparing_too(starting):
    status, headers, _ = http(starting, "GET", f"/?camera=gate&token={TOKEN}", token=False)
    assert status == 303 and headers["location"] == "/?camera=gate"
    assert headers["set-cookie"] == f"streamrec_token={TOKEN}; HttpOnly; SameSite=Lax; Path=/"
    status, _, body = http(starting, "GET", "/", f"Cookie: streamrec_token={TOKEN}", token=False)
    assert status == 200 and b'data-testid="label"' in body
    status, _, body = http(starting, "GET", "/healthz", f"Cookie: streamrec_token={TOKEN}", token=False)
    assert "expected_s" in json.loads(body)["preparing"]  # the full view
    assert http(starting, "GET", "/", "Cookie: streamrec_token=wrong", token=False)[0] == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_read_in_any_case_while_preparing(starting, scheme):
    status, _, body = http(starting, "GET", "/healthz", f"Authorization: {scheme} {TOKEN}", token=False)
    assert status == 200 and "expected_s" in json.loads(body)["preparing"]
    status, _, body = http(starting, "GET", "/healthz", f"Authorization: {scheme} wrong", token=False)
    assert status == 200 and "expected_s" not in json.loads(body)["preparing"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"])
@pytest.mark.parametrize("target", ["/", "/healthz", "/ws", "/api/cameras"])
def test_another_method_while_preparing_is_a_405_or_the_api_wait(starting, method, target):
    status, headers, _ = http(starting, method, target)
    if target.startswith("/api/"):
        assert (status, headers.get("retry-after")) == (503, "2")
    else:
        assert (status, headers.get("allow")) == (405, "GET, HEAD")


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest.mark.parametrize("target", ["http://[::1/", "//[", "/healthz?token=%ff%00"])
def test_a_target_that_is_no_url_is_answered_while_preparing_and_after(served, starting, method, target):
    for port in (starting, served.port):
        status = http(port, method, target)[0]
        assert status in (400, 401, 404, 405, 503) or (status == 200 and target.startswith("/healthz")), (port, status)


@pytest.mark.parametrize("between", ["\t", " \t "])
def test_tabs_may_follow_the_bearer_scheme_while_preparing(starting, between):
    status, _, body = http(starting, "GET", "/healthz", f"Authorization: Bearer{between}{TOKEN}", token=False)
    assert status == 200 and "expected_s" in json.loads(body)["preparing"]


@pytest.mark.slow
def test_a_request_that_never_comes_while_preparing_lets_go_of_its_connection(monkeypatch):
    from streamrec.serve import starting

    monkeypatch.setattr(starting, "HEADER_TIMEOUT_S", 1.0)  # 5 s in use
    server = starting.StartingServer("127.0.0.1", 0, token=TOKEN, expected_s=30).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
            started = time.monotonic()
            assert s.recv(MIB) == b"" and time.monotonic() - started < 3
        assert http(server.port, "GET", "/healthz")[0] == 200
    finally:
        server.close()


def test_a_request_that_does_not_come_whole_in_time_is_a_408_and_an_idle_connection_just_closes():
    from streamrec.serve.guard import Limits

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(Hub(), host="127.0.0.1", port=0, routes={"/healthz": json_route(lambda: {"ok": True})},
                       limits=Limits(header_timeout_s=0.5))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    host = b"Host: 127.0.0.1:%d\r\n" % server.port
    sent = {"half a head": b"GET /healthz HTTP/1.1\r\n" + host,
            "half a body": b"POST /healthz HTTP/1.1\r\n" + host + b"Content-Length: 10\r\n\r\n12345",
            "nothing": b""}
    try:
        socks = {what: socket.create_connection(("127.0.0.1", server.port), timeout=30) for what in sent}
        for what, s in socks.items():
            s.sendall(sent[what])
        got = {}
        for what, s in socks.items():
            with s:
                data = b""
                try:
                    while chunk := s.recv(MIB):
                        data += chunk
                except ConnectionResetError:  # closed without a word
                    pass
                got[what] = data.split(b"\r\n", 1)[0], data.rpartition(b"\r\n\r\n")[2]
        assert got == {"half a head": (b"HTTP/1.1 408 Request Timeout", b"the request did not come whole in time\n"),
                       "half a body": (b"HTTP/1.1 408 Request Timeout", b"the request did not come whole in time\n"),
                       "nothing": (b"", b"")}
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("authority, status", [("evil.example", 421), ("evil.example:{port}", 421), ("127.0.0.1:{port}", 200)])
def test_an_absolute_target_is_served_only_for_this_servers_name(served, authority, status):
    assert http(served.port, "GET", f"http://{authority.format(port=served.port)}/api/events")[0] == status


@pytest.mark.parametrize("target", ["/ws", "/api/events"])
def test_an_absolute_target_whose_host_header_names_another_server_is_refused(served, target):
    """The Host check reads the target's authority, the Origin and cookie checks the Host header:
    a request whose two disagree (a page of evil.example, its Origin matching its forged Host)
    is refused, never let through one check by the other's field."""
    port = served.port
    data = raw_request(port, (f"GET http://127.0.0.1:{port}{target} HTTP/1.1\r\nHost: evil.example:{port}\r\n"
                              f"Origin: http://evil.example:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                              "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert data.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request"
    assert data.endswith(b"the Host header does not name the server of the request target\n")


def test_refused_host_names_are_logged_sparingly(served, caplog):
    with caplog.at_level(logging.INFO, logger="streamrec.serve.server"):
        for i in range(12):
            data = raw_request(served.port, b"GET / HTTP/1.1\r\nHost: attacker-%d.example\r\n\r\n" % i)
            assert data.startswith(b"HTTP/1.1 421 ")
    lines = [r.getMessage() for r in caplog.records if "refused a request for Host" in r.getMessage()]
    assert len(lines) in (1, 2) and all(line.endswith("refused so far)") for line in lines)  # at 1 (if first) and 10


@pytest.mark.parametrize("target, same_as", [("/%68ealthz", "/healthz"), ("/api/%65vents?limit=1", "/api/events?limit=1"),
                                             ("/%61pi/events", "/api/events")])
def test_percent_encoded_letters_name_the_same_path(served, target, same_as):
    got, want = http(served.port, "GET", target), http(served.port, "GET", same_as)
    assert (got[0], got[2]) == (want[0], want[2]) == (200, want[2])


def test_a_body_on_a_get_is_not_read(served):
    data = raw_request(served.port, b"GET /api/events?limit=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                       b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello" % (served.port, TOKEN.encode()))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body) == json.loads(http(served.port, "GET", "/api/events?limit=1")[2])


def test_an_unsatisfiable_range_says_ranges_are_taken(served):
    status, headers, _ = http(served.port, "GET", "/api/files/one", "Range: bytes=5-")
    assert (status, headers["content-range"], headers["accept-ranges"]) == (416, "bytes */1", "bytes")


@pytest.mark.parametrize("command", ["history", "events"])
def test_a_since_after_the_until_is_one_line_not_an_empty_list(tmp_path, command):
    from streamrec.events.store import EventStore

    EventStore(str(tmp_path / "x.db")).close()
    proc = run_main(command, "--db", str(tmp_path / "x.db"), "--since", "-1h", "--until", "-2h")
    assert (proc.returncode, proc.stderr) == (2, "streamrec: error: --since, --until: expected --since at or before "
                                                 "--until, got --since '-1h' after --until '-2h'\n")


@pytest.mark.parametrize("path", ["/api/events", "/api/history"])
def test_a_since_after_the_until_is_a_400(served, path):
    status, _, body = http(served.port, "GET", f"{path}?since=200&until=100")
    assert (status, json.loads(body)) == (400, {"error": "since, until: expected since at or before until, got since "
                                                         "'200' after until '100'"})
