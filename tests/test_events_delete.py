"""Deleting an event, open or still recording: its rule lets it go without closing it, its clip
stops and its files go, and no notification of it is sent afterwards; real rules, a real
Recorder fed a real H.264 file on a virtual clock, and a real SQLite database."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.manager import EventManager
from streamrec.events.recording import Recorder
from streamrec.supervision import Supervisor

from conftest import wait_until
from test_recording import FPS, T0, Player, frames_of, h264

RULE = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0, cooldown_seconds=0.0,
                  notify=("webhook",))
STEP = 0.25  # seconds between labels


def label(ts: float, name: str) -> dict:
    return {"label": name, "score": 0.9, "uncertain": False, "window": {"end_ts": ts}}


class Rig:
    """An EventManager whose clips are written by a Recorder on the virtual clock of a Player."""

    def __init__(self, tmp_path, src, rule: RuleConfig = RULE, **kw) -> None:
        self.now = [T0]
        self.published: list[dict] = []
        self.folder = tmp_path / "events"
        self.db = str(tmp_path / "events.db")
        rec = RecordingConfig(pre_seconds=1.0, post_seconds=2.0, dir=str(self.folder))
        frame = np.full((240, 320, 3), 128, np.uint8)

        def clips(on_done, on_thumbnail):
            return Recorder(rec, supervisor=Supervisor(), clock=lambda: self.now[0], on_done=on_done,
                            frame_of=lambda camera: frame)

        # no channel delivers: every notification of the outbox stays there, undelivered
        self.manager = EventManager(rules=(rule,), notify=NotifyConfig(),
                                    recording=rec, db=self.db, classes=["pouring", "walking"], supervisor=Supervisor(),
                                    publish=self.published.append, clips=clips, clock=lambda: self.now[0], **kw)
        self.play = Player(src, self.manager.packet_ring("cam"), self.now)
        self.manager.start(["cam"])
        self.t = 0.0

    def labels(self, name: str, until: float) -> None:
        """Play the file and give the manager a label every STEP seconds, up to ``until``."""
        while self.t < until:
            self.t += STEP
            self.play.until(self.t)
            self.manager.observe("cam", label(T0 + self.t, name))
            assert self.manager.flush()

    def opened(self) -> list[str]:
        return [m["id"] for m in self.published if m.get("type") == "event" and m["state"] == "open"]

    def outbox(self, event_id: str) -> list[str]:
        with sqlite3.connect(self.db) as conn:
            return [k for k, in conn.execute("SELECT kind FROM outbox WHERE event_id = ? ORDER BY id", (event_id,))]


def test_a_deleted_event_is_gone_for_good_open_or_still_recording(tmp_path):
    src = h264(tmp_path / "cam.mp4", 16.0)
    rig = Rig(tmp_path, src)
    rig.labels("pouring", 2.0)  # opens at 1.25, dated 0.25
    [first] = rig.opened()
    assert rig.manager.store.get(first)["state"] == "open" and rig.outbox(first) == ["event_start"]
    assert (rig.folder / "cam" / f"{first}.mp4.part").exists()  # its clip is being written

    assert rig.manager.delete(first) is True
    assert rig.manager.store.get(first) is None and rig.outbox(first) == []
    assert not (rig.folder / "cam" / f"{first}.mp4.part").exists()
    assert rig.manager.stats()["open"] == 0
    rig.labels("pouring", 4.0)  # the same activity goes on: no event
    assert rig.opened() == [first]
    rig.labels("walking", 6.0)  # and ends: the deleted event is not closed
    rig.labels("pouring", 8.0)  # a new activity: a new event, from its own first label
    second = rig.opened()[-1]
    assert second != first and rig.manager.store.get(second)["start_ts"] == T0 + 6.25
    rig.labels("walking", 10.0)  # it closes at 8.0; its clip runs on to 10.0
    assert rig.manager.store.get(second)["state"] == "closed"
    assert rig.outbox(second) == ["event_start", "event_end"]
    assert rig.manager.delete(second) is True  # closed, its clip still being written
    rig.labels("walking", 14.0)
    assert rig.manager.delete(first) is False
    rig.manager.close()
    rig.play.source.close()

    assert rig.outbox(first) == [] and rig.outbox(second) == []
    assert [m for m in rig.published if m.get("type") == "event" and m["id"] == first and m["state"] != "open"] == []
    assert [m["id"] for m in rig.published if m.get("type") == "event_deleted"] == [first, second]
    with sqlite3.connect(rig.db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
    assert sorted(p.name for p in rig.folder.rglob("*") if p.is_file()) == []


def test_a_delete_while_the_events_thread_is_held_up_answers_503_and_works_after(tmp_path, monkeypatch):
    import streamrec.events.manager as manager_module
    from streamrec.serve.routes import events_api

    rig = Rig(tmp_path, h264(tmp_path / "cam.mp4", 4.0))
    rig.labels("pouring", 2.0)
    [eid] = rig.opened()
    api = events_api(rig.manager)
    monkeypatch.setattr(manager_module, "JOIN_S", 0.2)
    with rig.manager.inbox.lock:  # as while the events thread retries a write to a database that does not answer
        reply = api.handler("DELETE", f"/api/events/{eid}", {})
    assert reply.status == 503
    assert reply.body == {"error": f"event {eid}: not deleted: the events thread is busy (the database does not "
                                   "answer?); try again"}
    assert rig.manager.store.get(eid) is not None
    assert api.handler("DELETE", f"/api/events/{eid}", {}).status == 200
    assert api.handler("DELETE", f"/api/events/{eid}", {}).status == 404
    rig.manager.close()
    rig.play.source.close()


@pytest.mark.slow
def test_a_delete_the_database_refuses_leaves_the_event_as_it_was(tmp_path):
    """Another writer holds the database: the delete is a 503 and changes nothing, so the event
    goes on, closes and is notified as usual (it was neither deleted nor left open forever)."""
    from streamrec.serve.routes import events_api

    rig = Rig(tmp_path, h264(tmp_path / "cam.mp4", 6.0))
    rig.labels("pouring", 2.0)
    [eid] = rig.opened()
    api = events_api(rig.manager)
    other = sqlite3.connect(rig.db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # a backup, another process: the delete waits its busy timeout, then gives up
    try:
        reply = api.handler("DELETE", f"/api/events/{eid}", {})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert reply.status == 503 and "cannot write now" in reply.body["error"], reply.body
    rig.labels("walking", 4.0)  # the activity ends: the event closes as it would have
    closed = [m for m in rig.published if m.get("type") == "event" and m["state"] == "closed"]
    assert [m["id"] for m in closed] == [eid]
    row = rig.manager.store.get(eid)
    assert row["state"] == "closed" and row["end_ts"] == T0 + 2.0
    with sqlite3.connect(rig.db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM outbox WHERE event_id = ? ORDER BY id", (eid,))]
    assert kinds == ["event_start", "event_end"]
    rig.manager.close()
    rig.play.source.close()


def test_a_close_the_database_fails_still_ends_the_clip_and_lets_the_peak_frame_go(tmp_path):
    """A write that fails for good (a disk I/O error): the clip still stops after its post-roll
    and the event's peak frame is not kept in memory."""
    from streamrec.events.store import EventStore

    class FailingDisk(EventStore):
        def closed(self, ev, **kw):
            raise sqlite3.OperationalError("disk I/O error")

    rig = Rig(tmp_path, h264(tmp_path / "cam.mp4", 8.0), store=FailingDisk(str(tmp_path / "events.db")))
    rig.labels("pouring", 2.0)
    [eid] = rig.opened()
    rig.labels("walking", 6.0)  # the event ends at 2.0; its clip runs to 4.0 with the post-roll
    recorder = rig.manager.recorder
    wait_until(lambda: recorder.stats()["clips_active"] == 0, "the clip's writer to end", timeout=30)
    assert recorder.stats()["thumbnails_written"] == 1 and (rig.folder / "cam" / f"{eid}.jpg").is_file()
    clip = rig.folder / "cam" / f"{eid}.mp4"
    assert abs(frames_of(clip) / FPS - 4.0) <= 1.0 / FPS  # 1.0 s before its start (the keyframe at 0) to 4.0
    rig.manager.close()
    rig.play.source.close()


