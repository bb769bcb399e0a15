"""The events thread: labels are handed over without waiting, in order, and a database that
does not answer delays the events without losing them or stalling the labels."""

from __future__ import annotations

import sqlite3
import time

import pytest

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
    # a store whose writes wait 0.2 s for another writer's lock, then report the database busy
    manager = make(db, published, store=EventStore(db, busy_timeout_s=0.2))
    manager.start(["cam"])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the database (a backup, a slow disk)
    msgs = an_event()
    try:
        for msg in msgs:
            manager.observe("cam", msg)  # returns at once: the events thread waits, not the labels
        # the third label opens the event: its write finds the database busy and is tried again
        wait_until(lambda: manager.waiting_db, "the events thread waiting for the database", timeout=10)
        [problem] = manager.problems()
        assert problem.startswith("events: the database does not answer (events database cannot write now: "
                                  "database is locked); ")
        assert published == []  # the page hears of the event once it is written
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
    stats = manager.stats()
    assert (stats["errors"], stats["dropped"], stats["waiting_db"]) == (0, 0, False)


def test_labels_that_wait_for_a_locked_database_are_no_outage_and_split_no_event(tmp_path):
    """Ten seconds of one activity while the database does not answer: one event, from its first
    label to its last, however long the labels waited in the queue."""
    db = str(tmp_path / "events.db")
    now = [5000.0]
    published: list = []
    manager = make(db, published, store=EventStore(db, busy_timeout_s=0.2), clock=lambda: now[0])
    manager.start(["cam"])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(21):  # pouring from 1000.0 to 1010.0, handed over as it happens
            now[0] = 5000.0 + i / 2
            manager.observe("cam", label(1000.0 + i / 2, "pouring"))
            if i == 2:  # the label that opens the event: its write waits for the database from now on
                wait_until(lambda: manager.waiting_db, "the events thread waiting for the database", timeout=10)
        time.sleep(1.5)  # a tick is due when the thread can go on
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert manager.flush(30)
    for i in range(4):
        now[0] = 5010.5 + i / 2
        manager.observe("cam", label(1010.5 + i / 2, "walking"))
    assert manager.flush(30)
    manager.close()
    store = EventStore(db)
    try:
        assert [(r["state"], r["start_ts"], r["end_ts"]) for r in store.query()] == [("closed", 1000.0, 1010.0)]
    finally:
        store.close()


def test_a_write_tried_again_after_it_landed_adds_nothing():
    """A connection lost while the server committed: the write is tried again, and the event
    and its notifications are there once, not twice."""
    from streamrec.events.store import Event

    store = EventStore(":memory:")
    ev = Event("e1", "pour", "cam", "pouring", start_ts=5.0, peak_score=0.9, mean_score=0.8)
    for _ in range(2):
        store.opened(ev, notify=("webhook", "mqtt"), now=5.0)
    closed = Event("e1", "pour", "cam", "pouring", 5.0, 0.9, 0.8, end_ts=9.0)
    for _ in range(2):
        store.closed(closed, notify=("webhook", "mqtt"), now=9.0)
    assert [(r["id"], r["state"]) for r in store.query()] == [("e1", "closed")]
    assert sorted((n.kind, n.channel) for n in store.pending(now=10.0)) == [
        ("event_end", "mqtt"), ("event_end", "webhook"), ("event_start", "mqtt"), ("event_start", "webhook")]
    store.close()


def test_a_full_queue_drops_and_counts_and_close_handles_what_is_queued(tmp_path):
    published: list = []
    manager = make(str(tmp_path / "events.db"), published, queue_size=12)  # not started: nothing takes the labels
    msgs = an_event()
    for msg in msgs + [label(2000.0 + i / 2, "pouring") for i in range(4)]:  # 9 + 3 fit, the last is dropped
        manager.observe("cam", msg)
    assert (manager.inbox.queued(), manager.inbox.dropped) == (12, 1)
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
    closed = manager.forget("cam")
    assert closed.wait(10)  # set once the events thread closed them
    assert [(m["state"], m["end_ts"]) for m in published] == [("open", None), ("closed", 1001.5)]
    manager.close()
    assert len(published) == 2


def test_labels_after_the_stop_open_nothing(tmp_path):
    published: list = []
    manager = make(str(tmp_path / "events.db"), published)
    manager.start(["cam"])
    manager.finish()  # what the cluster does before its actors stop
    for msg in an_event():
        manager.observe("cam", msg)  # a driver thread that outlived its join
    manager.close()
    assert published == []


def test_a_failed_transaction_leaves_nothing_and_the_next_write_works():
    from streamrec.events.store import Event

    store = EventStore(":memory:")
    ev = Event("e1", "pour", "cam", "pouring", start_ts=5.0, peak_score=0.9, mean_score=0.8)
    with pytest.raises(sqlite3.Error):  # its second notification cannot be written, after the event and the first
        store.opened(ev, notify=("webhook", object()), now=5.0)
    assert store.query() == [] and store.pending(now=10.0) == []
    store.opened(Event("e2", "pour", "cam", "pouring", 6.0, 0.9, 0.8), notify=("webhook",), now=6.0)
    assert [r["id"] for r in store.query()] == ["e2"] and len(store.pending(now=10.0)) == 1
    store.close()


