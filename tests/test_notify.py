"""Notifications leave the outbox for real receivers on loopback: a webhook receiver
(``http.server`` in a thread) and Debian's ``mosquitto`` broker started by the test, read by a
paho subscriber. Waits are polls with deadlines; a negative check follows something that proves
the thing checked for would have happened by then."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from conftest import ROOT, Clock, free_port, wait_until
from servers import MOSQUITTO, Broker, Receiver, Subscriber, broker, receiver  # noqa: F401 - fixtures
from streamrec.event_config import MqttConfig, NotifyConfig, WebhookConfig
from streamrec.events.notify import Notifier
from streamrec.events.webhook import signature
from streamrec.events.store import Event, EventStore
from streamrec.retry import Backoff
from streamrec.supervision import Supervisor

SECRET = "s3cret-key"


@pytest.fixture
def subscribers():
    made: list[Subscriber] = []

    def make(broker: Broker, *topics: str) -> Subscriber:
        made.append(Subscriber(broker, *topics))
        return made[-1]

    yield make
    for s in made:
        s.close()


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def notifiers():
    made: list[Notifier] = []

    def make(store: EventStore, config: NotifyConfig, **kw) -> Notifier:
        made.append(Notifier(store, config, supervisor=Supervisor(), **kw))
        return made[-1]

    yield make
    for n in made:
        n.close()


def event(n: int = 1, camera: str = "rack-1") -> Event:
    return Event(f"e{n}", "lifting", camera, "deadlifting", start_ts=100.0 + n, peak_score=0.8, mean_score=0.7)


def outbox_rows(db: Path) -> list[dict]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]


def webhook(url: str, secret: str | None = SECRET) -> NotifyConfig:
    return NotifyConfig(webhook=WebhookConfig(url, secret=secret, sign=secret is not None, timeout=5.0))


def mqtt(broker: Broker, **kw) -> NotifyConfig:
    return NotifyConfig(mqtt=MqttConfig(f"mqtt://127.0.0.1:{broker.port}", topic_prefix="sr", **kw))


# -- webhook --------------------------------------------------------------------------------------
def test_webhook_delivers_a_signed_post(tmp_path, receiver, notifiers):
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, webhook(receiver.url))
    notifier.start()
    store.opened(event(), notify=("webhook",))
    notifier.wake()
    wait_until(lambda: store.outbox_stats()["delivered"] == 1, "the delivery", timeout=30)
    (req,) = receiver.requests
    body, headers = req["body"], req["headers"]
    assert req["path"] == "/hook"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Streamrec-Event"] == "event_start"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Streamrec-Signature"], expected)
    payload = json.loads(body)
    assert payload["type"] == "event_start" and payload["event"]["id"] == "e1"
    assert payload["event"]["camera"] == "rack-1" and payload["event"]["state"] == "open"
    stats = notifier.stats()
    assert stats["pending"] == 0
    assert stats["channels"]["webhook"]["delivered"] == 1 and stats["channels"]["webhook"]["failed"] == 0


def test_an_event_deleted_while_its_batch_is_delivered_is_not_sent(tmp_path, notifiers):
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, webhook("http://127.0.0.1:9/hook"))
    for n in (1, 2):
        store.opened(event(n), notify=("webhook",))
    sent = []

    def send(note):  # the first delivery is slow: the second event is deleted meanwhile
        sent.append(note.event_id)
        store.delete("e2")

    notifier.send = send
    notifier.deliver_due("webhook")
    assert sent == ["e1"] and [r["event_id"] for r in outbox_rows(tmp_path / "h.db")] == ["e1"]


def test_a_notification_whose_event_is_gone_is_dropped_not_read_again(tmp_path, notifiers):
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, webhook("http://127.0.0.1:9/hook"))
    # a notification of an event no longer in the table (a delete racing the rule's close)
    store.opened(Event("e9", "r", "c", "l", 1.0, 0.5, 0.5), notify=("webhook",))
    with closing(sqlite3.connect(tmp_path / "h.db")) as conn, conn:
        conn.execute("DELETE FROM events WHERE id = 'e9'")
    assert [r["event_id"] for r in outbox_rows(tmp_path / "h.db")] == ["e9"]
    sent = []
    notifier.send = lambda note: sent.append(note.id)
    assert notifier.deliver_due("webhook") is False  # one pass ends (it spun on the row before)
    assert sent == [] and outbox_rows(tmp_path / "h.db") == []


def test_webhook_with_sign_false_sends_no_signature(tmp_path, receiver, notifiers):
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, webhook(receiver.url, secret=None))
    store.opened(Event("e9", "r", "c", "l", 1.0, 0.5, 0.5), notify=("webhook",))
    store.closed(Event("e9", "r", "c", "l", 1.0, 0.5, 0.5, end_ts=2.0), notify=("webhook",))
    notifier.deliver_due()
    assert [r["headers"]["X-Streamrec-Event"] for r in receiver.requests] == ["event_start", "event_end"]
    assert not any("X-Streamrec-Signature" in r["headers"] for r in receiver.requests)


def test_webhook_answering_500_twice_is_delivered_on_the_third_try(tmp_path, receiver, notifiers):
    receiver.fail = 2
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    notifier = notifiers(store, webhook(receiver.url), backoff=Backoff(0.05, 0.2, jitter=0.0), poll_s=0.05)
    notifier.start()
    store.opened(event(), notify=("webhook",))
    notifier.wake()
    wait_until(lambda: store.outbox_stats()["delivered"] == 1, "the third try", timeout=30)
    assert receiver.count() == 3
    assert len({r["body"] for r in receiver.requests}) == 1  # the same body each time
    (row,) = outbox_rows(db)
    assert row["attempts"] == 3 and row["error"] is None
    channel = notifier.stats()["channels"]["webhook"]
    assert channel["delivered"] == 1 and channel["failed"] == 2 and channel["last_error"] is None


def test_backoff_doubles_up_to_its_cap(tmp_path, receiver, notifiers):
    receiver.fail = 100
    db = tmp_path / "h.db"
    clock = Clock()
    store = EventStore(str(db))
    notifier = notifiers(store, webhook(receiver.url), clock=clock, backoff=Backoff(1.0, 5.0, jitter=0.0))
    store.opened(event(), notify=("webhook",), now=clock())
    start = clock.now
    tries = []
    for _ in range(60):  # 0.5 s steps over 30 s: a try whenever one is due, and only then
        notifier.deliver_due()
        tries.append(receiver.count())
        clock.now += 0.5
    first = [i * 0.5 for i in range(1, len(tries)) if tries[i] > tries[i - 1]]
    assert first[:5] == [1.0, 3.0, 7.0, 12.0, 17.0]  # waits of 1, 2, 4, then 5 (the cap), 5...
    (row,) = outbox_rows(db)
    assert row["error"] == "HTTP 500 Internal Server Error" and row["next_try"] == start + first[-1] + 5.0
    assert notifier.stats()["channels"]["webhook"]["failed"] == receiver.count()


def test_the_default_backoff_is_jittered_so_channels_that_failed_together_do_not_retry_together(tmp_path, receiver,
                                                                                                  notifiers):
    receiver.fail = 100
    clock = Clock()
    waits = []
    for n in range(8):  # eight processes whose webhook failed in the same instant
        db = tmp_path / f"h{n}.db"
        store = EventStore(str(db))
        notifier = notifiers(store, webhook(receiver.url), clock=clock)
        store.opened(event(), notify=("webhook",), now=clock())
        notifier.deliver_due()
        (row,) = outbox_rows(db)
        waits.append(row["next_try"] - clock.now)
    assert all(0.5 <= w <= 1.0 for w in waits), waits  # DELIVERY_BACKOFF: 1 s, shortened by up to half
    assert len(set(waits)) == len(waits)


@pytest.mark.parametrize("where", ["another port", "the same host"])
@pytest.mark.slow
def test_a_redirect_is_not_followed(tmp_path, receiver, notifiers, where):
    other = Receiver()
    try:
        receiver.redirect = other.url if where == "another port" else receiver.url + "/moved"
        db = tmp_path / "h.db"
        store = EventStore(str(db))
        notifier = notifiers(store, webhook(receiver.url))
        store.opened(event(), notify=("webhook",))
        notifier.deliver_due()  # synchronous: the request and any redirect are over when it returns
        assert receiver.count() == 1 and other.count() == 0
        (row,) = outbox_rows(db)
        assert row["delivered"] is None and row["attempts"] == 1
        assert row["error"].startswith(f"HTTP 302 redirect to {receiver.redirect} not followed")
        assert notifier.stats()["channels"]["webhook"]["last_error"] == row["error"]
    finally:
        other.close()


def test_an_unreachable_webhook_fails_without_showing_its_password(tmp_path, notifiers, caplog):
    port = free_port()  # nothing listens there
    store = EventStore(":memory:")
    notifier = notifiers(store, webhook(f"http://bot:hunter2@127.0.0.1:{port}/hook"))
    store.opened(event(), notify=("webhook",))
    with caplog.at_level(logging.WARNING, logger="streamrec.events"):
        notifier.deliver_due()
    error = notifier.stats()["channels"]["webhook"]["last_error"]
    assert "cannot reach the webhook" in error
    assert "hunter2" not in error and "hunter2" not in caplog.text and "not delivered" in caplog.text


# -- the outbox over time ---------------------------------------------------------------------------
def test_notifications_expire_after_max_age_logged_once(tmp_path, receiver, notifiers, caplog):
    receiver.fail = 100
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, webhook(receiver.url), clock=clock, max_age_s=60.0, backoff=Backoff(1.0, 300.0, jitter=0.0))
    store.opened(event(), notify=("webhook",), now=clock())
    notifier.deliver_due()
    clock.now += 59.0
    notifier.deliver_due()
    assert store.outbox_stats()["pending"] == 1 and receiver.count() == 2
    with caplog.at_level(logging.WARNING, logger="streamrec.events.notify"):
        clock.now += 2.0
        notifier.deliver_due()
        clock.now += 100.0
        notifier.deliver_due()
    assert store.outbox_stats() == {"pending": 0, "delivered": 0}
    assert receiver.count() == 2  # never tried once too old
    assert notifier.stats()["expired"] == 1
    assert [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()] == [
        "gave up on 1 notification(s) not delivered within 60 s (max_age_s)"]


def test_an_event_whose_start_was_given_up_never_sends_its_end_alone(tmp_path, receiver, notifiers):
    receiver.fail = 100
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, webhook(receiver.url), clock=clock, max_age_s=60.0, backoff=Backoff(1.0, 300.0, jitter=0.0))
    lasting, later = event(1), event(2)
    store.opened(lasting, notify=("webhook",), now=clock())
    notifier.deliver_due()
    clock.now += 61.0
    notifier.deliver_due()  # the start is given up while the event is still open
    assert notifier.stats()["expired"] == 1 and receiver.count() == 1
    store.opened(later, notify=("webhook",), now=clock())
    receiver.fail = 0  # the receiver is back
    lasting.end_ts, later.end_ts = clock() - 1.0, clock()
    store.closed(lasting, notify=("webhook",), now=clock())
    store.closed(later, notify=("webhook",), now=clock())
    clock.now += 10.0  # within max_age_s of the second event's notifications
    notifier.deliver_due()
    told = [json.loads(r["body"]) for r in receiver.requests[1:]]
    assert [(t["type"], t["event"]["id"]) for t in told] == [("event_start", "e2"), ("event_end", "e2")]
    assert [(r["kind"], r["event_id"]) for r in outbox_rows(tmp_path / "h.db")] == [("event_start", "e2"), ("event_end", "e2")]


@pytest.mark.slow
def test_the_outbox_survives_a_restart(tmp_path, receiver, notifiers):
    receiver.fail = 1_000
    db = tmp_path / "h.db"
    store = EventStore(str(db))
    first = notifiers(store, webhook(receiver.url), backoff=Backoff(0.05, 0.05, jitter=0.0), poll_s=0.05)
    first.start()
    store.opened(event(1), notify=("webhook",))
    store.opened(event(2), notify=("webhook",))
    first.wake()
    wait_until(lambda: receiver.count() >= 2, "tries while the receiver fails", timeout=30)
    first.close()
    store.close()
    assert {r["delivered"] for r in outbox_rows(db)} == {None}

    receiver.fail = 0
    store = EventStore(str(db))
    second = notifiers(store, webhook(receiver.url))
    second.start()
    wait_until(lambda: store.outbox_stats() == {"pending": 0, "delivered": 2}, "the second process's deliveries",
               timeout=30)
    ids = [json.loads(r["body"])["event"]["id"] for r in receiver.requests[-2:]]
    assert sorted(ids) == ["e1", "e2"]  # one may overtake the other, still backing off from the first process
    first.close()  # idempotent


# -- MQTT -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mqtt_online_activity_events_and_discovery(tmp_path, broker, notifiers, subscribers):
    events = subscribers(broker, "sr/events", "sr/rack-1/activity")
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, mqtt(broker, homeassistant_discovery=True, discovery_prefix="ha"))
    notifier.start()
    notifier.discover(["rack-1"])
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
    for label in ("squat", "bench", "deadlifting"):  # one at once, the rest within a second: the newest follows
        notifier.activity("rack-1", label, 0.91, 123.5, False)
    store.opened(event(), notify=("mqtt",))
    notifier.wake()
    wait_until(lambda: events.on("sr/events"), "the event on sr/events", timeout=30)
    payload = json.loads(events.on("sr/events")[0][0])
    assert payload["type"] == "event_start" and payload["event"]["id"] == "e1"
    wait_until(lambda: store.outbox_stats()["delivered"] == 1, "the acknowledged publish", timeout=30)
    wait_until(lambda: len(events.on("sr/rack-1/activity")) == 2, "the held activity message", timeout=30)
    assert [json.loads(p)["label"] for p, _ in events.on("sr/rack-1/activity")] == ["squat", "deadlifting"]

    late = subscribers(broker, "#")  # after the publishes: only what is retained comes
    wait_until(lambda: late.on("sr/rack-1/activity") and late.on("ha/sensor/streamrec_rack-1/activity/config"),
               "the retained messages", timeout=30)
    assert late.on("sr/availability") == [("online", True)]
    (activity, retained), = late.on("sr/rack-1/activity")
    assert retained and json.loads(activity) == {"camera": "rack-1", "zone": None, "label": "deadlifting", "score": 0.91,
                                                 "ts": 123.5, "uncertain": False}
    (config, retained), = late.on("ha/sensor/streamrec_rack-1/activity/config")
    config = json.loads(config)
    assert retained and config["state_topic"] == config["json_attributes_topic"] == "sr/rack-1/activity"
    assert config["value_template"] == "{{ value_json.label }}" and config["availability_topic"] == "sr/availability"
    assert config["unique_id"] == "streamrec_rack-1_activity"
    assert config["device"] == {"identifiers": ["streamrec_rack-1"], "name": "streamrec rack-1",
                                "manufacturer": "streamrec"}
    assert late.on("sr/events") == []  # events are not retained

    notifier.close()
    wait_until(lambda: late.on("sr/availability")[-1:] == [("offline", False)], "offline on close", timeout=30)
    notifier.close()  # idempotent


@pytest.mark.slow
def test_mqtt_event_during_a_broker_outage_arrives_after_the_restart(tmp_path, broker, notifiers, subscribers):
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, mqtt(broker, homeassistant_discovery=True), clock=clock, backoff=Backoff(5.0, 300.0, jitter=0.0),
                         poll_s=0.1)
    notifier.start()
    notifier.discover(["rack-1"])
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
    broker.stop()
    wait_until(lambda: not notifier.stats()["channels"]["mqtt"]["connected"], "the lost connection", timeout=30)
    store.opened(event(), notify=("mqtt",), now=clock())
    notifier.activity("rack-1", "squat", 0.7, 1.0, True)  # never raises nor blocks while the broker is down
    notifier.wake()
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["failed"] >= 1, "the failed try", timeout=30)
    assert "not connected" in notifier.stats()["channels"]["mqtt"]["last_error"]
    assert store.outbox_stats() == {"pending": 1, "delivered": 0}

    broker.start()  # a fresh broker: nothing retained survives it
    sub = subscribers(broker, "#")  # before the reconnection, which makes what backed off due at once
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the reconnection", timeout=60)
    wait_until(lambda: sub.on("sr/availability") and sub.on("homeassistant/sensor/streamrec_rack-1/activity/config")
               and sub.on("sr/rack-1/activity"), "online, discovery and activity again on reconnect", timeout=30)
    assert json.loads(sub.on("sr/rack-1/activity")[-1][0])["uncertain"] is True
    # the clock stands still: the event's retry, 5 s of backoff away, comes with the reconnection, not its timer
    wait_until(lambda: sub.on("sr/events"), "the event after the restart", timeout=30)
    assert json.loads(sub.on("sr/events")[0][0])["event"]["id"] == "e1"
    wait_until(lambda: store.outbox_stats() == {"pending": 0, "delivered": 1}, "the delivery recorded", timeout=30)


KILLED_CHILD = """
import sys, time
from streamrec.event_config import MqttConfig, NotifyConfig
from streamrec.events.notify import Notifier
from streamrec.events.webhook import signature
from streamrec.events.store import EventStore
from streamrec.supervision import Supervisor
n = Notifier(EventStore(":memory:"), NotifyConfig(mqtt=MqttConfig(sys.argv[1], topic_prefix="sr")), supervisor=Supervisor())
n.start()
while not n.stats()["channels"]["mqtt"]["connected"]:
    time.sleep(0.05)
