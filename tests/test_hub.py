"""The hub's per-client mailboxes: a stalled client never slows the others or grows a queue."""

import asyncio

from websockets.exceptions import ConnectionClosedOK

from streamrec.serve.server import Hub


class FakeWS:
    """Stands in for a websocket connection: records sends; can stall forever."""

    def __init__(self, stalled: bool = False) -> None:
        self.stalled = stalled
        self.sent: list = []
        self.closed = asyncio.Event()

    async def send(self, payload):
        if self.stalled:
            await asyncio.Event().wait()  # a browser that never reads
        self.sent.append(payload)

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.closed.wait()
        raise StopAsyncIteration


def test_stalled_client_keeps_one_message_and_others_get_all():
    async def scenario():
        hub = Hub()
        fast, slow = FakeWS(), FakeWS(stalled=True)
        key = "prediction:court-1"
        tasks = [asyncio.create_task(hub.serve_client(ws)) for ws in (fast, slow)]
        await asyncio.sleep(0)
        for i in range(100):
            hub.publish(key, f"p{i}")
            await asyncio.sleep(0)  # let the fast client's task run
        await asyncio.sleep(0.01)
        slow_client = next(c for c in hub.clients if c.ws is slow)
        fast_client = next(c for c in hub.clients if c.ws is fast)
        result = (list(fast.sent), dict(slow_client.slots), slow_client.dropped, fast_client.dropped)
        for t in tasks:
            t.cancel()
        return result

    fast_sent, slow_slots, slow_dropped, fast_dropped = asyncio.run(scenario())
    assert fast_sent == [f"p{i}" for i in range(100)]
    assert fast_dropped == 0
    # the stalled client is blocked sending p0; only the newest message waits for it
    assert slow_slots == {"prediction:court-1": "p99"}
    assert slow_dropped == 98


def test_new_client_gets_last_status_and_prediction_first():
    async def scenario():
        hub = Hub()
        hub.publish("prediction:a", "p1")
        hub.publish("status:a", "s1")
        hub.publish("frame:a", b"jpeg")
        ws = FakeWS()
        task = asyncio.create_task(hub.serve_client(ws))
        await asyncio.sleep(0.01)
        task.cancel()
        return ws.sent

    assert asyncio.run(scenario()) == ["s1", "p1"]


def test_client_is_forgotten_when_it_disconnects():
    class Closing(FakeWS):
        async def send(self, payload):
            raise ConnectionClosedOK(None, None)

    async def scenario():
        hub = Hub()
        task = asyncio.create_task(hub.serve_client(Closing()))
        await asyncio.sleep(0)
        hub.publish("prediction:a", "p")
        await asyncio.wait_for(task, 1)
        return len(hub.clients)

    assert asyncio.run(scenario()) == 0


def test_client_that_closes_is_forgotten_without_waiting_for_a_message():
    async def scenario():
        hub = Hub()
        ws = FakeWS()
        task = asyncio.create_task(hub.serve_client(ws))
        await asyncio.sleep(0)
        assert len(hub.clients) == 1
        ws.closed.set()  # the browser goes away; nothing is published after it
        await asyncio.wait_for(task, 1)
        return len(hub.clients), ws.sent

    assert asyncio.run(scenario()) == (0, [])


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
