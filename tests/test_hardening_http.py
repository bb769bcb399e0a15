"""The server's HTTP edges, on a real ``streamrec serve`` (tiny3d, random weights, a synthetic clip):

* DNS rebinding: a ``Host`` that does not name the server gets a 421 for the page, the API and
  the websocket, before anything else;
* a repeated ``Host`` or ``Origin`` header is a 400 (it was a 500 and a traceback in the log);
* a camera with a non-ASCII name can be deleted (the DELETE path is percent-decoded);
* ``*_total`` metrics are counters;
* half-sent requests no longer hold the server: 1,100 of them under ``ulimit -n 1024`` and a
  new client still gets ``/healthz`` at once, and every one of them is closed after the header
  timeout (5 s; the opening handshake's 300 s held them before);
* a live stream that ends cleanly is logged as ended, with its credentials masked everywhere.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port, sigterm, streamrec_cmd, wait_http, write_frames, write_video, json_request

TOKEN = "s3cret-token"
WS_HEAD = ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version: 13"]


def start(*args: str, wrap: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = streamrec_cmd("serve", *args, "--model", "tiny3d", "--weights", "none", "--device", "cpu", "--port", str(port))
    if wrap is not None:
        cmd = ["bash", "-c", f"{wrap} && exec \"$@\"", "serve", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 180
    while json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)).get("status") == "starting":
        assert time.monotonic() < deadline, "the server is still preparing its model after 180 s"
        time.sleep(0.2)  # the model is prepared: the API answers 503 until then
    return proc, port


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM; the server's log, which must hold no traceback."""
    assert sigterm(proc) == 0
    log = proc.stderr.read()
    assert "Traceback" not in log and "process_request failed" not in log, log
    return log


def raw(port: int, request_line: str, *headers: str, timeout: float = 30) -> int:
    """The status code of one request sent as written (headers repeated at will)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join([request_line, *headers]) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split()[1])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("http") / "c.mp4", seconds=2, size=(160, 120))


@pytest.fixture(scope="module")
def open_server(clip):
    """No token: what a DNS-rebinding page would reach."""
    proc, port = start("--source", str(clip), "--loop")
    yield port
    stop(proc)


@pytest.fixture(scope="module")
def admin_server(clip):
    proc, port = start("--source", str(clip), "--loop", "--token", TOKEN)
    yield port
    stop(proc)


@pytest.mark.parametrize("path, ws", [("/", False), ("/api/history", False), ("/ws", True)])
@pytest.mark.slow
def test_a_foreign_host_is_refused_before_anything_else(open_server, path, ws):
    port = open_server
    extra = WS_HEAD if ws else []
    for host in (f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}", f"localhost:{port + 1}"):
        assert raw(port, f"GET {path} HTTP/1.1", f"Host: {host}", f"Origin: http://{host}", *extra) == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):  # the server's own names
        assert raw(port, f"GET {path} HTTP/1.1", f"Host: {host}", f"Origin: http://{host}", *extra) == (101 if ws else 200)


@pytest.mark.slow
def test_the_page_and_websocket_still_work_for_the_real_host(open_server):
    async def one_message():
        async with websockets.connect(f"ws://127.0.0.1:{open_server}/ws", max_size=2**22) as ws:
            return await asyncio.wait_for(ws.recv(), 60)

    assert asyncio.run(one_message())
    assert b"new WebSocket" in wait_http(f"http://localhost:{open_server}/")


@pytest.mark.parametrize("path", ["/ws", "/", "/healthz", "/api/cameras"])
@pytest.mark.slow
def test_repeated_host_or_origin_is_a_400(admin_server, path):
    port = admin_server
    host = f"Host: 127.0.0.1:{port}"
    extra = WS_HEAD if path == "/ws" else []
    assert raw(port, f"GET {path} HTTP/1.1", host, host, *extra) == 400
    assert raw(port, f"GET {path} HTTP/1.1", host, f"Host: evil:{port}", *extra) == 400
    origin = f"Origin: http://127.0.0.1:{port}"
    assert raw(port, f"GET {path}?token={TOKEN} HTTP/1.1", host, origin, origin, *extra) == 400
    if path == "/ws":  # an Origin that is no URL
        assert raw(port, f"GET {path}?token={TOKEN} HTTP/1.1", host, "Origin: http://[::1", *extra) == 400


def api(method: str, url: str) -> tuple[int, dict]:
    return json_request(method, url, TOKEN)


@pytest.mark.slow
def test_a_non_ascii_camera_is_added_and_deleted(admin_server, clip):
    from urllib.parse import quote

    base = f"http://127.0.0.1:{admin_server}/api/cameras"
    for name in ("café", "камера-2", "\U0001d400" * 63):
        assert api("POST", f"{base}?name={quote(name)}&source={quote(str(clip))}&loop=true") == (201, {"added": name})
        assert name in api("GET", base)[1]["cameras"]
        assert api("DELETE", f"{base}/{quote(name)}") == (200, {"removed": name})
        assert name not in api("GET", base)[1]["cameras"]
    status, body = api("POST", f"{base}?name={quote(chr(0x1d400) * 64)}&source={quote(str(clip))}")
    assert status == 400 and body["error"].startswith("camera name: expected at most 255 bytes as UTF-8, got 256 bytes")


@pytest.mark.slow
def test_totals_are_counters(admin_server):
    text = wait_http(f"http://127.0.0.1:{admin_server}/metrics?token={TOKEN}").decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("streamrec_")}
    totals = {"streamrec_frames_dropped", "streamrec_decode_errors", "streamrec_reconnects", "streamrec_windows_skipped",
              "streamrec_predictions", "streamrec_messages_dropped", "streamrec_history_segments_written",
              "streamrec_history_segments_dropped", "streamrec_history_segments_pruned", "streamrec_history_reconnects"}
    assert {n: types.get(n) for n in totals} == dict.fromkeys(totals, "counter")
    assert not any(t == "gauge" and n.endswith("_total") for n, t in types.items())
    assert 'streamrec_predictions_total{camera="default",zone=""}' in text


def half_open(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
    return s


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the server closed ``s``: after a 408 answer (part of a request came) or without one."""
    s.setblocking(False)  # (select() cannot watch descriptors above 1023)
    try:
        while chunk := s.recv(4096):
            assert chunk.startswith(b"HTTP/1.1 408 ") or b"HTTP/1.1" not in chunk, chunk
        return True
    except BlockingIOError:  # open, nothing (more) to read
        return False
    except OSError:  # reset
        return True


