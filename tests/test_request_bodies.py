"""JSON request bodies on a real :class:`~streamrec.serve.server.WebServer` in process (port 0),
with the real camera routes over an in-memory camera list:

* ``POST /api/cameras`` takes the camera as a JSON body (options typed as in a ``[[cameras]]``
  table, zones included), so an RTSP password never rides in the URL; one in the query string is
  refused with a 400 that says where it goes;
* ``PUT /api/cameras/NAME/zones`` takes ``{"zones": [...], "whole_frame": ...}``;
* a body that is not JSON, not ``application/json``, chunked, too large or never finished is
  answered (400, 415, 411, 413) or closed at the header timeout: never a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest

from streamrec.config import CameraConfig
from streamrec.serve.app import being_changed
from streamrec.serve.guard import Limits
from streamrec.serve.heads import MAX_BODY
from streamrec.serve.hub import Hub
from streamrec.serve.routes import cameras_api
from streamrec.serve.server import WebServer
from streamrec.zones import ZoneConfig

TOKEN = "b0dy-t0ken"
HEADER_TIMEOUT_S = 1.0


class Cameras:
    """The cameras the API adds, removes and sets zones of."""

    def __init__(self) -> None:
        self.cams: dict[str, CameraConfig] = {}
        self.busy: set[str] = set()  # cameras whose zones are being changed (a restart takes seconds)

    def listing(self) -> dict:
        """As the server lists them: a camera whose zones are being changed is out of "cameras"
        while it restarts, and in "adding" (its name is taken)."""
        return {"cameras": {name: {} for name in self.cams if name not in self.busy}, "adding": sorted(self.busy)}

    def add(self, cam: CameraConfig) -> None:
        self.cams[cam.name] = cam

    def remove(self, name: str) -> bool:
        if name in self.busy:
            raise being_changed(name)
        return self.cams.pop(name, None) is not None

    def set_zones(self, name: str, zones: tuple, whole_frame: bool) -> CameraConfig:
        if name in self.busy:
            raise being_changed(name)
        cam = self.cams[name]
        self.cams[name] = CameraConfig(cam.name, cam.source, zones=zones, whole_frame=whole_frame)
        return self.cams[name]


@pytest.fixture(scope="module")
def served():
    cameras = Cameras()
    api = {"/api/cameras": cameras_api(listing=cameras.listing, add=cameras.add, remove=cameras.remove,
                                       set_zones=cameras.set_zones)}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(Hub(), host="127.0.0.1", port=0, routes={}, api=api, token=TOKEN,
                       limits=Limits(header_timeout_s=HEADER_TIMEOUT_S))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield server.port, cameras
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def request(port: int, method: str, target: str, body: bytes = b"", *headers: str, length: bool = True,
            parts: tuple[bytes, ...] = (), pause_s: float = 0.0) -> tuple[int, object]:
    """One request as written (``parts``: more of the body, sent ``pause_s`` apart): the status and
    the JSON answer (``None`` when the server closed without one)."""
    head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Authorization: Bearer {TOKEN}", *headers]
    if length:
        head.append(f"Content-Length: {len(body) + sum(map(len, parts))}")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall("\r\n".join([*head, "", ""]).encode() + body)
        for part in parts:
            time.sleep(pause_s)
            s.sendall(part)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    if not data:
        return 0, None
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    try:
        return int(status_line.split()[1]), json.loads(body or b"null")
    except ValueError:  # a plain-text answer
        return int(status_line.split()[1]), body.decode()


JSON = "Content-Type: application/json"


def post(port: int, camera: object, *headers: str) -> tuple[int, object]:
    return request(port, "POST", "/api/cameras", json.dumps(camera).encode(), *(headers or (JSON,)))


def test_a_camera_with_a_password_is_added_from_a_json_body(served):
    port, cameras = served
    cam = {"name": "gate", "source": "rtsp://admin:s3cret@10.0.0.7/s1", "loop": False, "open_timeout": 4,
           "zones": [{"name": "door", "x": 0, "y": 0, "w": 0.5, "h": 1}], "whole_frame": False}
    assert post(port, cam) == (201, {"added": "gate"})
    assert cameras.cams["gate"] == CameraConfig("gate", "rtsp://admin:s3cret@10.0.0.7/s1", loop=False, open_timeout=4,
                                                zones=(ZoneConfig("door", 0, 0, 0.5, 1),), whole_frame=False)
    assert request(port, "DELETE", "/api/cameras/gate") == (200, {"removed": "gate"})


def test_the_json_charset_parameter_is_read_too(served):
    port, cameras = served
    assert post(port, {"name": "side", "source": "0"}, "Content-Type: Application/JSON; charset=utf-8") == (
        201, {"added": "side"})
    assert cameras.cams.pop("side") == CameraConfig("side", "0")


@pytest.mark.parametrize("source", ["rtsp://admin:s3cret@10.0.0.7/s1", "http://cam.lan/mjpg?user=a&password=s3cret",
                                    "rtsp://10.0.0.7/s1?api-key=s3cret", "rtsp://admin%3As3cret@10.0.0.7/s1",
                                    "rtsp://s3cret@10.0.0.7/s1"])
def test_a_password_in_the_query_string_is_refused_and_not_added(served, source):
    port, cameras = served
    from urllib.parse import quote

    status, body = request(port, "POST", f"/api/cameras?name=gate&source={quote(source, safe='')}")
    assert status == 400 and "gate" not in cameras.cams
    assert body["error"].startswith("source: a password or key goes in a JSON body, not the query string")
    assert "s3cret" not in body["error"]


def test_a_plain_source_in_the_query_string_still_adds(served):
    port, cameras = served
    assert request(port, "POST", "/api/cameras?name=lobby&source=rtsp%3A%2F%2F10.0.0.8%2Fs1&loop=true") == (
        201, {"added": "lobby"})
    assert cameras.cams.pop("lobby") == CameraConfig("lobby", "rtsp://10.0.0.8/s1", loop=True)


BAD_CAMERAS = [
    ({"name": "x", "source": "0", "loop": "maybe"}, "camera 'x': loop: expected"),
    ({"name": "x", "source": "0", "fps": 5}, "[[cameras]]: unknown option 'fps'"),
    ({"name": "x", "source": "0", "zones": [{"name": "z", "x": 0.9, "y": 0, "w": 0.5, "h": 1}]}, "camera 'x': zone 'z'"),
    (["x", "0"], 'request body: expected a JSON object, got ["x", "0"]'),
    (None, "request body: expected a JSON object, got null"),
    ({"name": "x"}, "[[cameras]]: each camera needs a name and a source"),
]


@pytest.mark.parametrize("camera, error", BAD_CAMERAS, ids=["type", "unknown", "zone", "array", "null", "no-source"])
def test_a_bad_camera_body_is_a_400_naming_it(served, camera, error):
    port, cameras = served
    status, body = post(port, camera)
    assert status == 400 and body["error"].startswith(error), body
    assert "\n" not in body["error"] and "x" not in cameras.cams


def test_a_camera_in_both_body_and_query_is_a_400(served):
    port, cameras = served
    status, body = request(port, "POST", "/api/cameras?name=q", b'{"name": "b", "source": "0"}', JSON)
    assert (status, body) == (400, {"error": "POST /api/cameras: expected the camera in the JSON body or in the "
                                             "query string, not both (the query string has name)"})
    assert cameras.cams == {}


@pytest.mark.parametrize("raw, error", [
    (b'{"name": "x", "source": NaN}', "request body: expected strict JSON, got '{\"name\": \"x\", \"source\": NaN}' "
                                      "(NaN is not a number JSON allows)"),
    (b'{"name": "x", "name": "y"}', "request body: expected strict JSON, got '{\"name\": \"x\", \"name\": \"y\"}' "
                                    "(a key given twice in ['name', 'name'])"),
    (b'{"name": ', "request body: expected strict JSON, got '{\"name\": ' (Expecting value: line 1 column 10 (char 9))"),
    (b"\xff\xfe", "request body: expected strict JSON, got '\\\\xff\\\\xfe' ('utf-8' codec can't decode byte 0xff in "
                 "position 0: invalid start byte)"),
])
def test_a_body_that_is_no_strict_json_is_a_400(served, raw, error):
    assert request(served[0], "POST", "/api/cameras", raw, JSON) == (400, {"error": error})


@pytest.mark.parametrize("raw, why", [
    # JSON is UTF-8: UTF-16, with its byte order mark or without, is no JSON body (json.loads would guess it)
    ('{"name": "x", "source": "0"}'.encode("utf-16"), "('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
    ('{"name": "x", "source": "0"}'.encode("utf-16-le"), "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('\ufeff{"name": "x", "source": "0"}'.encode(), "(Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0))"),
    (b'{"name": "x", "open_timeout": ' + b"9" * 5000 + b"}", "(a number of more than 4300 digits)"),
], ids=["utf-16", "utf-16-le", "utf-8-bom", "5000-digits"])
def test_a_body_in_another_encoding_or_with_a_number_no_int_holds_is_a_400_saying_why(served, raw, why):
    port, cameras = served
    status, body = request(port, "POST", "/api/cameras", raw, JSON)
    assert status == 400 and body["error"].startswith("request body: expected strict JSON, got '"), body
    assert body["error"].endswith(f"' {why}") and "sys.set_int_max_str_digits" not in body["error"]
    assert cameras.cams == {}


@pytest.mark.parametrize("header, shown", [("Content-Type: text/plain", "'text/plain'"), (None, "'none'"),
                                           ("Content-Type: application/x-www-form-urlencoded",
                                            "'application/x-www-form-urlencoded'"),
                                           ("Content-Type: application/json; charset=latin-1",
                                            "'application/json; charset=latin-1'"),
                                           ('Content-Type: application/json; charset="utf-16"',
                                            "'application/json; charset=\"utf-16\"'")])
def test_a_body_that_is_not_declared_json_is_a_415(served, header, shown):
    """A page of another site can send a form or text/plain post without asking the browser first;
    JSON needs a CORS preflight, which this server never grants."""
    port, cameras = served
    headers = (header,) if header else ()
    assert request(port, "POST", "/api/cameras", b'{"name": "x", "source": "0"}', *headers) == (
        415, {"error": f"request body: expected Content-Type: application/json (in UTF-8), got {shown}"})
    assert cameras.cams == {}


def test_zones_are_put_as_a_json_body(served):
    port, cameras = served
    assert post(port, {"name": "gym", "source": "0"}) == (201, {"added": "gym"})
    zones = {"zones": [{"name": "rack", "x": 0, "y": 0, "w": 0.5, "h": 0.5}], "whole_frame": False}
    assert request(port, "PUT", "/api/cameras/gym/zones", json.dumps(zones).encode(), JSON) == (
        200, {"camera": "gym", "zones": [{"name": "rack", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5}],
              "whole_frame": False, "saved_to": None})
    assert cameras.cams["gym"].zones == (ZoneConfig("rack", 0, 0, 0.5, 0.5),)
    for bad, error in [({"zones": "rack"}, 'zones: expected a JSON array, got "rack"'),
                       ({"whole_frame": True}, 'request body: expected {"zones": [...], "whole_frame": true|false}, '
                                               'got {"whole_frame": true}'),
                       ({"zones": [], "whole_frame": "yes"}, 'whole_frame: expected true or false, got "yes"'),
                       ({"zones": {}, "whole_frame": True}, "zones: expected a JSON array, got {}"),
                       ({"zones": [], "whole_frame": True, "x": 1}, 'request body: expected {"zones": [...], '
                                                                     '"whole_frame": true|false}, got {"zones": [], '
                                                                     '"whole_frame": true, "x": ...')]:
        assert request(port, "PUT", "/api/cameras/gym/zones", json.dumps(bad).encode(), JSON) == (400, {"error": error})
    assert cameras.cams.pop("gym").zones == (ZoneConfig("rack", 0, 0, 0.5, 0.5),)  # unchanged by the bad ones


def test_a_body_over_the_limit_is_a_413_before_it_is_read(served):
    port, _ = served
    head = (f"POST /api/cameras HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)  # and none of the body
        data = s.recv(1 << 16)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.endswith(json.dumps({"error": f"request body: expected at most {MAX_BODY} bytes, "
                                              f"got {MAX_BODY + 1}"}).encode())


@pytest.mark.parametrize("header, status, error", [
    ("Transfer-Encoding: chunked", 411, "a request body must come with its Content-Length (no Transfer-Encoding)"),
    ("Content-Length: 12abc", 400, "Content-Length: expected one whole number of bytes"),
    ("Content-Length: " + "9" * 5000, 400, "Content-Length: expected one whole number of bytes"),
])
def test_a_body_the_server_cannot_read_is_refused_saying_why(served, header, status, error):
    assert request(served[0], "POST", "/api/cameras", b"", JSON, header, length=False) == (status, {"error": error})


def test_two_different_lengths_are_a_400(served):
    assert request(served[0], "POST", "/api/cameras", b"{}", JSON, "Content-Length: 3") == (
        400, {"error": "Content-Length: expected one whole number of bytes"})


def test_a_body_sent_in_parts_is_read_whole(served):
    port, cameras = served
    body = json.dumps({"name": "slow", "source": "0"}).encode()
    assert request(port, "POST", "/api/cameras", body[:5], JSON, parts=(body[5:12], body[12:]), pause_s=0.2) == (
        201, {"added": "slow"})
    assert cameras.cams.pop("slow") == CameraConfig("slow", "0")


def test_a_body_that_never_ends_is_a_408_at_the_header_timeout(served):
    port, cameras = served
    started = time.monotonic()
    status, body = request(port, "POST", "/api/cameras", b'{"name": "half"', JSON, "Content-Length: 40", length=False)
    assert (status, body) == (408, "the request did not come whole in time\n") and cameras.cams == {}
    assert HEADER_TIMEOUT_S * 0.9 <= time.monotonic() - started < HEADER_TIMEOUT_S + 10


def test_a_repeated_content_type_is_a_400(served):
    for method in ("GET", "POST"):
        assert request(served[0], method, "/api/cameras", b'{"name": "x", "source": "0"}', JSON, JSON) == (
            400, "more than one Content-Type header\n")
    assert served[1].cams == {}


@pytest.mark.parametrize("line", ["Content-Length: 00", "Content-Length: 0000", "Content-Length: " + "0" * 40])
def test_a_zero_length_written_with_zeros_is_answered(served, line):
    assert request(served[0], "GET", "/api/cameras", b"", line, length=False) == (200, {"cameras": {}, "adding": []})


@pytest.mark.parametrize("lines", [["Content-Length : 0"], ["Content-Length\t: 0"], ["X-A: b", " Content-Length: 0"],
                                   ["Content-Length : 5"]])
def test_a_length_written_against_the_syntax_is_a_400(served, lines):
    """RFC 9112: no space before a header's colon, no folded lines; a request framed that way is
    refused, never read with a guessed length (request smuggling behind a proxy)."""
    with socket.create_connection(("127.0.0.1", served[0]), timeout=30) as s:
        s.sendall("\r\n".join(["POST /api/cameras HTTP/1.1", f"Host: 127.0.0.1:{served[0]}", *lines, "", ""]).encode()
                  + b"12345")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ") and b"malformed request: " in data


HUGE = "1" + "0" * 400


@pytest.mark.parametrize("zone", [f'{{"name": "z", "x": {HUGE}, "y": 0, "w": 0.5, "h": 0.5}}',
                                  f'{{"name": "z", "x": 0, "y": 0, "w": 0.5, "h": -{HUGE}}}',
                                  f'{{"name": "z", "polygon": [[0, 0], [{HUGE}, 0], [0, 1]]}}'])
def test_a_zone_number_no_float_holds_is_a_400(served, zone):
    port, cameras = served
    status, body = request(port, "POST", "/api/cameras", f'{{"name": "h", "source": "0", "zones": [{zone}]}}'.encode(), JSON)
    assert status == 400 and re.search(r"expected a finite number \(a fraction of the frame\), got -?1000", body["error"])
    assert len(body["error"]) < 200 and cameras.cams == {}


@pytest.mark.parametrize("raw", [b'{"source": "rtsp://a:s3cret@h/", "name": "x", "name": "y"}',
                                 b'["rtsp://admin:s3cret@h/"]', b'"rtsp://admin:s3cret@h/"',
                                 b'{"name": "x", "source": ["rtsp://admin:s3cret@h/"]}',
                                 b'{"name": "rtsp://admin:s3cret@h/", "source": "0"}',
                                 b'{"name": "x", "source": {"url": "rtsp://admin:s3cret@h/"}, "loop": NaN}'])
def test_an_answer_never_quotes_a_password_sent_in_a_body(served, raw):
    status, body = request(served[0], "POST", "/api/cameras", raw, JSON)
    assert status == 400 and "s3cret" not in body["error"] and len(body["error"]) <= 303


def test_zones_in_both_body_and_query_are_a_400(served):
    port, cameras = served
    assert post(port, {"name": "both", "source": "0"}) == (201, {"added": "both"})
    body = json.dumps({"zones": [], "whole_frame": True}).encode()
    assert request(port, "PUT", "/api/cameras/both/zones?whole_frame=false", body, JSON) == (
        400, {"error": "PUT /api/cameras/NAME/zones: expected the zones in the JSON body or in the query string, "
                       "not both (the query string has whole_frame)"})
    assert cameras.cams.pop("both") == CameraConfig("both", "0")


def test_a_client_that_expects_100_continue_gets_it(served):
    port, cameras = served
    body = json.dumps({"name": "cont", "source": "0"}).encode()
    head = (f"POST /api/cameras HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode())
        assert s.recv(1 << 16) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    assert data.startswith(b"HTTP/1.1 201 ") and cameras.cams.pop("cont") == CameraConfig("cont", "0")


def test_a_refused_large_body_still_reaches_the_client_as_a_413(served):
    """The server reads on and drops what the client still sends before it closes, so that the
    client's kernel does not answer its last bytes with a reset that loses the 413."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{served[0]}/api/cameras", method="POST", data=b"[" * (5 << 20),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as got:
        urllib.request.urlopen(req, timeout=30)
    assert got.value.code == 413


