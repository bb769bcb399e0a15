"""The events thread's inbox: order, bounded labels, and items that come around the stop."""

from __future__ import annotations

import threading

from streamrec.events.inbox import Inbox
from streamrec.supervision import Supervisor


def make(limit: int = 10, gate: threading.Event | None = None) -> tuple[Inbox, list]:
    seen: list = []

    def handle(item):
        if gate is not None:
            gate.wait(10)
        seen.append(item)

    return Inbox(handle, name="test-inbox", supervisor=Supervisor(), limit=limit), seen


def test_items_are_handled_in_order_and_labels_past_the_limit_are_dropped():
    gate = threading.Event()
    inbox, seen = make(limit=2, gate=gate)
    inbox.start()
    results = [inbox.put_label(("label", i)) for i in range(3)]
    done = inbox.put(("forget", "cam"))
    assert results == [True, True, False] and inbox.dropped == 1
    assert not done.is_set()  # the handler is held: nothing was handled in this thread
    gate.set()
    assert done.wait(5)
    inbox.stop(5)
    assert seen == [("label", 0), ("label", 1), ("forget", "cam")]
    assert inbox.queued() == 0


def test_an_item_after_the_thread_ended_is_handled_at_once():
    inbox, seen = make()
    inbox.start()
    inbox.stop(5)
    done = inbox.put(("forget", "cam"))
    assert done.is_set()  # nobody would have taken it from the queue until close()
    assert seen == [("forget", "cam")]


def test_items_queued_behind_an_abandoned_thread_wait_for_drain_in_order():
    gate = threading.Event()
    inbox, seen = make(gate=gate)
    inbox.start()
    inbox.put(("clip", 1))  # the thread holds this one until the gate opens
    inbox.put_label(("label", 2))
    inbox.put(("clip", 3))
    inbox.stop(0.2)  # gives up on the busy thread
    assert not inbox.running
    gate.set()
    later = inbox.put(("clip", 4))  # the thread is abandoned: handled here, now
    assert later.is_set()
    assert inbox.drain() == 2
    assert seen[-2:] == [("label", 2), ("clip", 3)] and ("clip", 4) in seen


def test_close_drops_queued_labels_keeps_the_rest_and_refuses_new_labels():
    gate = threading.Event()
    inbox, seen = make(gate=gate)
    inbox.start()
    inbox.put(("clip", 1))
    inbox.put_label(("label", 2))
    thumb = inbox.put(("thumbnail", 3))
    inbox.stop(0.2)
    gate.set()
    inbox.close()
    assert thumb.is_set()
    assert ("label", 2) not in seen and ("thumbnail", 3) in seen
    assert inbox.put_label(("label", 5)) is False
    assert inbox.put(("clip", 6)).is_set() and seen[-1] == ("clip", 6)


def test_ticks_come_while_the_thread_is_idle_and_while_it_is_busy():
    import time

    from streamrec.events.inbox import TICK

    seen = []
    inbox = Inbox(seen.append, name="tick-inbox", supervisor=Supervisor(), limit=1000, tick_s=0.1)
    inbox.start()
    try:
        time.sleep(0.55)  # idle: about five ticks
        idle = seen.count(TICK)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # busy: a label every millisecond, ticks still come
            inbox.put_label(("label", 1))
            time.sleep(0.001)
        assert inbox.flush(5)
    finally:
        inbox.stop()
    assert idle >= 2 and seen.count(TICK) - idle >= 2 and seen.count(("label", 1)) > 100
