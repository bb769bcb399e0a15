"""Each event's notifications keep their order per channel with the outbox in PostgreSQL too
(the same query as SQLite's): a webhook that fails, then recovers."""

from __future__ import annotations

import json

import pytest

from servers import receiver  # noqa: F401 - fixture
from test_postgres import pytestmark, server  # noqa: F401 - the PostgreSQL server fixture and its skip
from streamrec.event_config import NotifyConfig, WebhookConfig
from streamrec.events.notify import Notifier
from streamrec.events.store import Event, EventStore
from streamrec.retry import Backoff
from streamrec.supervision import Supervisor


@pytest.mark.slow
def test_an_events_end_waits_for_its_start_in_postgres(server, receiver):  # noqa: F811 - fixtures
    receiver.fail = 1
    now = [1_000_000.0]
    store = EventStore(server.url)
    notifier = Notifier(store, NotifyConfig(webhook=WebhookConfig(receiver.url, secret="s", timeout=5.0)),
                        supervisor=Supervisor(), clock=lambda: now[0], backoff=Backoff(10.0, 300.0, jitter=0.0))
    try:
        name = f"pg-{id(store)}"
        start = Event(name, "lifting", "rack-1", "deadlifting", 101.0, 0.8, 0.7)
        store.opened(start, notify=("webhook",), now=now[0])
        notifier.deliver_due()  # 500: the start backs off for 10 s
        now[0] += 1.0
        store.closed(Event(name, "lifting", "rack-1", "deadlifting", 101.0, 0.8, 0.7, end_ts=105.0),
                     notify=("webhook",), now=now[0])
        notifier.deliver_due()
        assert receiver.count() == 1  # the end did not overtake its start
        assert [(n.kind, n.attempts) for n in store.pending(now=2e9) if n.event_id == name] == [
            ("event_start", 1), ("event_end", 0)]
        now[0] += 10.0
        notifier.deliver_due()
        assert [json.loads(r["body"])["type"] for r in receiver.requests] == ["event_start", "event_start", "event_end"]
    finally:
        notifier.close()
        store.close()


@pytest.mark.slow
def test_an_events_end_is_given_up_with_its_start_in_postgres(server):  # noqa: F811 - fixture
    store = EventStore(server.url)
    try:
        name = f"pg-expire-{id(store)}"
        store.opened(Event(name, "lifting", "rack-1", "deadlifting", 101.0, 0.8, 0.7), notify=("webhook",), now=100.0)
        store.closed(Event(name, "lifting", "rack-1", "deadlifting", 101.0, 0.8, 0.7, end_ts=105.0),
                     notify=("webhook",), now=200.0)
        assert store.expire(150.0) >= 2  # the start is too old: its end goes with it
        assert [n for n in store.pending(now=2e9) if n.event_id == name] == []
    finally:
        store.close()
