"""Files served by the API (event clips and thumbnails), with HTTP Range support so that a
browser's ``<video>`` can seek.

A request without ``Range`` gets the whole file (200); one ``bytes`` range gets that part (206),
or a 416 when it starts past the end. A ``Range`` the server does not use (another unit, several
ranges, a malformed one) is ignored, as RFC 9110 allows: the answer is the whole file. Each answer
carries the file's ``ETag`` and ``Last-Modified``; a ``Range`` sent with an ``If-Range`` that
names neither (the file changed since the client's first part) is ignored too. A browser's
revalidation (``If-None-Match``, ``If-Modified-Since``) of an unchanged file is a 304, and
``If-Match`` or ``If-Unmodified-Since`` that the file no longer meets a 412. The body
is written by the connection in chunks, as fast as the client reads it
(:class:`~streamrec.serve.answers.StreamedResponse`), so a long clip never sits whole in memory.

Example:
    >>> byte_range("bytes=10-19", 100), byte_range("bytes=-10", 100), byte_range("bytes=90-", 100)
    (Part(start=10, end=19, ranged=True), Part(start=90, end=99, ranged=True), Part(start=90, end=99, ranged=True))
    >>> byte_range("bytes=200-", 100) is None, byte_range(None, 100), byte_range("items=0-5", 100)
    (True, Part(start=0, end=99, ranged=False), Part(start=0, end=99, ranged=False))
    >>> byte_range("bytes=0-" + "9" * 5000, 100)
    Part(start=0, end=99, ranged=True)
"""

from __future__ import annotations

import logging
import os
import re
import time
from email.utils import formatdate, parsedate_to_datetime
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import NamedTuple

from websockets.datastructures import Headers
from websockets.http11 import Response

from streamrec.serve.answers import StreamedResponse, http_response

logger = logging.getLogger(__name__)

SPEC = re.compile(r"([0-9]*)-([0-9]*)")
PAST_ANY_END = 10**18  # a position of 19 digits or more: past the end of any file


@dataclass(frozen=True)
class FileBody:
    """A reply body read from ``path`` (an :class:`~streamrec.serve.server.ApiRoute` may answer it)."""

    path: Path
    content_type: str


class Part(NamedTuple):
    """The inclusive byte range to send; ``ranged``: a 206 for a ``Range`` (else the whole file, a 200)."""

    start: int
    end: int
    ranged: bool


