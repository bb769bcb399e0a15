"""Checks on a request's head (its request line and header lines) before websockets reads it:
the body it announces (read by the connection, handed on beside the request), and why
websockets' parser would refuse it (the parser itself closes such a connection without an
answer); and the strict JSON a body or parameter must be.

Example:
    >>> malformed(b"GET / HTTP/1.1\\r\\nHost: x") is None, malformed(b"GET /caf\\xc3\\xa9 HTTP/1.1")[:19]
    (True, 'malformed request: ')
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import SecurityError
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.streams import StreamReader

from streamrec.redact import mask_credentials, printable
from streamrec.hosts import split_host
from streamrec.validate import NESTING_MAX, nesting


def malformed(head: bytes) -> str | None:
    """Why websockets' parser refuses a request's complete ``head`` (a request line with bytes
    that are not ASCII, another protocol, a header line that is no header), else ``None``.
    Lines over its length limits are left to websockets, which answers them (414, 431)."""
    reader = StreamReader()
    reader.feed_data(head + b"\r\n\r\n")
    reader.feed_eof()
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration:
        return None
    except SecurityError:  # a line too long, too many headers
        return None
    except UnicodeDecodeError:
        return "malformed request: bytes that are not ASCII in the request line (percent-encode them)"
    except Exception as exc:  # noqa: BLE001 - whatever the parser refuses
        # what is wrong, never the line it quotes: a token or a key may ride in it, and the answer may be logged
        text = printable(str(exc).split(": ", 1)[0].encode("ascii", "backslashreplace").decode())
        return "malformed request: " + (text if len(text) <= 120 else text[:120] + "...")
    return "malformed request: incomplete"


MAX_BODY = 64 * 1024  # bytes of a request body (the API's JSON: a camera, a camera's zones)
MAX_LINE = MAX_LINE_LENGTH - 2  # bytes of the request line or a header line, without its CR LF (websockets')
MAX_HEADERS = MAX_NUM_HEADERS  # header lines in a request (websockets')


def oversized(head: bytes, most: int | None = None) -> tuple[int, str] | None:
    """``(status, why)`` for a request ``head`` over the limits (websockets' answer to it speaks
    of a WebSocket connection, to any request): a request line over :data:`MAX_LINE` bytes (414),
    a header line over it, more than :data:`MAX_HEADERS` of them, or (with ``most``) a head still
    incomplete after ``most`` bytes (431); ``None`` when it is within them.

    >>> oversized(b"GET /" + b"a" * 9000 + b" HTTP/1.1")
    (414, 'request line: expected at most 8190 bytes, got 9014')
    >>> oversized(b"GET / HTTP/1.1\\r\\nHost: x") is None
    True
    """
    lines = head.split(b"\r\n")
    if len(lines[0]) > MAX_LINE or (most is not None and len(lines) == 1):
        return 414, f"request line: expected at most {MAX_LINE} bytes, got {len(lines[0])}"
    long = next((line for line in lines[1:] if len(line) > MAX_LINE), None)
    if long is not None:
        return 431, f"a header line: expected at most {MAX_LINE} bytes, got {len(long)}"
    if len(lines) - 1 > MAX_HEADERS:
        return 431, f"headers: expected at most {MAX_HEADERS}, got {len(lines) - 1}"
    if most is not None:
        return 431, f"request head: expected at most {most} bytes, got {len(head)} or more"
    return None


def announced_body(head: bytes) -> tuple[int, int, str | None]:
    """The body a request's head announces: ``(length, 0, None)`` (0 for none), or ``(0, status,
    why)`` when it is refused: chunks (411: a body comes with its ``Content-Length``), a
    ``Content-Length`` that is no length or given twice over (400), or one over :data:`MAX_BODY`
    (413).

    Example:
        >>> announced_body(b"PUT /x HTTP/1.1\\r\\nContent-Length: 12"), announced_body(b"GET / HTTP/1.1")
        ((12, 0, None), (0, 0, None))
        >>> announced_body(b"POST /x HTTP/1.1\\r\\nContent-Length: 99999999")[1]
        413
    """
    lengths = []
    for name, value in fields(head):  # names exactly as written: one with a space before its colon is
        name, value = name.lower(), value.strip()  # left to websockets' parser, which refuses it
        if name == b"transfer-encoding":
            return 0, 411, "a request body must come with its Content-Length (no Transfer-Encoding)"
        if name == b"content-length":
            lengths.append(value)
    if not lengths:
        return 0, 0, None
    if len(set(lengths)) > 1 or not lengths[0].isdigit() or len(lengths[0].lstrip(b"0")) > 12:
        return 0, 400, "Content-Length: expected one whole number of bytes"
    length = int(lengths[0])
    if length > MAX_BODY:
        return 0, 413, f"request body: expected at most {MAX_BODY} bytes, got {length}"
    return length, 0, None


def without_length(head: bytes) -> bytes:
    """``head`` without its ``Content-Length`` lines (websockets' parser refuses a request that
    announces a body; the connection hands the body on beside the request)."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(lines[:1] + [ln for ln in lines[1:] if ln.partition(b":")[0].lower() != b"content-length"])