print("connected", flush=True)
time.sleep(600)
"""


def test_a_killed_process_is_offline_by_its_last_will(broker, subscribers):
    sub = subscribers(broker, "sr/availability")
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, f"mqtt://127.0.0.1:{broker.port}"], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
        wait_until(lambda: sub.on("sr/availability") == [("online", False)], "online", timeout=30)
        child.kill()
        wait_until(lambda: sub.on("sr/availability")[-1:] == [("offline", False)], "the last will", timeout=30)
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.slow
def test_mqtt_credentials_come_from_the_url_and_are_never_shown(tmp_path, notifiers, caplog):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto): these tests run a real broker")
    b = Broker(tmp_path)
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "cam user", "p@ss:w/rd"], check=True)
    b.write_conf("allow_anonymous false", f"password_file {passwords}")
    b.start()
    try:
        def connect(password: str) -> Notifier:
            url = f"mqtt://cam%20user:{password}@127.0.0.1:{b.port}"
            n = notifiers(EventStore(":memory:"), NotifyConfig(mqtt=MqttConfig(url)))
            n.start()
            return n

        with caplog.at_level(logging.INFO, logger="streamrec.events"):
            good = connect("p%40ss%3Aw%2Frd")
            bad = connect("wrong-secret")
            wait_until(lambda: good.stats()["channels"]["mqtt"]["connected"], "the login", timeout=30)
            wait_until(lambda: bad.stats()["channels"]["mqtt"]["last_error"], "the refusal", timeout=30)
        assert not bad.stats()["channels"]["mqtt"]["connected"]
        assert "refused" in bad.stats()["channels"]["mqtt"]["last_error"]
        for secret in ("wrong-secret", "p%40ss", "p@ss"):
            assert secret not in caplog.text and secret not in bad.stats()["channels"]["mqtt"]["last_error"]
    finally:
        b.stop()


def connected_mqtt(tmp_path, broker, notifiers) -> tuple[EventStore, Notifier, Clock]:
    """A store and a started notifier connected to ``broker``, waiting 0.5 s for an acknowledgement
    and retrying only when the test's clock moves on (a second, then five minutes)."""
    clock = Clock()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, mqtt(broker), clock=clock, backoff=Backoff(1.0, 300.0, jitter=0.0), poll_s=0.1)
    notifier.mqtt.ack_timeout_s = 0.5
    notifier.start()
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
    return store, notifier, clock


