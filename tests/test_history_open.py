"""The activity in progress and camera outages in the history: ``/api/history`` includes each
camera's open segment, growing until now; labels that stop (an outage) end the segment at the
last label before it, and an outage never counts as activity."""

from __future__ import annotations

import pytest

from conftest import Clock
from streamrec.config import ServeConfig
from streamrec.live.history import HistoryStore, SegmentTracker
from streamrec.serve.core import AppCore
from streamrec.serve.routes import history_api


def labels(tracker: SegmentTracker, label: str, times) -> None:
    for ts in times:
        tracker.update(label, 0.8, float(ts))


def spans(store: HistoryStore, **kw) -> list[tuple]:
    return [(r["camera"], r["label"], r["start"], r["end"], r["open"]) for r in store.query(**kw)]


def test_an_outage_ends_the_segment_at_the_last_label_before_it():
    closed = []
    t = SegmentTracker("court-1", closed.append)
    labels(t, "dribbling", range(100, 111))  # a label a second
    labels(t, "dribbling", range(400, 403))  # the camera was away for almost 5 minutes
    t.close(403.5)
    assert [(s.label, s.start, s.end, s.windows) for s in closed] == [
        ("dribbling", 100.0, 110.0, 11), ("dribbling", 400.0, 403.5, 3)]


def test_the_outage_threshold_follows_the_usual_interval_between_labels():
    closed = []
    t = SegmentTracker("slow-cpu", closed.append)
    labels(t, "running", [0, 3, 6, 9, 12])  # a label every 3 s: 9 s without one is an outage
    assert t.stale_after() == 9.0
    labels(t, "running", [20])  # 8 s: not an outage
    labels(t, "running", [30])  # 10 s: an outage
    t.close()
    assert [(s.start, s.end) for s in closed] == [(0.0, 20.0), (30.0, 30.0)]


def test_an_early_outage_does_not_make_a_later_one_count_as_activity():
    """The outages themselves are intervals between labels too: they must not stretch the usual
    interval (with two or three intervals known, one outage once made the next 99 s "activity")."""
    closed = []
    t = SegmentTracker("gym", closed.append)
    labels(t, "squat", [0, 100, 101, 200, 201, 300, 300.5, 301, 301.5])
    t.close()
    assert [(s.start, s.end, s.windows) for s in closed] == [
        (0.0, 0.0, 1), (100.0, 101.0, 2), (200.0, 201.0, 2), (300.0, 301.5, 4)]


def test_a_clock_that_steps_back_never_makes_segments_overlap():
    closed = []
    t = SegmentTracker("gym", closed.append)
    for label, ts in (("a", 10), ("a", 11), ("b", 9), ("b", 12)):  # the wall clock stepped back 2 s
        t.update(label, 0.8, float(ts))
    t.close()
    assert [(s.label, s.start, s.end) for s in closed] == [("a", 10.0, 11.0), ("b", 11.0, 12.0)]


def test_interrupt_and_a_stop_long_after_the_last_label_end_at_that_label():
    closed = []
    t = SegmentTracker("gate", closed.append)
    labels(t, "walking", [10, 11, 12])
    t.interrupt()  # the camera is reconnecting
    t.interrupt()  # and still is: nothing more
    labels(t, "walking", [50, 51])
    t.close(500.0)  # stopped long after the labels stopped
    labels(t, "walking", [600, 601])
    t.close(601.5)  # stopped right after a label
    assert [(s.start, s.end) for s in closed] == [(10.0, 12.0), (50.0, 51.0), (600.0, 601.5)]


