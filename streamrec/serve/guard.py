"""What the server checks before it reads a request: connection limits (:class:`GuardedConnection`
is the connection class that applies them); the ``Host`` check is :func:`~streamrec.serve.heads.host_allowed`.

* **Slow or half-sent requests** (slowloris): a connection must send its request line and
  headers (and body) within ``header_timeout_s``; the opening handshake's own, much longer timeout is for
  the API's work after that (adding a camera may load a model).
* **Too many connections**: at most ``max_connections`` in all and ``max_per_address`` from
  one peer address. A new connection over a limit takes the place of the oldest one still
  sending its request (from that address, for the per-address limit), else of the oldest whose
  answer or websocket messages have waited 2 s for its client to read on, so that half-open
  sockets and clients that do not read can never lock out a real client; when every connection
  is a real one, the new one gets a 503. The total is also kept ``fd_reserve`` descriptors under the process's limit
  (asyncio accepts up to 100 sockets at once; files, databases and cameras need some too).
* **Whole answers**: an HTTP answer (anything but a websocket) is written in full before the
  connection closes, however slowly the client reads, within the opening handshake's timeout;
  a :class:`StreamedResponse` body (a file) is read and written in chunks as the client takes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from streamrec.errors import StreamrecError
from streamrec.serve.answers import StreamedResponse, Written, http_response, without_body
from streamrec.serve.heads import (MAX_BODY, announced_body, expects_continue, malformed, oversized, upgrades,
                                   without_length)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Connection limits of one server (see the module's docstring)."""

    header_timeout_s: float = 5.0
    max_connections: int = 512
    max_per_address: int = 64
    fd_reserve: int = 256

    @classmethod
    def of(cls, config: Any) -> "Limits":
        """The limits a :class:`~streamrec.config.ServeConfig` sets."""
        return cls(header_timeout_s=config.header_timeout, max_connections=config.max_connections,
                   max_per_address=config.max_connections_per_address)

    def __post_init__(self) -> None:
        import math

        if not (isinstance(self.header_timeout_s, (int, float)) and math.isfinite(self.header_timeout_s)
                and self.header_timeout_s > 0):
            raise StreamrecError(f"header_timeout: expected a number of seconds > 0, got {self.header_timeout_s!r}")
        for name in ("max_connections", "max_per_address"):
            if getattr(self, name) < 1:
                raise StreamrecError(f"{name}: expected >= 1, got {getattr(self, name)}")


class Guarded(Protocol):
    """A connection as the guard sees it."""

    peer: str
    head_done: bool
    stalled: bool  # its answer waits for the client to read on

    def refuse(self) -> None: ...
    def evict(self) -> None: ...


class ConnectionGuard:
    """The open connections of one server, by peer address, oldest first."""

    def __init__(self, limits: Limits, fd_soft_limit: int) -> None:
        self.limits = limits
        self.max_total = max(1, min(limits.max_connections, fd_soft_limit - limits.fd_reserve))
        self.by_peer: dict[str, OrderedDict[Guarded, None]] = {}
        self.total = 0
        self.refused = 0
        self.evicted = 0

    def admit(self, conn: Guarded) -> bool:
        """Count ``conn`` in (making room when a limit is reached); False when it was refused."""
        mine = self.by_peer.get(conn.peer)
        if mine is not None and len(mine) >= self.limits.max_per_address and not self._evict(mine.keys()):
            return self._refuse(conn, f"{conn.peer} has {len(mine)} connections open")
        if self.total >= self.max_total and not self._evict(self._all()):
            return self._refuse(conn, f"{self.total} connections open")
        self.by_peer.setdefault(conn.peer, OrderedDict())[conn] = None
        self.total += 1
        return True

    def release(self, conn: Guarded) -> None:
        mine = self.by_peer.get(conn.peer)
        if mine is not None and mine.pop(conn, 0) is None:
            self.total -= 1
            if not mine:
                del self.by_peer[conn.peer]

    def _all(self):
        for conns in list(self.by_peer.values()):
            yield from conns

    def _evict(self, candidates) -> bool:
        """Close the oldest of ``candidates`` still sending its headers, else the oldest whose answer
        waits for the client to read on (see :attr:`GuardedConnection.stalled`); whether there was one."""
        candidates = list(candidates)
        victim = next((c for c in candidates if not c.head_done), None) or \
            next((c for c in candidates if c.stalled), None)
        if victim is None:
            return False
        self.release(victim)
        self.evicted += 1
        victim.evict()
        return True

    def _refuse(self, conn: Guarded, why: str) -> bool:
        self.refused += 1
        if sparse(self.refused):
            logger.warning("connection from %s refused: %s (%d refused so far)", conn.peer, why, self.refused)
        conn.refuse()
        return False


def sparse(count: int) -> bool:
    """Whether the ``count``-th of something a client can cause at will is logged: the 1st, 10th,
    100th, then every 1000th (a flood never floods the log).

    >>> [n for n in range(1, 3001) if sparse(n)]
    [1, 10, 100, 1000, 2000, 3000]
    """
    return count in (1, 10, 100) or count % 1000 == 0


