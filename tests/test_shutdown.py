"""One shutdown budget: a stop (SIGTERM, Ctrl-C, the end of ``--seconds``) joins every thread and
flushes every store within ``SHUTDOWN_S`` seconds in all, whatever hangs (a webhook that never
answers, a database another writer locks), so a service manager's stop timeout never has to kill
it and lose what was still to be written."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest

from conftest import sigterm, wait_http, wait_until
from servers import broker  # noqa: F401 - the fixture
from streamrec.live.history import HistoryStore, Segment
from streamrec.supervision import SHUTDOWN_S, Deadline
from test_events_live import serve, setup
from test_events_manager import an_event, make
from test_notify_delivery import DripReceiver


def test_the_budget_is_shared_by_the_steps_of_a_stop():
    now = [100.0]
    d = Deadline(SHUTDOWN_S, clock=lambda: now[0])
    waits = []
    for cap in (1.5, 1.5, 5.0, 10.0, 10.0):  # what each step would wait on its own
        waits.append(d.left(cap=cap))
        now[0] += waits[-1]  # each step uses all it gets
    assert waits == [1.5, 1.5, 5.0, 7.0, 0.0] and sum(waits) == SHUTDOWN_S
    with pytest.raises(ValueError, match="expected seconds >= 0, got nan"):
        Deadline(float("nan"))


def test_a_history_whose_database_is_locked_closes_within_its_timeout(tmp_path):
    db = tmp_path / "h.db"
    store = HistoryStore(str(db))
    store.flush()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the file: a write waits its busy timeout (10 s)
    try:
        store.add(Segment("court-1", "squat", 10.0, 20.0, 0.5, 0.75, 3))
        time.sleep(0.2)  # the writer is in the write now
        started = time.monotonic()
        store.close(timeout=1.0)
        took = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert took < 1.0 + 0.5, took  # not the busy timeout, nor the 5 s + 5 s of a queue put and a join


def test_events_whose_database_is_locked_close_within_their_timeout(tmp_path):
    db = str(tmp_path / "events.db")
    manager = make(db, [])  # the store's writes wait up to 10 s for another writer's lock
    manager.start(["cam"])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for msg in an_event():
            manager.observe("cam", msg)
        wait_until(lambda: manager.inbox.lock.locked(), "the events thread in its write", timeout=10)
        started = time.monotonic()
        manager.close(timeout=1.0)
        took = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert took < 1.0 + 0.5, took  # the open event is closed at the next start instead


@pytest.mark.slow
def test_sigterm_during_an_event_with_a_webhook_that_never_answers_exits_within_the_budget(tmp_path,
                                                                                            directions_model, broker):
    hook = DripReceiver(every_s=30.0)  # reads the request, then answers nothing for minutes
    try:
        _, port, cfg = setup(tmp_path, directions_model, broker, hook)
        proc = serve(cfg)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
            wait_until(lambda: hook.count() >= 1, "the event_start delivery", timeout=120)  # and it hangs
            assert json.loads(hook.requests[0])["type"] == "event_start"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=SHUTDOWN_S + 30)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                sigterm(proc)
        err = proc.stderr.read()
        assert rc == 0 and "Traceback" not in err, err
        assert took < SHUTDOWN_S + 5, f"{took:.1f} s"  # the budget, and the interpreter's own exit
        clips = list((tmp_path / "clips").rglob("*.mp4"))
        assert clips and not list((tmp_path / "clips").rglob("*.part"))  # the open event's clip was finished
    finally:
        hook.close()