def test_the_bytes_after_a_body_reach_the_websocket(served):
    """A websocket opening that carries a body, with a ping frame in the same packet: the ping is answered."""
    port, _ = served
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Content-Length: 2\r\n\r\n{{}}").encode()
    ping = bytes([0x89, 0x80 | 2, 1, 2, 3, 4]) + bytes(b ^ m for b, m in zip(b"hi", (1, 2)))  # masked "hi"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + ping)
        data, deadline = b"", time.monotonic() + 10
        while not (b"\x8a\x02hi" in data and b"HTTP/1.1 101 " in data) and time.monotonic() < deadline:
            data += s.recv(1 << 16)
    assert b"HTTP/1.1 101 " in data and b"\x8a\x02hi" in data  # the pong


@pytest.mark.parametrize("method, target, body", [
    ("DELETE", "/api/cameras/x/y/gym", b""), ("DELETE", "/api/cameras/a%2Fgym", b""),
    ("DELETE", "/api/cameras/gym/", b""), ("DELETE", "/api/cameras//gym", b""),
    ("GET", "/api/cameras/a/b/c", b""), ("GET", "/api/cameras/", b""),
    ("POST", "/api/cameras/a/b/c", b'{"name": "other", "source": "0"}'),
    ("PUT", "/api/cameras/a/gym/zones", b'{"zones": []}'), ("PUT", "/api/cameras/gym/zones/", b'{"zones": []}'),
    ("GET", "/api/cameras/gym/zonez", b""),
])
def test_a_path_with_segments_no_route_has_is_a_404_that_changes_nothing(served, method, target, body):
    port, cameras = served
    cameras.cams.pop("gym", None), cameras.cams.pop("other", None)
    assert post(port, {"name": "gym", "source": "0"}) == (201, {"added": "gym"})
    assert request(port, method, target, body, *((JSON,) if body else ())) == (404, {"error": "not found"})
    assert set(cameras.cams) >= {"gym"} and "other" not in cameras.cams
    assert cameras.cams["gym"] == CameraConfig("gym", "0")
    assert request(port, "GET", "/api/cameras/gym") == (405, {"error": "DELETE /api/cameras/NAME"})
    assert request(port, "DELETE", "/api/cameras/gym") == (200, {"removed": "gym"})


