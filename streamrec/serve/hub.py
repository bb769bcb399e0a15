"""The connected browsers of one server and what each is sent.

The event loop owns every socket. Other threads hand it messages with
:meth:`Hub.publish_threadsafe`. Each client has a one-slot mailbox per message kind
(prediction, status, frame) and its own sender task: a slow or stalled browser only ever
has the newest message waiting, older ones are dropped and counted, and it never slows
inference or the other clients. A client holds at most :data:`SLOTS_MAX` unsent messages (event
changes each have a key of their own), and one that has not read a message for
:data:`SEND_DEADLINE_S` is closed (websockets' keepalive ping waits behind the stalled send,
so it would never time out): a page that wakes up reconnects and gets the latest state.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

logger = logging.getLogger(__name__)

SEND_DEADLINE_S = 30.0  # a client that has not taken one message in this long is closed
SLOTS_MAX = 1000  # unsent messages one client may hold; over it, its oldest goes (counted as dropped)


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    slots: dict[str, str | bytes] = field(default_factory=dict)  # key -> newest unsent payload
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    sent: int = 0


class Hub:
    """The connected browsers and the newest message of each key for each of them.

    A key is a message kind and a camera, e.g. ``"prediction:court-1"``; a client never
    holds more than one unsent message per key."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        self.stalled = 0  # clients closed because they stopped reading
        self.last: dict[str, str | bytes] = {}

    def publish(self, key: str, payload: str | bytes) -> None:
        """Offer ``payload`` to every client (call on the event loop; never blocks)."""
        if key.startswith(("status", "prediction")):
            self.last[key] = payload  # a new page gets the latest status and prediction at once
        for c in self.clients:
            if key in c.slots or len(c.slots) >= SLOTS_MAX:
                c.slots.pop(key if key in c.slots else next(iter(c.slots)))
                c.dropped += 1
                self.dropped += 1
            c.slots[key] = payload  # a replaced key goes to the end: after what was offered before it
            c.ready.set()

    def forget(self, suffix: str) -> None:
        """Drop remembered messages whose key ends with ``suffix`` (a removed camera)."""
        for key in [k for k in self.last if k.endswith(suffix)]:
            del self.last[key]

    def publish_threadsafe(self, key: str, payload: str | bytes) -> None:
        self._on_loop(self.publish, key, payload)

    def publish_many_threadsafe(self, items: list[tuple[str, str | bytes]]) -> None:
        """:meth:`publish` each ``(key, payload)`` from another thread, in one hand-off to the loop
        (each hand-off writes to the loop's wake-up socket, letting go of the GIL)."""
        if items:
            self._on_loop(self._publish_many, items)

    def _publish_many(self, items: list[tuple[str, str | bytes]]) -> None:
        for key, payload in items:
            self.publish(key, payload)

    def forget_threadsafe(self, suffix: str) -> None:
        """:meth:`forget` from another thread: runs on the loop, after what that thread published before."""
        if self.loop is None:  # not serving yet: no loop to order against
            self.forget(suffix)
        else:
            self._on_loop(self.forget, suffix)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed between the check and the call
                pass

    async def serve_client(self, ws: ServerConnection) -> None:
        client = Client(ws)
        client.slots.update(sorted(self.last.items(), key=lambda kv: not kv[0].startswith("status")))
        if client.slots:
            client.ready.set()
        self.clients.add(client)
        reader = asyncio.create_task(self._drain_incoming(ws))
        # the reader ends when the connection does: wake the sender, which otherwise would wait for
        # the next message to find out (the client counted meanwhile, and close() waiting on it)
        reader.add_done_callback(lambda _: client.ready.set())
        try:
            while True:
                await client.ready.wait()
                client.ready.clear()
                if reader.done():
                    break
                while client.slots:
                    key = next(iter(client.slots))
                    payload = client.slots.pop(key)
                    try:  # waits only on this client's socket
                        await asyncio.wait_for(ws.send(payload), SEND_DEADLINE_S)
                    except asyncio.TimeoutError:
                        self._close_stalled(ws)
                        return
                    client.sent += 1
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            reader.cancel()

    def _close_stalled(self, ws: ServerConnection) -> None:
        self.stalled += 1
        logger.info("closed a websocket client that read nothing for %.0f s (%d so far)", SEND_DEADLINE_S, self.stalled)
        ws.transport.abort()  # a closing handshake would wait behind the same full socket

    @staticmethod
    async def _drain_incoming(ws: ServerConnection) -> None:
        """Browsers send nothing we act on: incoming messages (at most 64 KiB, the
        connection's ``max_size``) are read and ignored, which keeps the socket healthy."""
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass



async def watched_ticks(hub: Hub, period: float):
    """Yield every ``period`` seconds while a browser is connected: preview frames are encoded
    only when someone will see them."""
    while True:
        await asyncio.sleep(period)
        if hub.clients:
            yield