def upgrades(head: bytes) -> bool:
    """Whether the request asks to become a websocket (``Upgrade: websocket``): only then do the
    bytes after it (its first frames) go on to websockets; after any other request they are
    dropped and the connection closes once it is answered (no pipelining).

    >>> upgrades(b"GET /ws HTTP/1.1\\r\\nUpgrade: WebSocket"), upgrades(b"GET / HTTP/1.1\\r\\nHost: x")
    (True, False)
    """
    return any(name.strip().lower() == b"upgrade" and b"websocket" in value.lower() for name, value in fields(head))


def expects_continue(head: bytes) -> bool:
    """Whether the client waits for ``100 Continue`` before it sends the body (``Expect: 100-continue``)."""
    return any(name.lower() == b"expect" and value.strip().lower() == b"100-continue" for name, value in fields(head))


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """``(name, value)`` of each header line of ``head``, as written (names unstripped, unfolded)."""
    return [(name, value) for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])]


def strict_json(text: str | bytes, what: str, expected: str = "strict JSON") -> Any:
    """``text`` read as strict JSON (no ``NaN`` or ``Infinity``, no key given twice); a
    :class:`ValueError` that names ``what`` otherwise.

    Example:
        >>> strict_json('{"a": [1, 2.5]}', "zones")
        {'a': [1, 2.5]}
        >>> strict_json('{"a": NaN}', "body")
        Traceback (most recent call last):
        ...
        ValueError: body: expected strict JSON, got '{"a": NaN}' (NaN is not a number JSON allows)
    """
    try:  # bytes are UTF-8 (RFC 8259), never the UTF-16 or UTF-32 that json.loads would guess
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text,
                           parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        if nesting(value) > NESTING_MAX:  # deeper than any message: a later repr or walk would recurse
            raise ValueError(f"lists and objects nested more than {NESTING_MAX} deep")
        return value
    except (ValueError, RecursionError) as exc:
        shown = mask_credentials(text.decode("utf-8", "backslashreplace") if isinstance(text, bytes) else text)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        why = str(exc).splitlines()[0]
        why = "a number of more than 4300 digits" if "integer string conversion" in why else why
        raise ValueError(f"{what}: expected {expected}, got {shown!r} ({why})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key given twice in {str(keys)[:40]}")
    return dict(pairs)


UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def unreserved(path: str) -> str:
    """``path`` with its percent-encoded unreserved characters decoded, the rest left encoded
    (RFC 3986 6.2.2.2: they are the same path).

    >>> unreserved("/%68ealthz"), unreserved("/api/cameras/a%2Fb%7e")
    ('/healthz', '/api/cameras/a%2Fb~')
    """
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m[1], 16)) if chr(int(m[1], 16)) in UNRESERVED else m[0], path)


def request_host(target: str, host: str) -> str:
    """The name a request asks for: an absolute-form ``target``'s authority stands for its ``Host``
    header (RFC 9112 3.2.2), else the header.

    >>> request_host("http://evil.example/api/events", "127.0.0.1:8000"), request_host("/api/events", "127.0.0.1:8000")
    ('evil.example', '127.0.0.1:8000')
    """
    parts = urlsplit(target)
    return parts.netloc if parts.scheme in ("http", "https") and parts.netloc else host


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(value: str, *, bound: str, port: int, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a request's ``Host`` header names this server, against DNS rebinding: a page of
    ``attacker.example`` whose name is made to resolve to 127.0.0.1 can reach a loopback server
    with its browser, and its requests carry ``Host: attacker.example:PORT`` (and a matching
    ``Origin``). Only the bound address, the loopback names of a loopback (or wildcard) bind and
    the names in ``allowed`` are served: ``name`` (any port: a reverse proxy's) or ``name:port``.

    >>> host_allowed("localhost:8000", bound="127.0.0.1", port=8000)
    True
    >>> host_allowed("attacker.example:8000", bound="127.0.0.1", port=8000)
    False
    >>> host_allowed("cam.lan", bound="0.0.0.0", port=8000, allowed=("cam.lan",))
    True
    """
    parsed = split_host(value)
    if parsed is None:
        return False
    name, given_port = parsed
    for entry in allowed:
        want = split_host(entry)
        if want is not None and want[0] == name and want[1] in (None, given_port):
            return True
    if (given_port if given_port is not None else 80) != port:
        return False
    bound = bound.strip("[]").lower().rstrip(".") or "0.0.0.0"
    bound_ip, ip = _ip(bound), _ip(name)
    wildcard = bound_ip is not None and bound_ip.is_unspecified
    if name == bound or (ip is not None and bound_ip is not None and ip == bound_ip):
        return True
    loopback_bind = bound == "localhost" or wildcard or (bound_ip is not None and bound_ip.is_loopback)
    if loopback_bind and (name == "localhost" or name.endswith(".localhost") or (ip is not None and ip.is_loopback)):
        return True
    return wildcard and ip is not None  # an address literal is never a rebound name
