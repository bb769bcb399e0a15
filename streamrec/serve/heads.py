"""Checks on a request's head (its request line and header lines) before websockets reads it:
whether it announces a body, and why websockets' parser would refuse it (the parser itself
closes such a connection without an answer).

Example:
    >>> has_body(b"POST / HTTP/1.1\\r\\nContent-Length: 5"), has_body(b"GET / HTTP/1.1\\r\\nContent-Length: 0")
    (True, False)
    >>> malformed(b"GET / HTTP/1.1\\r\\nHost: x") is None, malformed(b"GET /caf\\xc3\\xa9 HTTP/1.1")[:19]
    (True, 'malformed request: ')
"""

from __future__ import annotations

from websockets.exceptions import SecurityError
from websockets.http11 import Request
from websockets.streams import StreamReader

from streamrec.redact import printable


def has_body(head: bytes) -> bool:
    """Whether a request's header lines announce a body (a non-zero Content-Length, or chunks)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"transfer-encoding" or (name == b"content-length" and value not in (b"", b"0")):
            return True
    return False


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
    except Exception as exc:  # noqa: BLE001 - whatever the parser refuses
        text = printable(str(exc).encode("ascii", "backslashreplace").decode())
        return "malformed request: " + (text if len(text) <= 120 else text[:120] + "...")
    return "malformed request: incomplete"
