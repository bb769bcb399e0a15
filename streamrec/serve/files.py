"""Files served by the API (event clips and thumbnails), with HTTP Range support so that a
browser's ``<video>`` can seek. One answer holds at most :data:`MAX_CHUNK` bytes: a browser asks
for the rest with further ranges, so a long clip never sits whole in memory.

Example:
    >>> byte_range("bytes=10-19", 100), byte_range("bytes=-10", 100), byte_range("bytes=90-", 100)
    ((10, 19), (90, 99), (90, 99))
    >>> byte_range("bytes=200-", 100) is None, byte_range(None, 100)
    (True, (0, 99))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

MAX_CHUNK = 4 * 1024 * 1024
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class FileBody:
    """A reply body read from ``path`` (an :class:`~streamrec.serve.server.ApiRoute` may answer it)."""

    path: Path
    content_type: str


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first inclusive byte range of a ``Range`` header within ``size`` bytes; the whole file
    without one; ``None`` when it cannot be satisfied (a 416)."""
    if not header:
        return (0, size - 1)
    m = RANGE.match(header.split(",")[0].strip())
    if not m or (not m.group(1) and not m.group(2)):
        return (0, size - 1)  # a malformed Range is ignored, as RFC 9110 allows
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (start, end) if start < size and start <= end else None


def file_response(body: FileBody, range_header: str | None) -> Response:
    """200 with the file (up to :data:`MAX_CHUNK`), 206 with the asked range, or 416."""
    size = body.path.stat().st_size
    want = byte_range(range_header, size)
    if want is None:
        headers = Headers([("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
        status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
        return Response(status.value, status.phrase, headers, b"")
    start, end = want[0], min(want[1], want[0] + MAX_CHUNK - 1)
    with body.path.open("rb") as fh:
        fh.seek(start)
        data = fh.read(end - start + 1)
    partial = bool(range_header) or end < size - 1
    status = HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK
    headers = Headers([("Content-Type", body.content_type), ("Content-Length", str(len(data))),
                       ("Accept-Ranges", "bytes"), ("Cache-Control", "private, max-age=3600"), ("Connection", "close")])
    if partial:
        headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{size}"
    return Response(status.value, status.phrase, headers, data)