@pytest.mark.slow
def test_half_sent_requests_do_not_lock_out_new_clients(clip):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1500:
        pytest.skip(f"this test opens 1,100 sockets; the descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc, port = start("--source", str(clip), "--loop", wrap="ulimit -n 1024")  # soft and hard: cannot be raised
    socks: list[socket.socket] = []
    try:
        # 1,000 from 20 addresses (50 each: under the per-address limit, over the total one and over
        # the descriptor limit) and 100 from 127.0.0.1 itself (over the per-address limit of the
        # address the new client uses): the 1,100
        for i in range(1000):
            socks.append(half_open(port, f"127.0.0.{2 + i % 20}"))
        for _ in range(100):
            socks.append(half_open(port, "127.0.0.1"))
        last = time.monotonic()
        started = time.monotonic()
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30))
        took = time.monotonic() - started
        # the issue asks for 2 s; 10 s leaves room for a shared 2-core machine that runs the model
        # meanwhile. Before the fix this waited for the 300 s handshake timeout.
        assert took < 10, took
        assert health["source"]["state"] in ("running", "starting")
        deadline = last + 5 + 10  # header timeout + slack: every half-sent request is closed by then
        while time.monotonic() < deadline and not all(closed_by_peer(s) for s in socks):
            time.sleep(0.5)
        still_open = sum(not closed_by_peer(s) for s in socks)
        assert still_open == 0
    finally:
        for s in socks:
            s.close()
        log = stop(proc)
    assert "out of system resource" not in log and "Too many open files" not in log


@pytest.fixture
def http_clip(tmp_path):
    """A 2 s MPEG-TS clip served over HTTP: a live network source that ends cleanly."""
    rng = np.random.default_rng(0)
    write_frames(tmp_path / "live.ts", (rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(30)), 15,
                 fmt="mpegts")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.mark.slow
