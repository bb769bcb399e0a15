"""The events thread: labels are handed over without waiting, in order, and a database that
does not answer delays the events without losing them or stalling the labels."""

from __future__ import annotations

import sqlite3

from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.manager import EventManager
from streamrec.events.store import EventStore
from streamrec.supervision import Supervisor

from conftest import wait_until

RULE = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0, notify=("webhook",))


def label(ts: float, name: str, score: float = 0.9) -> dict:
    """A prediction message as the engine reads it."""
    return {"label": name, "score": score, "uncertain": False, "window": {"end_ts": ts}}


def an_event(t0: float = 1000.0) -> list[dict]:
    """Labels that open an event of RULE at t0 + 1 and close it at t0 + 3."""
    return [label(t0 + i / 2, "pouring") for i in range(5)] + [label(t0 + 2.5 + i / 2, "walking") for i in range(4)]


def make(db: str, published: list, **kw) -> EventManager:
    return EventManager(rules=(RULE,), notify=NotifyConfig(), recording=RecordingConfig(enabled=False), db=db,
                        classes=["pouring", "walking"], supervisor=Supervisor(), publish=published.append, **kw)


def test_labels_never_wait_for_a_locked_database_and_the_event_lands_after(tmp_path):
    db = str(tmp_path / "events.db")
    published: list = []
    manager = make(db, published)
    manager.start(["cam"])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the database (a backup, a slow disk)
    msgs = an_event()
    try:
        for msg in msgs:
            manager.observe("cam", msg)  # returns at once: the events thread waits, not the labels
        # the third label opens the event: the events thread is at its write, waiting for the lock
        wait_until(lambda: manager.queue.qsize() <= len(msgs) - 3, "the events thread at the opening label", timeout=5)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert manager.flush(30)
    manager.close()
    store = EventStore(db)
    try:
        [row] = store.query()
        assert (row["camera"], row["label"], row["state"], row["start_ts"], row["end_ts"]) == \
            ("cam", "pouring", "closed", 1000.0, 1002.0)
        assert [(n.kind, n.channel) for n in store.pending(now=2e9)] == [("event_start", "webhook"),
                                                                         ("event_end", "webhook")]
    finally:
        store.close()
    assert [(m["type"], m["state"]) for m in published] == [("event", "open"), ("event", "closed")]
    assert manager.errors == 0 and manager.dropped == 0


def test_a_full_queue_drops_and_counts_and_close_handles_what_is_queued(tmp_path):
    published: list = []
    manager = make(str(tmp_path / "events.db"), published, queue_size=12)  # not started: nothing takes the labels
    msgs = an_event()
    for msg in msgs + [label(2000.0 + i / 2, "pouring") for i in range(4)]:  # 9 + 3 fit, the last is dropped
        manager.observe("cam", msg)
    assert (manager.queue.qsize(), manager.dropped) == (12, 1)
    assert manager.problems() == ["events: 1 label(s) dropped, their queue was full"]  # /healthz: degraded
    manager.close()  # the queued labels are handled here; the second event closes at its last label
    assert [(m["state"], m["end_ts"]) for m in published] == [("open", None), ("closed", 1002.0), ("open", None),
                                                               ("closed", 2001.0)]
    store = EventStore(str(tmp_path / "events.db"))
    try:
        assert [(r["start_ts"], r["state"]) for r in store.query()][::-1] == [(1000.0, "closed"), (2000.0, "closed")]
    finally:
        store.close()


def test_removing_a_camera_closes_its_event_after_its_queued_labels(tmp_path):
    published: list = []
    manager = make(str(tmp_path / "events.db"), published)
    manager.start(["cam", "other"])
    for msg in an_event()[:4]:  # open (at 1001.0), and one more label
        manager.observe("cam", msg)
    manager.forget("cam")
    assert manager.flush(10)
    manager.close()
    assert [(m["state"], m["end_ts"]) for m in published] == [("open", None), ("closed", 1001.5)]