def position(digits: str) -> int:
    """A byte position as a client wrote it, leading zeros and any number of digits allowed; one too
    large for any file is :data:`PAST_ANY_END` (it is never converted whole)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 19 else PAST_ANY_END


def byte_range(header: str | None, size: int) -> Part | None:
    """What to send of ``size`` bytes for a ``Range`` header: the asked range, the whole file
    (no header, or one that is ignored), or ``None`` when the range cannot be satisfied (a 416)."""
    whole = Part(0, size - 1, False)
    unit, eq, ranges = (header or "").partition("=")
    if not eq or unit.strip().lower() != "bytes":  # range units are case-insensitive
        return whole
    specs = [s.strip(" \t") for s in ranges.split(",") if s.strip(" \t")]
    m = SPEC.fullmatch(specs[0]) if len(specs) == 1 else None
    if m is None or not (m.group(1) or m.group(2)):  # malformed, or several ranges: answered whole
        return whole
    if not m.group(1):  # the last N bytes
        n = position(m.group(2))
        return Part(max(0, size - n), size - 1, True) if n > 0 and size > 0 else None
    start = position(m.group(1))
    end = position(m.group(2)) if m.group(2) else PAST_ANY_END
    if end < start:  # an invalid range: ignored
        return whole
    return Part(start, min(end, size - 1), True) if start < size else None


def validators(st: os.stat_result) -> tuple[str, str]:
    """A file's ``ETag`` (its size and modification time in nanoseconds: a strong validator, as a
    clip is written once and renamed into place) and ``Last-Modified``.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as fh:
    ...     _ = fh.write(bytes(1000)); fh.flush()
    ...     os.utime(fh.name, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    ...     validators(os.stat(fh.name))
    ('"3e8-17979cfe362a0000"', 'Tue, 14 Nov 2023 22:13:20 GMT')
    """
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"', formatdate(st.st_mtime, usegmt=True)


def range_applies(if_range: str | None, st: os.stat_result, *, now: float | None = None) -> bool:
    """Whether a ``Range`` counts under ``If-Range`` (RFC 9110 13.1.5): always without one; with an
    entity tag, when it is this file's (a weak one never); with a date, when it is this file's
    ``Last-Modified`` and the file is at least a second older than ``now`` (a date is a strong
    validator only then)."""
    if if_range is None:
        return True
    etag, modified = validators(st)
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag
    return value == modified and st.st_mtime <= (time.time() if now is None else now) - 1.0


def _date(values: list[str]) -> float | None:
    """One HTTP date header's time; ``None`` (the header is ignored) for none, several, or a bad one."""
    if len(values) != 1 or len(values[0]) > 64:
        return None
    try:
        return parsedate_to_datetime(values[0]).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def precondition(request: Headers, st: os.stat_result) -> HTTPStatus | None:
    """A ``GET``'s conditions on the file (RFC 9110 13.2.2): 412 when ``If-Match`` names none of its
    entity tags (strong comparison) or, without it, the file changed after ``If-Unmodified-Since``;
    304 when ``If-None-Match`` names it (weak comparison) or, without it, it has not changed since
    ``If-Modified-Since``; ``None``: the answer is the file."""
    etag, _ = validators(st)
    mtime = int(st.st_mtime)  # an HTTP date has whole seconds

    def tags(name: str, weak: bool) -> list[str]:
        listed = [t.strip() for v in request.get_all(name) for t in v.split(",")]
        return [t.removeprefix("W/") for t in listed] if weak else listed

    if request.get_all("If-Match"):
        if not {"*", etag} & set(tags("If-Match", weak=False)):
            return HTTPStatus.PRECONDITION_FAILED
    elif (since := _date(request.get_all("If-Unmodified-Since"))) is not None and mtime > since:
        return HTTPStatus.PRECONDITION_FAILED
    if request.get_all("If-None-Match"):
        if {"*", etag} & set(tags("If-None-Match", weak=True)):
            return HTTPStatus.NOT_MODIFIED
    elif (since := _date(request.get_all("If-Modified-Since"))) is not None and mtime <= since:
        return HTTPStatus.NOT_MODIFIED
    return None


def file_response(body: FileBody, request: Headers) -> Response:
    """200 with the whole file, 206 with the asked range, 416 for a range past the end, 304 or 412
    for the request's conditions (:func:`precondition`), or 404 when the file went away meanwhile;
    a ``Range`` whose ``If-Range`` does not name this file is ignored (200). The file is opened
    here; the connection writes the body."""
    try:
        fh = body.path.open("rb")
    except OSError as exc:
        logger.info("cannot open %s: %s", body.path, exc)
        return http_response(HTTPStatus.NOT_FOUND, "application/json", b'{"error": "the file no longer exists"}')
    try:
        st = os.fstat(fh.fileno())
        size, etag, modified = st.st_size, *validators(st)
        cache = [("ETag", etag), ("Last-Modified", modified), ("Cache-Control", "private, max-age=3600"),
                 ("Connection", "close"), ("Date", formatdate(usegmt=True))]
        condition = precondition(request, st)
        part = byte_range(request.get("Range") if range_applies(request.get("If-Range"), st) else None, size)
        if condition is not None or part is None:  # an answer without a body
            fh.close()
            status = condition or HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
            extra = [] if status == HTTPStatus.NOT_MODIFIED else [("Content-Length", "0")]  # a 304 has no length
            if part is None and condition is None:
                extra.append(("Content-Range", f"bytes */{size}"))
            return Response(status.value, status.phrase, Headers([("Accept-Ranges", "bytes"), *extra, *cache]), b"")
        fh.seek(part.start)
    except BaseException:
        fh.close()
        raise
    length = part.end - part.start + 1
    headers = Headers([("Content-Type", body.content_type), ("Content-Length", str(length)), ("Accept-Ranges", "bytes"),
                       *cache])
    if part.ranged:
        headers["Content-Range"] = f"bytes {part.start}-{part.end}/{size}"
    status = HTTPStatus.PARTIAL_CONTENT if part.ranged else HTTPStatus.OK
    return StreamedResponse(status, headers, fh, length)
