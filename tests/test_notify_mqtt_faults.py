"""MQTT against brokers that misbehave: one that refuses a message too large for it, one that
drops the connection at every publish, and a connection lost between our last look and a publish.

* a notification the broker never acknowledges, once given up (``max_age_s``), leaves with paho's
  queue (a new client): the next events go out, where paho sent it again at every reconnect and
  the broker dropped every connection;
* a connection that never lasts is an outage in ``/healthz`` (each brief connection reset it);
* availability and discovery are not published again at each reconnect while paho still resends
  the last ones (its queue grew by a copy each connection);
* a publish paho queued as the connection went is waited for, never published a second time.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import Clock, wait_until
from servers import Broker, Subscriber, accept_each, broker  # noqa: F401 - fixtures
from streamrec.event_config import MqttConfig, NotifyConfig
from streamrec.events.notify import Notifier
from streamrec.events.store import Event, EventStore
from streamrec.retry import Backoff
from streamrec.supervision import Supervisor

pytestmark = pytest.mark.slow  # a broker and reconnects: seconds each


@pytest.fixture
def made():
    """Notifiers and subscribers, closed after the test."""
    things: list = []
    yield things
    for thing in things:
        thing.close()


def event(n: int, label: str = "deadlifting") -> Event:
    return Event(f"e{n}", "lifting", "rack-1", label, start_ts=100.0 + n, peak_score=0.8, mean_score=0.7)


def test_a_notification_the_broker_refuses_is_given_up_with_pahos_queue(tmp_path, made):
    big = Broker(tmp_path)
    big.write_conf("allow_anonymous true", "max_packet_size 1000")  # an event of a 2,000-character label is refused
    big.start()
    try:
        clock, store = Clock(), EventStore(":memory:")
        notifier = Notifier(store, NotifyConfig(mqtt=MqttConfig(f"mqtt://127.0.0.1:{big.port}", topic_prefix="sr")),
                            supervisor=Supervisor(), clock=clock, max_age_s=300.0, backoff=Backoff(1.0, 1.0, jitter=0.0))
        made.append(notifier)
        sub = Subscriber(big, "sr/events")
        made.append(sub)
        notifier.mqtt.ack_timeout_s = 1.0
        notifier.mqtt.start()
        wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
        store.opened(event(1, "x" * 2000), notify=("mqtt",), now=clock())
        notifier.deliver_due()  # never acknowledged: the broker drops the connection instead
        clock.now += 301.0
        store.opened(event(2), notify=("mqtt",), now=clock())
        delivered = False
        deadline = time.monotonic() + 60
        while not delivered and time.monotonic() < deadline:
            clock.now += 1.0  # each pass: e2's backoff is up (it has 300 of them before it is given up too)
            notifier.deliver_due()  # the first pass gives e1 up
            time.sleep(0.1)
            delivered = store.outbox_stats()["delivered"] == 1
        assert delivered and notifier.stats()["expired"] == 1
        wait_until(lambda: sub.on("sr/events"), "e2 at the subscriber", timeout=30)
        assert [json.loads(p)["event"]["id"] for p, _ in sub.on("sr/events")] == ["e2"]
    finally:
        big.stop()


def read_for(conn: socket.socket, seconds: float) -> bytes:
    conn.settimeout(0.05)
    data, end = b"", time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    return data


def publishes(data: bytes) -> int:
    """The PUBLISH packets in ``data`` (MQTT's fixed header: type, then the remaining length)."""
    n, i = 0, 0
    while i < len(data):
        kind, length, shift, i = data[i] >> 4, 0, 0, i + 1
        while i < len(data):
            length |= (data[i] & 0x7F) << shift
            shift, i = shift + 7, i + 1
            if not data[i - 1] & 0x80:
                break
        n += kind == 3
        i += length
    return n


class DroppingBroker:
    """Answers each connection (CONNACK), reads for a moment, then drops it without a PUBACK: a
    broker that disconnects a client at its first publish. Counts the publishes of each connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.counts: list[int] = []
        accept_each(self.server, self.answer, threads=False)

    def answer(self, conn: socket.socket) -> None:
        with conn:
            first = read_for(conn, 0.2)  # CONNECT
            if first:
                conn.sendall(b"\x20\x02\x00\x00")
                self.counts.append(publishes(read_for(conn, 0.3)))

    def close(self) -> None:
        self.server.close()


def test_a_broker_that_drops_every_connection_is_an_outage_and_the_announcements_do_not_pile_up(made):
    fake = DroppingBroker()
    made.append(fake)
    mqtt = MqttConfig(f"mqtt://127.0.0.1:{fake.port}", topic_prefix="sr", homeassistant_discovery=True)
    notifier = Notifier(EventStore(":memory:"), NotifyConfig(mqtt=mqtt, degraded_after_seconds=3.0),
                        supervisor=Supervisor())
    made.append(notifier)
    notifier.mqtt.reconnect_max_s = 1.0
    notifier.mqtt.discover(["gym", "pool", "dock", "gym/rack", "gym/mat"])
    notifier.mqtt.start()
    wait_until(lambda: len(fake.counts) >= 6, "six connections", timeout=60)
    problems = []
    deadline = time.monotonic() + 20
    while not problems and time.monotonic() < deadline:
        problems = notifier.problems()
        time.sleep(0.05)
    assert problems and problems[0].startswith("notify: mqtt: not connected for "), problems
    counts = fake.counts[:6]
    assert counts[0] == 6  # online and five sensors
    assert max(counts) <= 6, counts  # never a second copy of each per connection (18, 24, 30... before)
