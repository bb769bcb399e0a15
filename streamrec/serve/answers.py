"""The HTTP answers the server writes: whole ones (:func:`http_response`), a ``HEAD``'s
(:func:`without_body`), and a file's, streamed as the client reads it (:class:`StreamedResponse`,
written by :class:`~streamrec.serve.guard.GuardedConnection`).

Example:
    >>> answer = http_response(HTTPStatus.OK, "text/plain", b"ok\\n")
    >>> answer.status_code, answer.headers["Content-Length"], without_body(answer).body
    (200, '3', b'')
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus
from typing import BinaryIO

from websockets.datastructures import Headers
from websockets.http11 import Response


def http_response(status: HTTPStatus, content_type: str, body: bytes, *extra: tuple[str, str]) -> Response:
    """An answer with ``body``; ``extra``: more headers (``("Allow", "GET, HEAD")``)."""
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            ("Date", formatdate(usegmt=True)),  # RFC 9110 6.6.1: an origin server with a clock sends it
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def without_body(response: Response) -> Response:
    """The answer to a ``HEAD``: ``response``'s status and headers (``Content-Length`` included), no body."""
    if isinstance(response, StreamedResponse):
        response.close()
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


class Written(Response):
    """Stands in for an answer :meth:`GuardedConnection.answer` has already written: nothing more to send."""

    def serialize(self) -> bytes:
        return b""


class StreamedResponse(Response):
    """An answer whose body is ``length`` bytes of ``source`` (an open binary file, at the first
    byte to send), written by :class:`GuardedConnection` after the head, in chunks, as fast as the
    client reads them; ``body`` stays empty and ``Content-Length`` says how much follows."""

    def __init__(self, status: HTTPStatus, headers: Headers, source: BinaryIO, length: int) -> None:
        super().__init__(status.value, status.phrase, headers, b"")
        self.source, self.length = source, length

    def close(self) -> None:
        self.source.close()