def test_an_unacknowledged_event_is_waited_for_not_published_twice(tmp_path, broker, notifiers, subscribers):
    sub = subscribers(broker, "sr/events")
    store, notifier, clock = connected_mqtt(tmp_path, broker, notifiers)
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker hangs: the publish goes out, no PUBACK comes
    try:
        store.opened(event(1), notify=("mqtt",), now=clock())
        notifier.wake()
        wait_until(lambda: notifier.stats()["channels"]["mqtt"]["failed"] == 1, "the unacknowledged try", timeout=30)
        assert "not acknowledged" in notifier.stats()["channels"]["mqtt"]["last_error"]
        assert notifier.stats()["channels"]["mqtt"]["unacknowledged"] == 1
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    wait_until(lambda: sub.on("sr/events"), "the event once the broker goes on", timeout=30)
    clock.now += 1.0
    notifier.wake()
    wait_until(lambda: store.outbox_stats()["delivered"] == 1, "the retry finding it acknowledged", timeout=30)
    assert notifier.stats()["channels"]["mqtt"]["unacknowledged"] == 0
    store.opened(event(2), notify=("mqtt",), now=clock())  # on the same connection: after any second e1
    notifier.wake()
    wait_until(lambda: len(sub.on("sr/events")) >= 2, "the next event", timeout=30)
    assert [json.loads(p)["event"]["id"] for p, _ in sub.on("sr/events")] == ["e1", "e2"]