@pytest.mark.parametrize("name", [".", ".."])
def test_a_camera_named_with_dots_alone_is_a_400(served, name):
    status, body = post(served[0], {"name": name, "source": "0"})
    assert (status, body["error"]) == (400, "camera name: expected 1-64 letters, digits, '-', '_' or '.' (not dots "
                                            f"alone), got {name!r}")


def test_a_camera_whose_zones_are_being_changed_is_a_409_for_delete_and_put(served):
    port, cameras = served
    cameras.cams.pop("busy", None)
    assert post(port, {"name": "busy", "source": "0"}) == (201, {"added": "busy"})
    cameras.busy.add("busy")
    try:
        busy = (409, {"error": "camera 'busy': its zones are being changed; try again in a few seconds"})
        assert request(port, "DELETE", "/api/cameras/busy") == busy
        assert request(port, "PUT", "/api/cameras/busy/zones", b'{"zones": [], "whole_frame": true}', JSON) == busy
        assert "busy" in cameras.cams
    finally:
        cameras.busy.discard("busy")
    assert request(port, "DELETE", "/api/cameras/busy") == (200, {"removed": "busy"})


@pytest.mark.parametrize("depth", [33, 200, 900])
def test_a_body_nested_deeper_than_any_camera_is_a_400(served, depth):
    port, cameras = served
    deep = "[" * depth + "]" * depth
    for method, target, body in (("POST", "/api/cameras", f'{{"name": "c", "source": {deep}}}'),
                                 ("POST", "/api/cameras", f'{{"name": {deep}, "source": "0"}}'),
                                 ("PUT", "/api/cameras/c1/zones", f'{{"zones": [{{"name": "z", "x": {deep}}}]}}')):
        status, answer = request(port, method, target, body.encode(), JSON)
        assert (status, answer["error"].endswith("(lists and objects nested more than 32 deep)")) == (400, True), answer
    assert "c" not in cameras.cams
    status, answer = post(port, {"name": "c", "source": [[[[[["0"]]]]]]})  # shallow enough: the option's own error
    assert status == 400 and "got a list of 1 item" in answer["error"]