def test_a_database_with_duplicate_notifications_opens_and_keeps_the_first(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("""CREATE TABLE outbox (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, kind TEXT NOT NULL,
        channel TEXT NOT NULL, payload TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_try DOUBLE PRECISION NOT NULL, error TEXT,
        delivered DOUBLE PRECISION)""")
    for i in range(3):  # an event_end written three times (a store without the unique index)
        conn.execute("INSERT INTO outbox (event_id, kind, channel, payload, created, next_try) VALUES (?, ?, ?, ?, ?, ?)",
                     ("e1", "event_end", "webhook", f"{{\"n\": {i}}}", 1.0, 1.0))
    conn.commit()
    conn.close()
    store = EventStore(str(db))
    try:
        assert [(n.event_id, n.payload) for n in store.pending(now=2.0)] == [("e1", '{"n": 0}')]
    finally:
        store.close()


def test_an_event_whose_labels_stop_coming_is_closed_by_the_events_thread(tmp_path):
    """A file that ended, a camera reconnecting: no label comes to close the event; the events
    thread's tick does, at the last matching label, and the page hears of it."""
    now = [5000.0]
    published: list = []
    manager = make(str(tmp_path / "events.db"), published, clock=lambda: now[0])
    manager.start(["cam"])
    try:
        for i in range(5):  # pouring from 1000.0 to 1002.0, handed over from 5000.0 to 5002.0
            now[0] = 5000.0 + i / 2
            manager.observe("cam", label(1000.0 + i / 2, "pouring"))
        assert manager.flush(10)
        assert [m["state"] for m in published] == ["open"]
        now[0] = 5004.0  # 2 s since the last label came: not yet an outage (3 usual intervals, 2 s at least)
        time.sleep(1.5)  # a tick or more
        assert [m["state"] for m in published] == ["open"]
        now[0] = 5010.0
        wait_until(lambda: len(published) == 2, "the event closed by a tick", timeout=10)
        assert (published[1]["state"], published[1]["start_ts"], published[1]["end_ts"]) == ("closed", 1000.0, 1002.0)
    finally:
        manager.close()


def test_an_event_left_open_by_a_kill_is_closed_at_its_last_written_label_not_its_peak(tmp_path):
    """The peak comes first, the labels go on for six seconds: recovery closes the event at most
    SEEN_EVERY_S before its last label, and a since-filter still finds it meanwhile."""
    from streamrec.events.manager import SEEN_EVERY_S

    now = [5000.0]
    published: list = []
    db = str(tmp_path / "events.db")
    manager = make(db, published, clock=lambda: now[0])
    manager.start(["cam"])
    try:
        for i in range(13):  # pouring from 1000.0 to 1006.0, the best score at the start
            now[0] = 5000.0 + i / 2
            manager.observe("cam", label(1000.0 + i / 2, "pouring", score=0.99 if i < 3 else 0.6))
            assert manager.flush(10)  # handled at this clock reading
        store = EventStore(db)  # what a start after a kill reads
        assert [e["id"] for e in store.query(since=1005.0)] == [published[0]["id"]]
        [ev] = store.recover({"pour": ()}, now=now[0])
        assert ev.start_ts == 1000.0 and 1006.0 - SEEN_EVERY_S <= ev.end_ts <= 1006.0, ev
        assert ev.peak_score == 0.99
    finally:
        manager.close()


def test_retention_runs_while_a_write_waits_for_the_database(tmp_path):
    """A full disk makes every write wait: retention (which frees the disk) must not wait behind
    it, or nothing ever frees room again."""
    import os

    from streamrec.events.manager import PRUNE_EVERY_S

    db = str(tmp_path / "events.db")
    now = [time.time()]
    recording = RecordingConfig(enabled=False, retention_days=2.0, dir=str(tmp_path / "events"))
    manager = EventManager(rules=(RULE,), notify=NotifyConfig(), recording=recording, db=db,
                           classes=["pouring", "walking"], supervisor=Supervisor(), publish=lambda m: None,
                           clock=lambda: now[0], store=EventStore(db, busy_timeout_s=0.2))
    manager.start(["cam"])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # writes wait (as on a full disk); reads go on (WAL)
    try:
        for msg in an_event()[:3]:
            manager.observe("cam", msg)
        wait_until(lambda: manager.waiting_db, "the events thread waiting for the database", timeout=10)
        stale = tmp_path / "events" / "cam" / "1000-0badf00d.mp4"  # a crash's clip, older than the retention
        stale.parent.mkdir(parents=True)
        stale.write_bytes(bytes(100))
        os.utime(stale, (now[0] - 10 * 86400,) * 2)
        now[0] += PRUNE_EVERY_S + 1
        wait_until(lambda: not stale.exists(), "retention while the write waits", timeout=30)
        assert manager.waiting_db
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert manager.flush(30)
    manager.close()


class RefusingStore(EventStore):
    """A store whose event rows cannot be written for a reason no retry mends (a read-only or
    damaged database file)."""

    def opened(self, *args, **kw):
        raise sqlite3.DatabaseError("attempt to write a readonly database")


def test_an_event_the_database_refuses_is_counted_and_healthz_says_so_for_five_minutes(tmp_path):
    db = str(tmp_path / "events.db")
    now = [5000.0]
    manager = make(db, [], store=RefusingStore(db), clock=lambda: now[0])
    manager.start(["cam"])
    for msg in an_event()[:3]:
        manager.observe("cam", msg)
    assert manager.flush(30)
    assert manager.stats()["errors"] == 1
    id_ = next(iter(manager.engine.tracks.values())).open.id
    now[0] += 300.0
    assert manager.problems() == [f"events: 1 event change(s) not recorded, the last 300 s ago: event {id_} of camera "
                                  "cam (start): DatabaseError: attempt to write a readonly database"]
    now[0] += 1.0
    assert manager.problems() == []
    manager.close()
