"""Delivery that one slow or failing receiver cannot hold up: a webhook that answers a byte at a
time is cut off at its timeout, MQTT is delivered while the webhook hangs, each event's
notifications keep their order on every channel after an outage, and ``/healthz``'s reasons
name a channel that fails, hangs or is disconnected for ``degraded_after_seconds``. Real
receivers on loopback (a socket server, ``http.server``, mosquitto); time in the outbox and
in health comes from an injected clock."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import Clock, free_port, wait_until
from servers import Broker, Receiver, Subscriber, accept_each, broker, receiver  # noqa: F401 - fixtures
from streamrec.event_config import MqttConfig, NotifyConfig, WebhookConfig
from streamrec.events.notify import Notifier
from streamrec.events.store import Event, EventStore
from streamrec.retry import Backoff
from streamrec.supervision import Supervisor

SECRET = "s3cret-key"


class DripReceiver:
    """A webhook receiver on a free loopback port that reads each request, then sends its answer
    one byte every ``every_s`` seconds (from ``start``, an offset into the answer) until the
    client hangs up, :attr:`release` is set (then it closes the connection) or ``limit_s`` passed."""

    ANSWER = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 2000 + b"\r\nContent-Length: 2000\r\n\r\n" + b"y" * 2000
    BODY = ANSWER.index(b"\r\n\r\n") + 4

    def __init__(self, start: int = 0, every_s: float = 0.2, limit_s: float = 300.0) -> None:
        self.start, self.every_s, self.limit_s = start, every_s, limit_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.requests: list[bytes] = []
        self.hung_up = threading.Event()  # the client closed a connection before the whole answer
        self.release = threading.Event()
        self.lock = threading.Lock()
        accept_each(self.server, self.answer)

    def answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next((l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")), 0))
            while len(body) < length:
                body += conn.recv(65536)
            with self.lock:
                self.requests.append(body)
            conn.sendall(self.ANSWER[:self.start])
            for i in range(self.start, len(self.ANSWER)):
                if self.release.wait(self.every_s) or (i - self.start) * self.every_s > self.limit_s:
                    return
                try:
                    conn.sendall(self.ANSWER[i:i + 1])
                except OSError:
                    self.hung_up.set()
                    return

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.close()


@pytest.fixture
def drip():
    made: list[DripReceiver] = []

    def make(**kw) -> DripReceiver:
        made.append(DripReceiver(**kw))
        return made[-1]

    yield make
    for d in made:
        d.close()


@pytest.fixture
def notifiers():
    made: list[Notifier] = []

    def make(store: EventStore, config: NotifyConfig, **kw) -> Notifier:
        made.append(Notifier(store, config, supervisor=Supervisor(), **kw))
        return made[-1]

    yield make
    for n in made:
        n.close()


@pytest.fixture
def subscribers():
    made: list[Subscriber] = []

    def make(b: Broker, *topics: str) -> Subscriber:
        made.append(Subscriber(b, *topics))
        return made[-1]

    yield make
    for s in made:
        s.close()


def event(n: int = 1) -> Event:
    return Event(f"e{n}", "lifting", "rack-1", "deadlifting", start_ts=100.0 + n, peak_score=0.8, mean_score=0.7)


def ended(n: int = 1) -> Event:
    return Event(f"e{n}", "lifting", "rack-1", "deadlifting", start_ts=100.0 + n, peak_score=0.8, mean_score=0.7,
                 end_ts=110.0 + n)


def outbox_rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]


def hook(url: str, timeout: float) -> WebhookConfig:
    return WebhookConfig(url, secret=SECRET, timeout=timeout)


def mqtt_url(b: Broker) -> str:
    return f"mqtt://127.0.0.1:{b.port}"


# -- a receiver that drips its answer --------------------------------------------------------------
@pytest.mark.parametrize("start, every_s", [(0, 0.2), (10, 0.2), (30, 0.2), (DripReceiver.BODY - 1, 2.0)],
                         ids=["status line", "in the status line", "headers", "the last header byte"])
@pytest.mark.slow
def test_a_webhook_dripping_its_answer_is_cut_off_at_the_timeout(tmp_path, drip, notifiers, start, every_s):
    rx = drip(start=start, every_s=every_s)
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = notifiers(store, NotifyConfig(webhook=hook(rx.url, timeout=1.0)))
    store.opened(event(), notify=("webhook",))
    notifier.deliver_due()  # the answer would take many minutes: this returns only if the whole request is bounded
    assert rx.count() == 1
    (row,) = outbox_rows(db)
    assert row["delivered"] is None and row["attempts"] == 1
    assert row["error"] == "no complete answer within 1 s (timeout)"
    assert notifier.stats()["channels"]["webhook"]["last_error"] == row["error"]
    wait_until(rx.hung_up.is_set, "the receiver seeing the connection closed", timeout=30)


@pytest.mark.slow
def test_a_webhook_dripping_the_body_of_a_2xx_is_delivered_and_cut_off(tmp_path, drip, notifiers):
    rx = drip(start=DripReceiver.BODY)  # the status and headers at once, then the body a byte at a time
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = notifiers(store, NotifyConfig(webhook=hook(rx.url, timeout=1.0)))
    store.opened(event(), notify=("webhook",))
    notifier.deliver_due()
    (row,) = outbox_rows(db)
    assert row["delivered"] is not None and row["error"] is None  # the 2xx said it
    wait_until(rx.hung_up.is_set, "the receiver seeing the connection closed", timeout=30)


def test_mqtt_is_delivered_while_the_webhook_hangs_and_healthz_names_the_webhook(tmp_path, drip, broker, notifiers,
                                                                                   subscribers):
    rx = drip()
    sub = subscribers(broker, "sr/events")
    clock = Clock()
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    config = NotifyConfig(webhook=hook(rx.url, timeout=120.0), mqtt=MqttConfig(mqtt_url(broker), topic_prefix="sr"),
                          degraded_after_seconds=60.0)
    notifier = notifiers(store, config, clock=clock, poll_s=0.1)
    notifier.start()
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
    store.opened(event(1), notify=("webhook", "mqtt"), now=clock())  # the webhook's row comes first
    notifier.wake()
    wait_until(lambda: rx.count() == 1, "the webhook's request", timeout=30)
    store.closed(ended(1), notify=("webhook", "mqtt"), now=clock())
    store.opened(event(2), notify=("mqtt",), now=clock())
    notifier.wake()
    wait_until(lambda: len(sub.on("sr/events")) == 3, "MQTT's three events while the webhook hangs", timeout=60)
    assert [(json.loads(p)["event"]["id"], json.loads(p)["type"]) for p, _ in sub.on("sr/events")] == [
        ("e1", "event_start"), ("e1", "event_end"), ("e2", "event_start")]
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["delivered"] == 3, "MQTT's deliveries recorded", timeout=30)
    webhook = notifier.stats()["channels"]["webhook"]
    assert webhook["busy_since"] == clock.now and webhook["delivered"] == 0 and rx.count() == 1
    assert not rx.hung_up.is_set()  # the webhook's answer is still dripping
    assert notifier.problems() == []
    clock.now += 59.0
    assert notifier.problems() == []
    clock.now += 1.0
    assert notifier.problems() == [f"notify: webhook: one delivery has been in progress for 60 s (to {rx.url})"]

    rx.release.set()  # the receiver hangs up without a whole answer: a failure, retried
    wait_until(lambda: notifier.stats()["channels"]["webhook"]["failed"] == 1, "the failed delivery", timeout=60)
    assert notifier.stats()["channels"]["webhook"]["busy_since"] is None
    assert notifier.problems() == []  # failing since just now
    error = notifier.stats()["channels"]["webhook"]["last_error"]
    clock.now += 60.0
    assert notifier.problems() == [f"notify: webhook: nothing delivered for 60 s: {error}"]


def test_the_webhook_is_delivered_while_the_broker_hangs_and_healthz_names_mqtt(tmp_path, broker, receiver,
                                                                                notifiers):
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    config = NotifyConfig(webhook=hook(receiver.url, timeout=5.0),
                          mqtt=MqttConfig(mqtt_url(broker), topic_prefix="sr"), degraded_after_seconds=60.0)
    notifier = notifiers(store, config, clock=clock, poll_s=0.1)
    notifier.mqtt.ack_timeout_s = 120.0  # a publish waits this long for the broker's acknowledgement
    notifier.start()
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker hangs: the publish goes out, no PUBACK comes
    try:
        store.opened(event(1), notify=("mqtt", "webhook"), now=clock())  # MQTT's row comes first
        notifier.wake()
        wait_until(lambda: notifier.stats()["channels"]["mqtt"]["busy_since"] is not None, "the publish waiting",
                   timeout=30)
        store.closed(ended(1), notify=("mqtt", "webhook"), now=clock())
        notifier.wake()
        wait_until(lambda: receiver.count() == 2, "the webhook's two notifications while the broker hangs", timeout=60)
        assert [json.loads(r["body"])["type"] for r in receiver.requests] == ["event_start", "event_end"]
        assert notifier.stats()["channels"]["mqtt"]["busy_since"] == clock.now  # still waiting
        clock.now += 60.0
        assert notifier.problems() == [
            f"notify: mqtt: one delivery has been in progress for 60 s (to {mqtt_url(broker)})"]
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    wait_until(lambda: store.outbox_stats() == {"pending": 0, "delivered": 4}, "MQTT's deliveries once the broker "
               "goes on", timeout=60)
    assert notifier.problems() == []


def test_closing_ends_a_webhook_delivery_in_progress(tmp_path, drip):
    rx = drip()
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = Notifier(store, NotifyConfig(webhook=hook(rx.url, timeout=600.0)), supervisor=Supervisor(),
                        join_timeout_s=600.0)
    store.opened(event(), notify=("webhook",))
    notifier.start()
    wait_until(lambda: notifier.stats()["channels"]["webhook"]["busy_since"] is not None and rx.count() == 1,
               "the delivery in progress", timeout=30)
    notifier.close()  # returns once the thread stopped: the answer would drip for minutes
    assert "notifier-webhook" not in {t.name for t in threading.enumerate()}
    (row,) = outbox_rows(db)
    assert row["delivered"] is None and row["error"] == "stopped before the webhook answered (sent again at the next start)"
    wait_until(rx.hung_up.is_set, "the receiver seeing the connection closed", timeout=30)


# -- receivers that misbehave in other ways --------------------------------------------------------
def serve_with(handler) -> int:
    """A loopback server handing each connection to ``handler`` in a thread of its own; its port."""
    server = socket.create_server(("127.0.0.1", 0))
    accept_each(server, handler)
    return server.getsockname()[1]


def answering(*parts: bytes, every_s: float = 0.0, forever: bytes = b""):
    """A handler that reads the request, sends ``parts`` (one every ``every_s`` seconds), then
    ``forever`` again and again until the client hangs up."""
    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for part in parts:
                    conn.sendall(part)
                    threading.Event().wait(every_s)
                while forever:
                    conn.sendall(forever)
                    threading.Event().wait(every_s)
            except OSError:
                pass
    return handle


def silent(conn: socket.socket) -> None:
    threading.Event().wait(120)  # accepts the connection, never reads nor answers
    conn.close()


def tls_drip(conn: socket.socket) -> None:
    answering(*(bytes([b]) for b in b"\x16\x03\x03\x00\x40" + bytes(64)), every_s=0.3)(conn)


CHUNK = b"400\r\n" + b"x" * 1024 + b"\r\n"
TIMED_OUT = "no complete answer within 1 s (timeout)"


@pytest.mark.slow
@pytest.mark.parametrize("answer", [b"HTTP/1.1 100 Continue\r\n\r\n", b"H"], ids=["endless 100 Continue", "a byte a time"])
def test_an_https_webhook_trickling_its_answer_after_the_handshake_is_cut_off_at_the_timeout(tmp_path, notifiers,
                                                                                            answer):
    """The deadline holds under TLS too: the handshake done, an answer that never ends (or ends one
    byte every 50 ms) is cut at the timeout, as over plain HTTP."""
    import ssl
    import shutil

    from test_notify import make_certificates

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed (apt-get install -y openssl): a real HTTPS receiver")
    ca, cert, key = make_certificates(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trickle = answering(forever=answer, every_s=0.05)
    port = serve_with(lambda conn: trickle(server_tls.wrap_socket(conn, server_side=True)))
    store = EventStore(str(tmp_path / "h.db"))
    config = WebhookConfig(f"https://127.0.0.1:{port}/hook", secret=SECRET, timeout=1.0, ca_file=str(ca))
    notifier = notifiers(store, NotifyConfig(webhook=config))
    store.opened(event(), notify=("webhook",))
    began = time.monotonic()
    notifier.deliver_due()
    assert time.monotonic() - began < 5.0
    (row,) = outbox_rows(tmp_path / "h.db")
    assert row["error"] == TIMED_OUT and row["delivered"] is None


@pytest.mark.parametrize("handler, scheme, expected", [
    (silent, "http", TIMED_OUT),
    (tls_drip, "https", TIMED_OUT),
    (answering(forever=b"HTTP/1.1 100 Continue\r\n\r\n", every_s=0.05), "http", TIMED_OUT),
    (answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", forever=CHUNK), "http", None),
    (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", forever=b"x" * 65536), "http", None),
    (answering(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n", forever=CHUNK), "http", "HTTP 500 Oops"),
    (answering(b"HTTP/1.1 200 OK\r\n", forever=b"X-Pad: " + b"y" * 60000 + b"\r\n"), "http",
     "cannot reach the webhook: got more than 100 headers"),
], ids=["never answers", "TLS handshake a byte at a time", "endless 100 Continue", "endless chunked 2xx",
        "huge 2xx body", "endless chunked 500", "endless headers"])
@pytest.mark.slow
def test_a_misbehaving_webhook_ends_its_delivery_within_the_timeout(tmp_path, notifiers, handler, scheme, expected):
    url = f"{scheme}://127.0.0.1:{serve_with(handler)}/hook"
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook(url, timeout=1.0)))
    store.opened(event(), notify=("webhook",))
    began = time.monotonic()
    notifier.deliver_due()
    assert time.monotonic() - began < 5.0
    (row,) = outbox_rows(tmp_path / "h.db")
    assert row["error"] == expected and (row["delivered"] is None) == (expected is not None)


@pytest.mark.parametrize("answer, expected", [
    (b"HTTP/1.1 500 " + b"x" * 60000 + b"\r\nContent-Length: 0\r\n\r\n", "HTTP 500 " + "x" * 291 + "... (60,009 characters)"),
    (b"HTTP/1.1 302 Found\r\nLocation: http://a/" + b"y" * 60000 + b"\r\nContent-Length: 0\r\n\r\n",
     "HTTP 302 redirect to http://a/" + "y" * 291 + "... (60,009 characters) not followed: the webhook must answer 2xx "
     "itself"),
], ids=["reason", "location"])
def test_a_webhooks_long_words_are_cut_in_the_error_it_leaves(tmp_path, notifiers, answer, expected):
    """The status line and a header may each be 64 KiB: kept whole, one failing delivery would put
    60,000 characters in every log line, outbox row and /healthz answer that names its error."""
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook(f"http://127.0.0.1:{serve_with(answering(answer))}/hook",
                                                                        timeout=5.0)))
    store.opened(event(), notify=("webhook",))
    notifier.deliver_due()
    (row,) = outbox_rows(tmp_path / "h.db")
    assert row["error"] == expected and row["delivered"] is None
    assert notifier.stats()["channels"]["webhook"]["last_error"] == expected


@pytest.mark.parametrize("target", ["drip", "itself"])
def test_a_webhook_redirecting_elsewhere_or_to_itself_is_not_followed(tmp_path, drip, receiver, notifiers, target):
    rx = drip()
    receiver.redirect = rx.url if target == "drip" else receiver.url
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook(receiver.url, timeout=1.0)))
    store.opened(event(), notify=("webhook",))
    notifier.deliver_due()
    (row,) = outbox_rows(tmp_path / "h.db")
    assert row["error"] == (f"HTTP 302 redirect to {receiver.redirect} not followed: the webhook must answer 2xx itself")
    assert receiver.count() == 1 and rx.count() == 0


@pytest.mark.slow
def test_a_webhook_name_that_resolves_slowly_is_cut_off_at_the_timeout(tmp_path, notifiers, monkeypatch):
    looked_up = threading.Event()
    real = socket.getaddrinfo

    def slow(host, *args, **kw):
        if host != "slow.example":
            return real(host, *args, **kw)
        looked_up.set()
        threading.Event().wait(30)  # a resolver that takes its time
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook("http://slow.example/hook", timeout=1.0)))
    store.opened(event(), notify=("webhook",))
    began = time.monotonic()
    notifier.deliver_due()
    assert looked_up.is_set() and time.monotonic() - began < 5.0
    assert outbox_rows(tmp_path / "h.db")[0]["error"] == TIMED_OUT


def test_an_international_webhook_host_is_sent_as_idna(tmp_path, notifiers):
    heads: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        with conn:
            heads.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    port = serve_with(answer)
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook(f"http://ｌｏｃａｌｈｏｓｔ:{port}/hook", timeout=5.0)))
    store.opened(event(), notify=("webhook",))
    notifier.deliver_due()
    assert store.outbox_stats() == {"pending": 0, "delivered": 1}
    assert f"\r\nHost: localhost:{port}\r\n".encode() in heads[0]


@pytest.mark.slow
def test_healthz_names_a_broker_that_accepts_the_connection_but_never_answers(notifiers):
    clock = Clock()
    port = serve_with(silent)
    notifier = notifiers(EventStore(":memory:"), NotifyConfig(mqtt=MqttConfig(f"mqtt://127.0.0.1:{port}"),
                                                              degraded_after_seconds=60.0), clock=clock)
    notifier.mqtt.keepalive_s = 1
    notifier.start()
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["last_error"], "the broker's silence noticed", timeout=30)
    clock.now += 60.0
    (reason,) = notifier.problems()
    assert reason.startswith(f"notify: mqtt: not connected for 60 s: the broker at mqtt://127.0.0.1:{port} accepted "
                             "the connection but did not answer it (no CONNACK within 1 s"), reason


# -- failing and recovering channels in /healthz ----------------------------------------------------
def test_healthz_names_a_failing_webhook_until_it_delivers_again(tmp_path, receiver, notifiers):
    receiver.fail = 1
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook(receiver.url, timeout=5.0), degraded_after_seconds=90.0),
                         clock=clock, backoff=Backoff(1.0, 300.0, jitter=0.0))
    store.opened(event(), notify=("webhook",), now=clock())
    notifier.deliver_due()
    clock.now += 89.0
    assert notifier.problems() == []
    clock.now += 1.0
    assert notifier.problems() == ["notify: webhook: nothing delivered for 90 s: HTTP 500 Internal Server Error"]
    notifier.deliver_due()
    assert store.outbox_stats() == {"pending": 0, "delivered": 1} and notifier.problems() == []


def test_healthz_names_a_webhook_whose_notifications_all_expired_no_longer(tmp_path, receiver, notifiers):
    receiver.fail = 100
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=hook(receiver.url, timeout=5.0), degraded_after_seconds=60.0),
                         clock=clock, max_age_s=100.0)
    store.opened(event(), notify=("webhook",), now=clock())
    notifier.deliver_due()
    clock.now += 60.0
    assert len(notifier.problems()) == 1
    clock.now += 50.0
    notifier.deliver_due()  # given up: nothing is left to deliver, so nothing is failing
    assert store.outbox_stats() == {"pending": 0, "delivered": 0} and notifier.problems() == []


@pytest.mark.slow
def test_healthz_names_a_broker_that_stays_down(notifiers):
    clock = Clock()
    port = free_port()  # nothing listens there
    notifier = notifiers(EventStore(":memory:"), NotifyConfig(mqtt=MqttConfig(f"mqtt://127.0.0.1:{port}"),
                                                              degraded_after_seconds=120.0), clock=clock)
    notifier.start()
    error = wait_until(lambda: notifier.stats()["channels"]["mqtt"]["last_error"], "the refused connection", timeout=30)
    clock.now += 119.0
    assert notifier.problems() == []
    clock.now += 1.0
    assert notifier.problems() == [f"notify: mqtt: not connected for 120 s: {error}"]
    assert "Connection refused" in error


# -- order per event and channel -------------------------------------------------------------------
def test_a_webhook_that_fails_then_recovers_gets_each_events_notifications_in_order(tmp_path, receiver, notifiers):
    receiver.fail = 1
    clock = Clock()
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = notifiers(store, NotifyConfig(webhook=hook(receiver.url, timeout=5.0)), clock=clock, backoff=Backoff(10.0, 300.0, jitter=0.0))
    store.opened(event(1), notify=("webhook",), now=clock())
    notifier.deliver_due()  # 500: e1's start backs off for 10 s
    clock.now += 1.0
    store.closed(ended(1), notify=("webhook",), now=clock())  # due now, but its start is not delivered
    store.opened(event(2), notify=("webhook",), now=clock())  # another event does not wait for e1
    notifier.deliver_due()
    sent = lambda: [(json.loads(r["body"])["event"]["id"], json.loads(r["body"])["type"]) for r in receiver.requests]
    assert sent() == [("e1", "event_start"), ("e2", "event_start")]
    end = next(r for r in outbox_rows(db) if r["kind"] == "event_end")
    assert end["attempts"] == 0 and end["delivered"] is None
    clock.now += 10.0
    notifier.deliver_due()
    assert sent() == [("e1", "event_start"), ("e2", "event_start"), ("e1", "event_start"), ("e1", "event_end")]
    assert store.outbox_stats() == {"pending": 0, "delivered": 3}


@pytest.mark.slow
def test_after_a_broker_outage_an_events_end_follows_its_start(tmp_path, broker, notifiers, subscribers):
    clock = Clock()
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = notifiers(store, NotifyConfig(mqtt=MqttConfig(mqtt_url(broker), topic_prefix="sr")), clock=clock,
                         backoff=Backoff(5.0, 300.0, jitter=0.0))
    notifier.mqtt.start()  # the connection only: passes are made here, one at a time
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
    broker.stop()
    wait_until(lambda: not notifier.stats()["channels"]["mqtt"]["connected"], "the lost connection", timeout=30)
    store.opened(event(1), notify=("mqtt",), now=clock())
    notifier.deliver_due()  # not connected: e1's start backs off for 5 s
    assert store.outbox_stats() == {"pending": 1, "delivered": 0}

    broker.start()
    sub = subscribers(broker, "sr/events")
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the reconnection", timeout=60)
    clock.now += 1.0
    store.closed(ended(1), notify=("mqtt",), now=clock())  # due now, its start is not
    notifier.deliver_due()  # a publish is over when the broker acknowledged it: nothing was sent
    assert [(r["kind"], r["attempts"], r["delivered"]) for r in outbox_rows(db)] == [
        ("event_start", 1, None), ("event_end", 0, None)]
    clock.now += 5.0
    notifier.deliver_due()
    assert store.outbox_stats() == {"pending": 0, "delivered": 2}
    wait_until(lambda: len(sub.on("sr/events")) == 2, "both notifications", timeout=30)
    assert [json.loads(p)["type"] for p, _ in sub.on("sr/events")] == ["event_start", "event_end"]


@pytest.mark.slow
def test_after_a_restart_during_an_outage_each_events_end_follows_its_start_on_both_channels(
        tmp_path, receiver, broker, notifiers, subscribers):
    clock = Clock()
    db = tmp_path / "h.db"
    config = NotifyConfig(webhook=hook(receiver.url, timeout=5.0), mqtt=MqttConfig(mqtt_url(broker), topic_prefix="sr"))
    broker.stop()
    receiver.fail = 2
    store = EventStore(str(db))
    first = notifiers(store, config, clock=clock, backoff=Backoff(5.0, 300.0, jitter=0.0))
    first.mqtt.start()
    for n in (1, 2):
        store.opened(event(n), notify=("webhook", "mqtt"), now=clock())
    first.deliver_due()  # e1's start fails on both channels
    clock.now += 1.0
    store.closed(ended(2), notify=("webhook", "mqtt"), now=clock())
    first.deliver_due()  # e2's start fails too; its end waits for it
    first.close()  # the process stops with everything undelivered, e1 still open
    store.close()
    assert [r["delivered"] for r in outbox_rows(db)] == [None] * 6

    broker.start()
    sub = subscribers(broker, "sr/events")
    second_store = EventStore(str(db))
    clock.now += 1.0
    assert [ev.id for ev in second_store.recover({"lifting": ("mqtt", "webhook")}, now=clock())] == ["e1"]
    second = notifiers(second_store, config, clock=clock, backoff=Backoff(5.0, 300.0, jitter=0.0))
    second.mqtt.start()
    wait_until(lambda: second.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=60)
    clock.now += 10.0
    second.deliver_due()
    assert second.store.outbox_stats() == {"pending": 0, "delivered": 8}
    wait_until(lambda: len(sub.on("sr/events")) == 4, "MQTT's four notifications", timeout=30)
    hooked = [json.loads(r["body"]) for r in receiver.requests][2:]  # after the two failed tries
    published = [json.loads(p) for p, _ in sub.on("sr/events")]
    for sent in (hooked, published):
        for n in ("e1", "e2"):
            assert [m["type"] for m in sent if m["event"]["id"] == n] == ["event_start", "event_end"], sent


def test_an_events_end_is_given_up_with_its_start_never_sent_alone(tmp_path, receiver, notifiers):
    receiver.fail = 1
    clock = Clock()
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = notifiers(store, NotifyConfig(webhook=hook(receiver.url, timeout=5.0)), clock=clock, backoff=Backoff(60.0, 300.0, jitter=0.0),
                         max_age_s=100.0)
    store.opened(event(1), notify=("webhook",), now=clock())
    notifier.deliver_due()  # 500: the start backs off
    clock.now += 90.0
    store.closed(ended(1), notify=("webhook",), now=clock())
    store.opened(event(2), notify=("webhook",), now=clock())
    clock.now += 20.0  # the start is too old now; its end is not, yet it goes with it
    notifier.deliver_due()
    assert [(json.loads(r["body"])["event"]["id"], json.loads(r["body"])["type"]) for r in receiver.requests] == [
        ("e1", "event_start"), ("e2", "event_start")]
    assert notifier.stats()["expired"] == 2 and store.outbox_stats() == {"pending": 0, "delivered": 1}


def test_an_event_left_open_ends_only_on_the_channels_told_of_its_start(tmp_path):
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    store.opened(event(1), notify=("webhook",))  # the rule told the webhook only
    store.close()
    store = EventStore(str(db))  # the next start: the rule now notifies MQTT too
    store.recover({"lifting": ("webhook", "mqtt")})
    assert [(r["kind"], r["channel"]) for r in outbox_rows(db)] == [("event_start", "webhook"), ("event_end", "webhook")]


# -- through serve's /healthz ----------------------------------------------------------------------
def always_b(path: Path) -> str:
    """A tiny3d checkpoint whose head always answers "b": a deterministic model."""
    import torch

    from streamrec.models.registry import build_model, make_checkpoint, model_spec

    module = build_model("tiny3d", num_classes=3)
    with torch.no_grad():
        module.fc.weight.zero_()
        module.fc.bias.copy_(torch.tensor([0.0, 12.0, 0.0]))
    torch.save(make_checkpoint(module, model="tiny3d", classes=["a", "b", "c"], spec=model_spec("tiny3d")), path)
    return str(path)


@pytest.mark.slow
def test_serve_healthz_is_degraded_naming_a_channel_that_stays_down(tmp_path):
    import subprocess
    import urllib.request

    from conftest import sigterm, streamrec_cmd, wait_http, write_video

    dead = free_port()  # no broker there
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'source = "{write_video(tmp_path / "v.mp4", seconds=2)}"\nloop = true\ncamera = "gate"\n'
                   f'db = "{tmp_path / "h.db"}"\n[[rules]]\nname = "bees"\nlabels = ["b"]\nnotify = ["mqtt"]\n'
                   f'[recording]\nenabled = false\n[notify]\ndegraded_after_seconds = 0.001\n'
                   f'[notify.mqtt]\nurl = "mqtt://127.0.0.1:{dead}"\n')
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--weights", always_b(tmp_path / "b.pt"),
                                          "--port", str(port), "--device", "cpu", "--token", "t0k3n"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)

        def health() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?token=t0k3n", timeout=10) as r:
                return json.loads(r.read())

        reasons = wait_until(lambda: [r for r in health().get("reasons", []) if r.startswith("notify:")], "the reason",
                             timeout=120)
        assert reasons[0].startswith("notify: mqtt: not connected for ")
        assert reasons[0].endswith(f"cannot connect to the broker at mqtt://127.0.0.1:{dead}: Connection refused; "
                                   "retrying")
        assert health()["status"] == "degraded"
    finally:
        sigterm(proc)
