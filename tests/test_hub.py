"""The hub's per-client mailboxes: a stalled client never slows the others or grows a queue."""

import asyncio

import pytest
import websockets

from streamrec.serve.hub import Hub


async def serving(hub: Hub):
    """The real server on a free port, on the running loop (close it when done)."""
    from streamrec.serve.server import WebServer

    server = WebServer(hub, host="127.0.0.1", port=0, routes={})
    await server.start()
    return server


async def until(check, what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` on the loop (the server's tasks run meanwhile) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_stalled_client_keeps_one_message_and_others_get_all():
    """Two real browsers: one reads every message, the other reads nothing until the end. The
    messages are large (512 KiB), so the stalled one's socket fills up and the server's send to
    it blocks: from then on it holds only the newest message, never a queue."""
    size, n = 512 * 1024, 100

    def payload(i: int) -> str:
        return f"p{i:03d}:" + "x" * size

    async def scenario():
        hub = Hub()
        server = await serving(hub)
        url = f"ws://127.0.0.1:{server.port}/ws"
        try:
            async with websockets.connect(url, max_size=2 * size) as fast, \
                    websockets.connect(url, max_size=2 * size, max_queue=1) as slow:
                await until(lambda: len(hub.clients) == 2, "both clients")
                for i in range(n):  # the next message once the reading client has this one
                    hub.publish("prediction:court-1", payload(i))
                    assert await asyncio.wait_for(fast.recv(), 10) == payload(i)
                got = []
                while not got or got[-1] != n - 1:  # the stalled client reads at last
                    got.append(int((await asyncio.wait_for(slow.recv(), 30))[1:4]))
        finally:
            await server.close()
        return got, hub.dropped

    got, dropped = asyncio.run(scenario())
    # in order, never twice, the newest last; whenever its socket was full, the messages published
    # meanwhile replaced one another (how many went out before depends on the kernel's buffers)
    assert got == sorted(set(got)) and got[0] == 0 and got[-1] == n - 1
    assert len(got) < n - 10, got  # the socket filled up long before the end
    assert dropped == n - len(got)  # every message it never got was counted; the reading client lost none


def test_new_client_gets_last_status_and_prediction_first():
    async def scenario():
        hub = Hub()
        server = await serving(hub)
        try:
            hub.publish("prediction:a", "p1")
            hub.publish("status:a", "s1")
            hub.publish("frame:a", b"jpeg")  # frames are not kept for clients to come
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                first = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
                hub.publish("prediction:a", "p2")  # what comes next: nothing (no frame) came in between
                return [*first, await asyncio.wait_for(ws.recv(), 5)]
        finally:
            await server.close()

    assert asyncio.run(scenario()) == ["s1", "p1", "p2"]


@pytest.mark.parametrize("leave", ["close", "drop"])
def test_client_is_forgotten_when_it_disconnects(leave):
    """A browser that closes its websocket, or whose connection just drops (no closing
    handshake), is forgotten, with or without a message published after it left."""
    async def scenario():
        hub = Hub()
        server = await serving(hub)
        try:
            ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws")
            await until(lambda: len(hub.clients) == 1, "the client")
            if leave == "close":
                await ws.close()
            else:
                ws.transport.abort()
            await until(lambda: not hub.clients, "the client to be forgotten")
            hub.publish("prediction:a", "p")  # nobody to send it to
            return len(hub.clients), hub.dropped
        finally:
            await server.close()

    assert asyncio.run(scenario()) == (0, 0)


def test_server_closes_at_once_after_a_client_left(caplog):
    """A client that disconnected before the shutdown no longer holds ``close()`` up to its
    timeout (its handler used to wait for a next message that never came)."""
    import websockets

    from streamrec.serve.server import WebServer

    async def scenario():
        hub = Hub()
        server = WebServer(hub, host="127.0.0.1", port=0, routes={})
        await server.start()
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                hub.publish("prediction:a", "p1")
                assert await asyncio.wait_for(ws.recv(), 5) == "p1"
            for _ in range(100):  # the server's side of the closing handshake
                if not hub.clients:
                    break
                await asyncio.sleep(0.01)
            left = len(hub.clients)
        finally:
            await server.close()
        return left

    with caplog.at_level("WARNING", logger="streamrec.serve.server"):
        assert asyncio.run(scenario()) == 0
    assert [r.getMessage() for r in caplog.records] == []


def test_server_sends_uncompressed_unless_asked():
    """A client asking for per-message deflate (browsers and websockets' own client do) gets
    plain frames by default: deflating every message once per client cost the server ~10x the CPU
    (benchmarks/ws_compression.py) to shrink JPEGs that do not shrink."""
    import websockets

    from streamrec.serve.server import WebServer

    async def negotiated(compression):
        hub = Hub()
        server = WebServer(hub, host="127.0.0.1", port=0, routes={}, compression=compression)
        await server.start()
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:  # asks for deflate
                hub.publish("prediction:a", "x" * 1000)
                assert await asyncio.wait_for(ws.recv(), 5) == "x" * 1000
                return [type(e).__name__ for e in ws.protocol.extensions]
        finally:
            await server.close()

    assert asyncio.run(negotiated(None)) == []
    assert asyncio.run(negotiated("deflate")) == ["PerMessageDeflate"]


def raw_websocket(port: int, rcvbuf: int = 4096):
    """A websocket opened by hand on a socket with a small receive buffer, read no further: a
    page that stopped reading (a suspended tab, a client that only sends)."""
    import socket

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


@pytest.mark.slow
def test_a_client_that_stops_reading_is_closed_after_the_send_deadline(monkeypatch):
    """Its keepalive ping waits behind the stalled send and never times out: the send deadline
    closes it, and the client that reads goes on."""
    import streamrec.serve.hub as hub_module

    monkeypatch.setattr(hub_module, "SEND_DEADLINE_S", 0.5, raising=False)

    async def scenario():
        hub = Hub()
        server = await serving(hub)
        stalled = await asyncio.to_thread(raw_websocket, server.port)  # the loop serves its handshake
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as reader:
                await until(lambda: len(hub.clients) == 2, "both clients")
                for i in range(200):  # 200 x 256 KiB: far more than the stalled socket's buffers hold
                    hub.publish(f"frame:{i % 4}", b"x" * 256 * 1024)
                    await asyncio.wait_for(reader.recv(), 10)
                    if hub.stalled:
                        break
                await until(lambda: len(hub.clients) == 1, "the stalled client to be closed")
                hub.publish("prediction:a", "after")
                assert await asyncio.wait_for(reader.recv(), 5) == "after"
            return hub.stalled
        finally:
            stalled.close()
            await server.close()

    assert asyncio.run(scenario()) == 1


def test_a_client_holds_at_most_slots_max_unsent_messages_and_a_replaced_one_goes_last():
    """Event changes each have a key of their own: a client that reads nothing holds the newest
    :data:`SLOTS_MAX` of them, the oldest dropped and counted; a message that replaces an unsent
    one is sent after what was published before it (a camera's new status after its removal)."""
    from streamrec.serve.hub import SLOTS_MAX, Client

    hub = Hub()
    client = Client(ws=None)  # type: ignore[arg-type] - nothing is sent: only its mailbox is read
    hub.clients.add(client)
    for i in range(SLOTS_MAX + 500):
        hub.publish(f"event:e{i}:open", f"e{i}")
    assert len(client.slots) == SLOTS_MAX and (client.dropped, hub.dropped) == (500, 500)
    assert list(client.slots)[0] == "event:e500:open" and list(client.slots)[-1] == f"event:e{SLOTS_MAX + 499}:open"

    client.slots.clear()
    hub.publish("status:a", "a is starting")
    hub.publish("removed:a", "a is gone")
    hub.publish("status:a", "a again")
    assert list(client.slots.items()) == [("removed:a", "a is gone"), ("status:a", "a again")]


@pytest.mark.slow
def test_a_client_that_sends_pings_and_reads_nothing_is_closed(monkeypatch):
    """Every ping is answered with a pong: a client that floods pings and reads no answer would
    grow the server's send buffer without bound; over the bound it is closed."""
    from streamrec.serve.guard import GuardedConnection

    monkeypatch.setattr(GuardedConnection, "UNSENT_MAX", 256 * 1024, raising=False)

    async def scenario():
        hub = Hub()
        server = await serving(hub)
        s = await asyncio.to_thread(raw_websocket, server.port)
        try:
            await until(lambda: len(hub.clients) == 1, "the client")
            ping = bytes([0x89, 0x80 | 125]) + b"\0" * 4 + b"p" * 125  # masked, 125 bytes: a pong as large
            sent = 0
            s.setblocking(False)
            while hub.clients and sent < 64 * 1024 * 1024:
                try:
                    sent += s.send(ping * 64)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except OSError:  # closed by the server
                    break
                await asyncio.sleep(0)
            await until(lambda: not hub.clients, "the flooding client to be closed")
            return sent
        finally:
            s.close()
            await server.close()

    assert asyncio.run(scenario()) < 16 * 1024 * 1024