def peer_of(transport: Any) -> str:
    """The peer's address (without its port) of an asyncio transport."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return str(peer or "?")


class GuardedConnection(ServerConnection):
    """websockets' connection, except that

    * it reads a request's body (at most :data:`~streamrec.serve.heads.MAX_BODY` bytes, with its
      ``Content-Length``) and hands websockets the request without it, the body in :attr:`body`:
      websockets' parser refuses request bodies (a WebSocket handshake has none) by closing the
      connection with no reply at all. What it would refuse gets a 400 (411, 413) that says why;
    * it is counted by the server's :class:`~streamrec.serve.guard.ConnectionGuard`, which may
      refuse it (a 503) or close it to make room while it is still sending its headers, and
      it is closed when its request line, headers and body take longer than the header timeout;
    * :meth:`answer` writes an HTTP answer whole, however slowly the client reads it."""

    MAX_HEAD = 16384  # websockets' own limit on a request's header lines is larger: 8 KiB each
    CHUNK = 256 * 1024  # bytes of a streamed body read and written at a time
    STALL_S = 2.0  # an answer waiting this long for the client to read on may make room for a new connection
    LINGER_S = 1.0  # a refused body is read and dropped this long before the connection closes
    # what may wait unsent to an open websocket (its sends wait at 256 KiB, then one message goes
    # over): more is a client that sends but does not read (a ping flood piling up pongs)
    UNSENT_MAX = 4 * 1024 * 1024

    def __init__(self, *args: Any, guard: ConnectionGuard | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytes | None = b""  # None once the request line and headers were seen
        self._head_method = False  # the request is a HEAD
        self.guard = guard
        self.peer = "?"
        self.head_done = False  # the request line and headers are in (the guard's view)
        self._dropped = False  # refused or evicted: whatever still comes in is ignored
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None  # when the answer began to wait for the client to read
        self._paused_since: float | None = None  # when the transport's buffer last went over its high-water mark
        self.body = b""  # the request's body, once whole (see _body_arrived)
        self._body: bytearray | None = None  # the part of it in so far (and its _length, the _request without it)
        self._request, self._length = b"", 0
        # a request for a websocket, what followed it before its handshake ended, and whether that gave a 101
        self._upgrade, self._early, self._opened = False, b"", False

    @property
    def stalled(self) -> bool:
        """Its answer has waited :attr:`STALL_S` for the client to read on (a paused ``<video>``), or
        its websocket's messages have (a page that stopped reading): over a connection limit it is
        closed to make room (a player asks again with a ``Range``, a page reconnects)."""
        since = self._waiting_since if self._waiting_since is not None else self._paused_since
        return since is not None and self.loop.time() - since >= self.STALL_S

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused_since = self.loop.time()  # the client has not read what was sent

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused_since = None

    async def _drained(self) -> None:
        self._waiting_since = self.loop.time()
        try:
            await self.drain()
        finally:
            self._waiting_since = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = peer_of(transport)
        if self.guard is not None and self.guard.admit(self):
            self._timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.guard is not None:
            self.guard.release(self)
        super().connection_lost(exc)

    def refuse(self) -> None:
        """Over a connection limit: a 503, then close."""
        self._dropped = self.head_done = True
        self.transport.write(http_response(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"too many connections\n").serialize())
        self.transport.close()

    def _expire(self) -> None:
        """The request (line, headers, body) did not all come within the header timeout: a 408
        when part of it came, else closed without a word (an idle or slowloris connection)."""
        if not self.head_done:
            if self._head or self._body is not None:
                return self._reply(HTTPStatus.REQUEST_TIMEOUT, "text/plain", b"the request did not come whole in time\n")
            self.evict()

    def evict(self) -> None:
        """Headers too slow, room needed, frames that do not wait for the handshake: close at once."""
        self._dropped = self.head_done = True
        self.transport.abort()

    async def answer(self, response: Response) -> Response:
        """Write ``response`` (an HTTP answer, not a websocket's 101) whole: its head, then its
        body (a :class:`StreamedResponse`'s file in chunks, as fast as the client reads them), and
        wait until all of it has left. websockets, which would drop what is still buffered a second
        after its own write, then sends the returned empty stand-in."""
        try:
            if self.transport.is_closing():  # the client is gone
                return Written(response.status_code, response.reason_phrase, response.headers, b"")
            self.transport.write(response.serialize())
            if isinstance(response, StreamedResponse):
                await self._write_body(response)
            await self._flushed()
        except (OSError, RuntimeError) as exc:  # the client went away, the file cannot be read, the transport shut
            logger.info("answer %d to %s not sent whole: %s", response.status_code, self.peer, exc)
            self.transport.abort()
        finally:
            if isinstance(response, StreamedResponse):
                response.close()
        return Written(response.status_code, response.reason_phrase, response.headers, b"")

    async def _write_body(self, answer: StreamedResponse) -> None:
        left = answer.length
        while left > 0 and not self.transport.is_closing():
            chunk = answer.source.read(min(self.CHUNK, left))
            if not chunk:  # the file shrank meanwhile: the client sees fewer bytes than Content-Length
                raise OSError(f"{getattr(answer.source, 'name', 'the file')} ended {left} bytes early")
            self.transport.write(chunk)
            left -= len(chunk)
            await self._drained()

    async def _flushed(self) -> None:
        """Wait until the transport's buffer is empty (``drain()`` waits for that once the
        buffer's high-water mark is 0) or the connection is lost."""
        self.transport.set_write_buffer_limits(high=0)
        while self.transport.get_write_buffer_size() and self.paused:
            await self._drained()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """websockets' handshake; then what followed the request (its first frames) goes on only
        after a 101, else it is dropped (websockets would read it as frames and lose the answer)."""
        await super().handshake(*args, **kwargs)
        early, self._early = self._early, b""
        self._opened = self.response is not None and self.response.status_code == HTTPStatus.SWITCHING_PROTOCOLS
        if self._opened and early and not self._dropped:
            super().data_received(early)

    def _after_request(self, data: bytes) -> None:
        """Bytes after the request: a websocket's frames once open, kept until its handshake ends
        (more than :data:`MAX_BODY` closes the connection), else dropped."""
        if self._opened:
            super().data_received(data)
            if self.transport.get_write_buffer_size() > self.UNSENT_MAX:
                logger.info("closed the websocket of %s: %d bytes of answers unread", self.peer,
                            self.transport.get_write_buffer_size())
                self.evict()
        elif self._upgrade:  # over the bound, a client that does not wait goes (never frames with a hole)
            self._early += data
            if len(self._early) > MAX_BODY:
                self.evict()

    def data_received(self, data: bytes) -> None:
        if self._dropped:
            return
        if self._head is None and self._body is None:  # the request is in: what follows it
            return self._after_request(data)
        if self._body is not None:  # the rest of a body
            self._body += data
            self._body_arrived()
            return
        if self._head is not None:
            self._head += data
            self._head_method = self._head.startswith(b"HEAD ")  # an answer to it before websockets' has no body
            end = self._head.find(b"\r\n\r\n")
            lines = self._head.replace(b"\r\n", b"\n").removesuffix(b"\r")  # a last CR may have its LF on the way
            bare = end < 0 and (b"\n\n" in lines or b"\r" in lines)  # lines that end in LF or CR alone
            if end < 0 and not bare and len(self._head) < self.MAX_HEAD + 4:  # its CR LF CR LF may end at MAX_HEAD
                return  # the rest of the head is still to come
            data, head, self._head = self._head, self._head[: max(end, 0)], None
            too_large = None if bare else oversized(head) if 0 <= end <= self.MAX_HEAD else oversized(data, self.MAX_HEAD)
            if too_large is not None:  # websockets' own answer would speak of a WebSocket connection
                return self._reply(HTTPStatus(too_large[0]), "text/plain", f"{too_large[1]}\n".encode())
            length, status, refusal = announced_body(head) if end >= 0 else (0, 0, None)
            if refusal is not None:  # websockets would close without a word; the body may be on its way
                return self._reply(HTTPStatus(status), "application/json", json.dumps({"error": refusal}).encode(), True)
            why = "malformed request: lines end with CR LF" if bare else malformed(without_length(head)) if end >= 0 else None
            if why is not None:
                return self._reply(HTTPStatus.BAD_REQUEST, "text/plain", f"{why}\n".encode())
            if end >= 0:  # websockets' parser refuses a Content-Length (but a bare "0")
                self._upgrade = upgrades(head)
                data, rest = without_length(head) + b"\r\n\r\n", data[end + 4:]
                if length:  # read on to the body's end, within the same timeout
                    if expects_continue(head):
                        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self._request, self._body, self._length = data, bytearray(rest), length
                    return self._body_arrived()
            self._headed()
            super().data_received(data)
            if end >= 0 and rest:
                self._after_request(rest)

    def _headed(self) -> None:
        self.head_done = True
        if self._timer is not None:
            self._timer.cancel()

    def _body_arrived(self) -> None:
        """The request, without its body, goes to websockets once the whole body is in; the body
        waits in :attr:`body` for the API."""
        if self._body is None or len(self._body) < self._length:
            return
        self.body, rest, self._body = bytes(self._body[: self._length]), bytes(self._body[self._length:]), None
        self._headed()
        super().data_received(self._request)
        if rest:
            self._after_request(rest)

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes, linger: bool = False) -> None:
        """Answer and close; with ``linger``, what the client still sends (a body refused before it came)
        is read and dropped for :attr:`LINGER_S` first, so that the answer is not lost to a reset."""
        self._dropped = True
        self._headed()
        answer = http_response(status, content_type, body)
        self.transport.write((without_body(answer) if self._head_method else answer).serialize())
        if linger:
            self.loop.call_later(self.LINGER_S, self.transport.close)
        else:
            self.transport.close()