def test_a_delivery_that_began_before_its_event_was_deleted_lands_on_no_other_event(tmp_path, receiver, notifiers):
    """SQLite gives a deleted notification's id to the next one: the answer to a POST of the deleted
    event's start must not mark the new event's start delivered (it would never be sent, and its end
    would arrive alone)."""
    receiver.hold = threading.Event()
    store = EventStore(str(tmp_path / "h.db"))
    notifier = notifiers(store, NotifyConfig(webhook=WebhookConfig(url=receiver.url, sign=False)))
    store.opened(event(1), notify=("webhook",))
    posting = threading.Thread(target=notifier.deliver_due, args=("webhook",))
    posting.start()
    wait_until(lambda: receiver.count() == 1, "the POST of e1's start", timeout=30)
    store.delete("e1")  # deleted while its start is on its way
    store.opened(event(2), notify=("webhook",))
    [note] = store.pending(now=time.time())
    receiver.hold.set()
    posting.join(30)
    assert store.pending(now=time.time()) == [note]  # e2's start: still to send
    notifier.deliver_due("webhook")
    assert [json.loads(r["body"])["event"]["id"] for r in receiver.requests] == ["e1", "e2"]
    assert store.outbox_stats() == {"pending": 0, "delivered": 1}


@pytest.mark.slow
def test_a_deleted_events_unacknowledged_publish_is_not_sent_again(tmp_path, broker, notifiers, subscribers):
    """The broker hung while the event's start was published, then the event was deleted: the
    publish is taken back, and a broker that comes back never gets it again from paho's queue."""
    store, notifier, clock = connected_mqtt(tmp_path, broker, notifiers)
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the publish goes out, no PUBACK comes
    try:
        store.opened(event(1), notify=("mqtt",), now=clock())
        notifier.wake()
        wait_until(lambda: notifier.stats()["channels"]["mqtt"]["unacknowledged"] == 1, "the unacknowledged try",
                   timeout=30)
        store.delete("e1")
        notifier.forget("e1")
        assert notifier.stats()["channels"]["mqtt"]["unacknowledged"] == 0
    finally:
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait(10)
    broker.write_conf("allow_anonymous true", "log_type all")  # each PUBLISH it receives, in its log
    seen = broker.log.stat().st_size
    broker.start()  # the same port: the old client's queue would be sent again on reconnect
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["connected"], "the new connection", timeout=30)
    sub = subscribers(broker, "sr/events")
    store.opened(event(2), notify=("mqtt",), now=clock())
    clock.now += 1.0
    notifier.wake()
    wait_until(lambda: sub.on("sr/events"), "e2's start", timeout=30)
    time.sleep(1.0)  # anything else on its way arrives meanwhile
    assert [json.loads(p)["event"]["id"] for p, _ in sub.on("sr/events")] == ["e2"]
    log = broker.log.read_bytes()[seen:].decode(errors="replace")
    assert sum("Received PUBLISH" in line and "'sr/events'" in line for line in log.splitlines()) == 1, log[-3000:]