def test_a_server_that_deletes_events_for_months_remembers_a_bounded_number_of_them(tmp_path):
    import tracemalloc

    import numpy as np

    from streamrec.event_config import RecordingConfig
    from streamrec.events.recording import DELETED_KEPT, Recorder
    from streamrec.supervision import Supervisor

    rec = Recorder(RecordingConfig(dir=str(tmp_path / "events")), supervisor=Supervisor())
    frame = np.zeros((8, 8, 3), np.uint8)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(20 * DELETED_KEPT):  # ids are never reused: each delete is a new one
        rec.discard(f"{1_764_000_000 + i}-{i:08x}", "cam")
    kept = [tracemalloc.Filter(True, "*/streamrec/events/*")]  # what the recorder itself holds on to
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().filter_traces(kept).compare_to(
        before.filter_traces(kept), "filename"))
    tracemalloc.stop()
    assert grown < 200 * DELETED_KEPT  # the newest DELETED_KEPT ids; all 20,000 held for good were about 2 MB
    newest = f"{1_764_000_000 + 20 * DELETED_KEPT - 1}-{20 * DELETED_KEPT - 1:08x}"
    assert rec.thumbnail(newest, "cam", frame) is None  # a late write for a just-deleted event is still refused
    assert rec.thumbnail("kept-1", "cam", frame) == "cam/kept-1.jpg"