def test_a_live_stream_that_ends_is_logged_as_ended_and_masked(http_clip):
    url = f"http://viewer:p@ss@127.0.0.1:{http_clip}/live.ts?channel=1&authtoken=SECRET"  # FFmpeg takes the last @ too
    proc, port = start("--source", url)
    try:
        deadline = time.monotonic() + 60
        while True:
            health = wait_http(f"http://127.0.0.1:{port}/healthz").decode()
            if json.loads(health)["source"]["reconnects"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        page_status = json.loads(health)["source"]
    finally:
        log = stop(proc)
    masked = f"http://viewer:***@127.0.0.1:{http_clip}/live.ts?channel=1&authtoken=***"
    assert page_status["reconnects"] >= 1 and page_status["source"] == masked
    assert f"source {masked} unavailable (the stream ended); retrying" in log
    for secret in ("SECRET", "p@ss", "ss@"):
        assert secret not in log and secret not in health
    assert "(None)" not in log


# -- the server's options, in process (serve/core.py passes them from ServeConfig) ----------------

def test_allowed_hosts_and_limits_from_the_config():
    from streamrec.config import ServeConfig
    from streamrec.serve.guard import Limits

    cfg = ServeConfig.from_sources({"source": "x.mp4", "allowed_hosts": ["cam.example", "proxy.example:443"],
                                    "header_timeout": 2, "max_connections": 10, "max_connections_per_address": 3}, {})
    assert Limits.of(cfg) == Limits(header_timeout_s=2, max_connections=10, max_per_address=3)
    assert Limits.of(ServeConfig(source="x.mp4")) == Limits()


@pytest.mark.slow
def test_allowed_hosts_and_connection_limits_in_a_server():
    from streamrec.serve.guard import Limits
    from streamrec.serve.hub import Hub
    from streamrec.serve.server import WebServer, json_route

    async def scenario():
        server = WebServer(Hub(), host="127.0.0.1", port=0, routes={"/healthz": json_route(lambda: {"ok": True})},
                           allowed_hosts=("cam.example", "proxy.example:443"),
                           limits=Limits(header_timeout_s=1, max_connections=50, max_per_address=3))
        await server.start()
        port = server.port
        loop = asyncio.get_running_loop()

        def get(host: str) -> int:
            return raw(port, "GET /healthz HTTP/1.1", f"Host: {host}")

        try:
            hosts = [f"cam.example:{port}", "cam.example", "proxy.example:443", f"proxy.example:{port}", f"other.example:{port}"]
            statuses = [await loop.run_in_executor(None, get, h) for h in hosts]
            # three websocket clients fill 127.0.0.1's share; a fourth connection is refused (503), none is
            # evicted (they all sent their headers); another address still gets in
            clients = [await websockets.connect(f"ws://127.0.0.1:{port}/ws") for _ in range(3)]
            refused = await loop.run_in_executor(None, get, f"127.0.0.1:{port}")
            other = await loop.run_in_executor(None, lambda: half_open(port, "127.0.0.9"))
            await asyncio.sleep(1.5)  # the header timeout closes the half-sent one
            timed_out = closed_by_peer(other)
            for c in clients:
                await c.close()
            await asyncio.sleep(0.2)
            after = await loop.run_in_executor(None, get, f"127.0.0.1:{port}")
            return statuses, refused, timed_out, after
        finally:
            await server.close()

    statuses, refused, timed_out, after = asyncio.run(scenario())
    assert statuses == [200, 200, 200, 421, 421]
    assert (refused, timed_out, after) == (503, True, 200)


def deaf_websocket(port: int) -> socket.socket:
    """A websocket client that completes its handshake, then never reads again."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" % port)
    assert s.recv(12) == b"HTTP/1.1 101"
    return s


@pytest.mark.slow
def test_websockets_that_stop_reading_make_room_for_a_new_client():
    """A page that stops reading (a suspended laptop, a stalled proxy) while the frames keep coming
    fills its socket; once its messages have waited 2 s it is closed to make room, as a stalled
    download is: every connection an address may hold, all deaf, never lock that address out."""
    from streamrec.serve.guard import Limits
    from streamrec.serve.hub import Hub
    from streamrec.serve.server import WebServer, json_route

    async def scenario():
        hub = Hub()
        server = WebServer(hub, host="127.0.0.1", port=0, routes={"/healthz": json_route(lambda: {"ok": True})},
                           limits=Limits(header_timeout_s=5, max_connections=50, max_per_address=3))
        await server.start()
        port = server.port
        loop = asyncio.get_running_loop()

        def get() -> int:
            return raw(port, "GET /healthz HTTP/1.1", f"Host: 127.0.0.1:{port}")

        deaf = []
        try:
            deaf = [await loop.run_in_executor(None, deaf_websocket, port) for _ in range(3)]
            await asyncio.sleep(0.3)
            quiet = await loop.run_in_executor(None, get)  # nothing sent to them yet: none is stalled
            for i in range(40):  # frames of 256 KiB: far more than the sockets' buffers hold
                hub.publish(f"frame:cam{i}", bytes(256 * 1024))
                await asyncio.sleep(0.01)
            await asyncio.sleep(2.5)  # GuardedConnection.STALL_S
            stalled = [await loop.run_in_executor(None, get) for _ in range(3)]
            return quiet, stalled, sum(closed_by_peer(s) for s in deaf)
        finally:
            for s in deaf:
                s.close()
            await server.close()

    quiet, stalled, closed = asyncio.run(scenario())
    assert (quiet, stalled, closed) == (503, [200, 200, 200], 1)  # one made room; each request then closed


@pytest.mark.slow
def test_allowed_host_from_the_command_line(clip):
    proc, port = start("--source", str(clip), "--loop", "--allowed-host", "cam.example")
    try:
        assert raw(port, "GET /healthz HTTP/1.1", f"Host: cam.example:{port}") == 200
        assert raw(port, "GET /healthz HTTP/1.1", f"Host: other.example:{port}") == 421
    finally:
        stop(proc)