def test_stats_never_wait_for_the_database(tmp_path, receiver, notifiers):
    """/healthz and /metrics read the notifier's stats on the server's loop: while a write waits for
    another writer's lock, they answer with the last count at once."""
    db = tmp_path / "h.db"
    store = EventStore(str(db), busy_timeout_s=5.0)
    notifier = notifiers(store, NotifyConfig(webhook=WebhookConfig(url=receiver.url, sign=False)))
    store.opened(event(1), notify=("webhook",))
    assert notifier.stats()["pending"] == 1
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file
        writing = threading.Thread(target=lambda: store.opened(event(2), notify=("webhook",)))
        writing.start()  # waits for the lock, holding the store's
        wait_until(lambda: not notifier.store.outbox_stats_now(), "the write waiting", timeout=30)
        stats = notifier.stats()
        still_waiting = writing.is_alive()
        other.execute("ROLLBACK")
    writing.join(30)
    assert still_waiting and stats["pending"] == 1  # answered meanwhile, with the last count
    assert notifier.stats()["pending"] == 2


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for localhost and 127.0.0.1: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "san.ext"
    ext.write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=streamrec test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


@pytest.mark.slow
def test_mqtts_checks_the_broker_against_the_system_cas_or_ca_file(tmp_path, notifiers, monkeypatch):
    if MOSQUITTO is None or shutil.which("openssl") is None:
        pytest.skip("mosquitto and openssl are needed (apt-get install -y mosquitto openssl): a real TLS broker")
    ca, cert, key = make_certificates(tmp_path)
    b = Broker(tmp_path)
    b.write_conf("allow_anonymous true", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}")
    b.start()
    try:
        url = f"mqtts://127.0.0.1:{b.port}"
        untrusted = notifiers(EventStore(":memory:"), NotifyConfig(mqtt=MqttConfig(url)))
        untrusted.start()
        wait_until(lambda: untrusted.stats()["channels"]["mqtt"]["last_error"], "the refused certificate", timeout=30)
        assert not untrusted.stats()["channels"]["mqtt"]["connected"]
        assert "certificate verify failed" in untrusted.stats()["channels"]["mqtt"]["last_error"]

        pinned = notifiers(EventStore(":memory:"), NotifyConfig(mqtt=MqttConfig(url, ca_file=str(ca))))
        pinned.start()  # ca_file: the broker's own CA, not the system's
        wait_until(lambda: pinned.stats()["channels"]["mqtt"]["connected"], "the TLS connection (ca_file)", timeout=30)

        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the "system" CAs, as OpenSSL reads them
        store = EventStore(":memory:")
        trusted = notifiers(store, NotifyConfig(mqtt=MqttConfig(url)))
        trusted.start()
        wait_until(lambda: trusted.stats()["channels"]["mqtt"]["connected"], "the TLS connection", timeout=30)
        store.opened(event(), notify=("mqtt",))
        trusted.wake()
        wait_until(lambda: store.outbox_stats()["delivered"] == 1, "the event over TLS", timeout=30)
    finally:
        b.stop()