@pytest.mark.parametrize("method, target, status", [
    ("POST", "/api/cameras/gym", 405), ("PUT", "/api/cameras", 405), ("PUT", "/api/cameras/gym", 405),
    ("POST", "/api/cameras/gym/zones", 405), ("POST", "/api/cameras/a/b/c", 404), ("PATCH", "/api/cameras", 405),
])
@pytest.mark.parametrize("body, headers", [(b"x", ()), (b"{bad", (JSON,)), (b"[1]", (JSON,))])
def test_a_body_sent_where_no_route_reads_one_gets_the_routes_answer(served, method, target, status, body, headers):
    got, answer = request(served[0], method, target, body, *headers)
    assert got == status, answer


@pytest.mark.parametrize("target", ["ftp://evil.example/api/cameras", "ws://evil.example/api/cameras",
                                    "foo://x/api/cameras", "*", "http:/api/cameras"])
def test_a_target_that_is_neither_a_path_nor_an_http_url_is_a_400(served, target):
    assert request(served[0], "GET", target) == (400, "expected a path or an http(s) URL as the target\n")


def test_an_absolute_http_url_with_no_path_is_the_root(served):
    port = served[0]
    assert request(port, "GET", f"http://127.0.0.1:{port}")[0] == request(port, "GET", "/")[0] == 404  # no page here
    assert request(port, "GET", f"http://127.0.0.1:{port}/api/cameras")[0] == 200