def test_the_open_segment_grows_until_now_and_stops_growing_in_an_outage():
    clock = Clock(1000.0)
    store = HistoryStore(":memory:", clock=clock)
    try:
        t = store.tracker("court-1")
        labels(t, "serve", range(820, 840))
        labels(t, "smash", range(840, 1001))  # 160 s and going
        store.flush()
        assert spans(store) == [("court-1", "serve", 820.0, 840.0, False), ("court-1", "smash", 840.0, 1000.0, True)]
        clock.now = 1001.5  # the next label is due
        assert spans(store, since=900)[-1] == ("court-1", "smash", 840.0, 1001.5, True)
        assert spans(store, limit=1) == [("court-1", "smash", 840.0, 1001.5, True)]
        clock.now = 1100.0  # no label for 100 s: the camera went away at 1000
        assert spans(store, since=900) == [("court-1", "smash", 840.0, 1000.0, False)]
        assert spans(store, since=1050) == []
        assert spans(store, camera="other") == []
        labels(t, "smash", [1100, 1101])  # back: the outage is not activity
        store.flush()
        clock.now = 1101.2
        assert spans(store, since=900) == [("court-1", "smash", 840.0, 1000.0, False),
                                           ("court-1", "smash", 1100.0, 1101.2, True)]
        t.close(1101.2)
        store.flush()
        assert spans(store, since=900)[-1] == ("court-1", "smash", 1100.0, 1101.2, False)
    finally:
        store.close()


def test_the_history_api_answers_the_open_segment():
    clock = Clock(2000.0)
    store = HistoryStore(":memory:", clock=clock)
    try:
        labels(store.tracker("gate"), "walking", range(1820, 2000))  # 3 minutes so far
        reply = history_api(store).handler("GET", "/api/history", {"since": ["1900"]})
        assert reply.status == 200
        [seg] = reply.body["segments"]
        assert (seg["label"], seg["start"], seg["end"], seg["open"]) == ("walking", 1820.0, 2000.0, True)
    finally:
        store.close()


def test_a_camera_that_is_not_running_ends_its_segment_in_the_app():
    clock = Clock(100.0)
    store = HistoryStore(":memory:", clock=clock)
    core = AppCore(ServeConfig(source="0"), store)
    try:
        msg = {"label": "walking", "score": 0.9, "window": {"end_ts": 0.0}}
        for ts in (95.0, 96.0, 97.0):
            core.deliver([("gate", {**msg, "window": {"end_ts": ts}})])
        core.end_segment_if_down("gate", {"source": {"state": "running"}})
        assert spans(store) == [("gate", "walking", 95.0, 100.0, True)]
        core.end_segment_if_down("gate", {"source": {"state": "reconnecting"}})
        store.flush()
        assert spans(store) == [("gate", "walking", 95.0, 97.0, False)]
    finally:
        store.close()


@pytest.mark.parametrize("query, expected", [
    ({}, [("gate", "walking", 1820.0, 2000.0, True), ("yard", "running", 1900.0, 2000.0, True)]),
    ({"camera": "yard"}, [("yard", "running", 1900.0, 2000.0, True)]),
    ({"camera": "gate", "until": 1850.0}, [("gate", "walking", 1820.0, 1999.0, True)]),  # to its last label, not now
    ({"camera": "yard", "until": 1850.0}, []),  # it started after until
    ({"until": 1899.0}, [("gate", "walking", 1820.0, 1999.0, True)]),
    ({"since": 2001.0}, []),
])
def test_the_open_segments_of_two_cameras_follow_camera_and_until(query, expected):
    clock = Clock(2000.0)
    store = HistoryStore(":memory:", clock=clock)
    try:
        labels(store.tracker("gate"), "walking", range(1820, 2000))
        labels(store.tracker("yard"), "running", range(1900, 2000))
        assert spans(store, **query) == expected
    finally:
        store.close()


def test_healthz_leaves_out_a_camera_removed_while_it_is_read():
    """A camera removed, or restarting with new zones, in a thread of the camera API between the
    list of names and the read of its stats: /healthz answered 500 (a KeyError)."""
    from streamrec.live.history import HistoryStore

    class Cameras(AppCore):
        names = ["gate", "gym"]

        def camera_names(self) -> list[str]:
            return list(self.names)

        def camera_health(self, name: str) -> dict:
            if name == "gym":  # removed between the list of names and this read
                self.names.remove("gym")
            return {"gate": {"state": "running"}}[name]

    store = HistoryStore(":memory:")
    core = Cameras(ServeConfig(source="0"), store)
    try:
        health = core.health()
        assert (health["status"], list(health["cameras"])) == ("ok", ["gate"])
    finally:
        store.close()