@pytest.mark.slow
def test_webhook_over_https_checks_the_certificate_and_trusts_ca_file(tmp_path, notifiers):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed (apt-get install -y openssl): a real HTTPS receiver")
    ca, cert, key = make_certificates(tmp_path)
    rx = Receiver(tls=(cert, key))
    try:
        untrusted_store = EventStore(":memory:")
        untrusted = notifiers(untrusted_store, webhook(rx.url))
        untrusted_store.opened(event(), notify=("webhook",))
        untrusted.start()
        error = wait_until(lambda: untrusted.stats()["channels"]["webhook"]["last_error"], "the refused certificate",
                           timeout=30)
        assert error.startswith("cannot reach the webhook: ") and "certificate verify failed" in error, error
        assert rx.count() == 0 and untrusted_store.outbox_stats() == {"pending": 1, "delivered": 0}

        store = EventStore(":memory:")
        trusted = notifiers(store, NotifyConfig(webhook=WebhookConfig(rx.url, secret=SECRET, timeout=5.0,
                                                                      ca_file=str(ca))))
        store.opened(event(), notify=("webhook",))
        trusted.start()
        wait_until(lambda: store.outbox_stats()["delivered"] == 1, "the event over HTTPS", timeout=30)
    finally:
        rx.close()
    [req] = rx.requests
    assert req["headers"]["X-Streamrec-Signature"] == signature(req["body"], SECRET)
    assert json.loads(req["body"])["type"] == "event_start"


@pytest.mark.slow
def test_a_broker_that_is_down_neither_blocks_nor_raises(notifiers):
    store = EventStore(":memory:")
    notifier = notifiers(store, NotifyConfig(mqtt=MqttConfig(f"mqtt://127.0.0.1:{free_port()}")), backoff=Backoff(0.05, 300.0, jitter=0.0),
                         poll_s=0.05)
    started = time.monotonic()
    notifier.start()
    notifier.discover(["rack-1"])
    for i in range(50):
        notifier.activity("rack-1", "squat", 0.5 + i / 100, float(i), False)
    store.opened(event(), notify=("mqtt",))
    notifier.wake()
    assert time.monotonic() - started < 2.0  # none of it waits for the broker
    wait_until(lambda: notifier.stats()["channels"]["mqtt"]["failed"] >= 2, "tries while the broker is down",
               timeout=30)
    stats = notifier.stats()
    assert stats["pending"] == 1 and not stats["channels"]["mqtt"]["connected"]
    assert "Connection refused" in stats["channels"]["mqtt"]["last_error"]
    started = time.monotonic()
    notifier.close()
    assert time.monotonic() - started < 10.0  # paho's reconnect wait checks for the stop each second