def test_a_bearer_token_sent_as_utf8_is_read_as_written():
    from websockets.datastructures import Headers

    from streamrec.serve.tokens import token_source

    as_read = "Bearer cl\u00e9".encode("utf-8").decode("iso-8859-1")  # what the connection makes of curl's bytes
    assert token_source("/api/events", Headers({"Authorization": as_read}), "cl\u00e9") == "bearer"
    assert token_source("/api/events", Headers({"Authorization": "Bearer cl\u00e9"}), "cl\u00e9") == "bearer"  # Latin-1 bytes
    assert token_source("/api/events", Headers({"Authorization": as_read}), "cle") is None


def test_where_zones_are_not_changed_at_run_time_the_route_is_a_405_and_healthz_says_so():
    """streamrec cluster has the camera API but sets zones in its config file: its page showed an
    editor whose every save was a 404."""
    from streamrec.config import ServeConfig
    from streamrec.live.history import HistoryStore
    from streamrec.serve.core import AppCore

    cameras = Cameras()
    route = cameras_api(listing=cameras.listing, add=cameras.add, remove=cameras.remove, set_zones=None)
    reply = route.handler("PUT", "/api/cameras/gym/zones", {}, {"zones": [], "whole_frame": True})
    assert (reply.status, reply.body, reply.allow) == (
        405, {"error": "zones are not changed at run time here: set them in the config file"}, ())

    class Cluster(AppCore):  # no set_zones
        def camera_names(self) -> list[str]:
            return []

    class Live(Cluster):
        def set_zones(self, name: str, zones: tuple, whole_frame: bool) -> CameraConfig:
            raise AssertionError("not called")

    store = HistoryStore(":memory:")
    try:
        for core, zones_api in ((Cluster(ServeConfig(source="0", token=TOKEN), store), False),
                                (Live(ServeConfig(source="0", token=TOKEN), store), True),
                                (Live(ServeConfig(source="0"), store), False)):
            health = core.health()
            assert (health["admin_api"], health["zones_api"]) == (core.config.token is not None, zones_api)
    finally:
        store.close()
