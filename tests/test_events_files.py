"""What a full disk leaves of thumbnails and clips (nothing partial: a write past the file-size
limit fails with a real EFBIG), and retention of events with and without clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.manager import EventManager
from streamrec.events.recording import Recorder
from streamrec.events.store import Event, EventStore
from streamrec.supervision import Supervisor

DAY = 86400.0

THUMBNAIL_PAST_THE_LIMIT = """
import json, resource, signal, sys
import numpy as np
from pathlib import Path
from streamrec.event_config import RecordingConfig
from streamrec.events.recording import Recorder
from streamrec.supervision import Supervisor
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
t = [1000.0]
rec = Recorder(RecordingConfig(dir={folder!r}), supervisor=Supervisor(), clock=lambda: t[0])
small = np.full((48, 64, 3), 90, np.uint8)
noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # a JPEG of 200 kB or so
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
out = [rec.thumbnail("small", "cam", small), rec.thumbnail("big", "cam", noise), rec.stats()["write_errors"]]
t[0] += 60
out.append(rec.problems())
t[0] += 241  # more than RECENT_ERROR_S after it: no longer a problem
print(json.dumps(out + [rec.problems()]))
"""


def test_a_thumbnail_that_does_not_fit_leaves_no_file(tmp_path):
    folder = tmp_path / "events"
    code = THUMBNAIL_PAST_THE_LIMIT.format(folder=str(folder))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *written, problems, later = json.loads(proc.stdout)
    assert written == ["cam/small.jpg", None, 1]
    assert problems == ["recording: 1 clip or thumbnail write(s) failed, the last 60 s ago: thumbnail of event big: "
                        f"OSError: [Errno 27] File too large: '{folder / 'cam' / 'big.jpg'}'"] and later == []
    assert "thumbnail of event big: cannot write" in proc.stderr and "Traceback" not in proc.stderr
    # the one that fitted is whole; of the other, neither a truncated JPEG nor its temporary file
    assert os.listdir(folder / "cam") == ["small.jpg"]
    assert (folder / "cam" / "small.jpg").read_bytes()[-2:] == b"\xff\xd9"


def closed(store: EventStore, eid: str, start: float, *, clip: bool, folder) -> None:
    store.opened(Event(eid, "rule", "cam", "label", start, 0.9, 0.8), now=start)
    store.closed(Event(eid, "rule", "cam", "label", start, 0.9, 0.8, end_ts=start + 10), now=start + 10)
    if clip:
        (folder / "cam").mkdir(parents=True, exist_ok=True)
        (folder / "cam" / f"{eid}.mp4").write_bytes(bytes(100))
        store.set_files(eid, clip=f"cam/{eid}.mp4", clip_bytes=100)


def test_retention_deletes_old_events_with_a_clip_or_not(tmp_path):
    folder = tmp_path / "events"
    store = EventStore(str(tmp_path / "events.db"))
    now = 100 * DAY
    closed(store, "old-clip", now - 20 * DAY, clip=True, folder=folder)
    closed(store, "old-bare", now - 15 * DAY, clip=False, folder=folder)
    closed(store, "new-bare", now - 1 * DAY, clip=False, folder=folder)
    rec = Recorder(RecordingConfig(dir=str(folder), retention_days=14.0), supervisor=Supervisor())
    assert rec.prune(store, now) == 2
    assert [e["id"] for e in store.query()] == ["new-bare"]
    assert not (folder / "cam" / "old-clip.mp4").exists()
    store.close()


def test_max_gb_deletes_the_oldest_clips_not_an_event_whose_clip_is_missing(tmp_path):
    folder = tmp_path / "events"
    store = EventStore(str(tmp_path / "events.db"))
    now = 100 * DAY
    for i, eid in enumerate(("missing", "a", "b")):
        closed(store, eid, now - DAY + i, clip=True, folder=folder)
    (folder / "cam" / "missing.mp4").unlink()  # deleted by hand: it takes no room
    rec = Recorder(RecordingConfig(dir=str(folder), max_gb=150 / 2**30), supervisor=Supervisor())
    assert rec.prune(store, now) == 1
    assert [(e["id"], e["clip"]) for e in sorted(store.query(), key=lambda e: e["id"])] == [
        ("b", "cam/b.mp4"), ("missing", None)]
    assert sorted(p.name for p in (folder / "cam").iterdir()) == ["b.mp4"]
    store.close()


def test_events_age_out_when_nothing_is_recorded(tmp_path):
    db = str(tmp_path / "events.db")
    now = 100 * DAY
    store = EventStore(db)
    closed(store, "old", now - 3 * DAY, clip=False, folder=tmp_path)
    closed(store, "new", now - DAY / 2, clip=False, folder=tmp_path)
    store.close()
    manager = EventManager(rules=(RuleConfig(name="pour", labels=("pouring",)),), notify=NotifyConfig(),
                           recording=RecordingConfig(enabled=False, retention_days=2.0, dir=str(tmp_path / "none")),
                           db=db, classes=["pouring"], supervisor=Supervisor(), publish=lambda m: None,
                           clock=lambda: now)
    manager.start(["cam"])
    manager.observe("cam", {"label": "pouring", "score": 0.9, "uncertain": False, "window": {"end_ts": now}})
    assert manager.flush()
    assert [e["id"] for e in manager.store.query()] == ["new"]
    closed(manager.store, "empty", now, clip=True, folder=tmp_path / "none")
    (tmp_path / "none" / "cam" / "empty.mp4").write_bytes(b"")  # a 0-byte file is never served as a clip
    assert manager.file_of("empty", "clip") is None
    manager.close()


def test_after_a_cooldown_the_event_and_its_clip_start_with_the_activity(tmp_path):
    """An activity that began during the cooldown: its event is dated from its first label, and
    its clip's pre_seconds (1 s) count from there, not from when the cooldown ended."""
    from test_events_delete import Rig
    from test_recording import FPS, T0, frames_of, h264

    rule = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0, cooldown_seconds=4.0)
    rig = Rig(tmp_path, h264(tmp_path / "cam.mp4", 16.0), rule)
    rig.labels("pouring", 2.0)  # the first event: 0.25 to 2.0, then a cooldown to 6.0
    rig.labels("walking", 3.5)
    rig.labels("pouring", 9.0)  # from 3.75: 5.25 s of activity, its event opens at 6.0
    rig.labels("walking", 14.0)  # it ends at 9.0; its clip runs on to 11.0 (post_seconds 2)
    first, second = rig.opened()
    rig.manager.close()
    rig.play.source.close()
    store = EventStore(rig.db)
    row = store.get(second)
    store.close()
    assert (row["start_ts"] - T0, row["end_ts"] - T0) == (3.75, 9.0)
    # from the keyframe at 2.0 (at or before 3.75 - 1 s) to 11.0
    assert abs(frames_of(rig.folder / row["clip"]) / FPS - 9.0) <= 1.0 / FPS


def test_the_api_names_only_the_files_an_event_has():
    """No clip recorded, no thumbnail yet: ``null``, not an address that answers 404."""
    from streamrec.events.store import Event, EventStore, row_event

    store = EventStore(":memory:")
    try:
        store.opened(Event("e1", "r", "cam", "squat", 100.0, 0.9, 0.8), now=100.0)
        store.opened(Event("e2", "r", "cam", "squat", 200.0, 0.9, 0.8), clip="e2.mp4", now=200.0)
        first, second = row_event(store.get("e1")), row_event(store.get("e2"))
        assert (first["clip"], first["thumbnail"], first["has_clip"]) == (None, None, False)
        assert (second["clip"], second["thumbnail"], second["has_clip"]) == ("/api/events/e2/clip.mp4", None, True)
        store.set_files("e2", thumbnail="e2.jpg")
        assert row_event(store.get("e2"))["thumbnail"] == "/api/events/e2/thumb.jpg"
    finally:
        store.close()


def test_retention_keeps_the_files_of_events_it_keeps_however_old_the_files(tmp_path):
    """An event longer than its clip (max_seconds) outlives the clip file's age: the sweep of
    files no event points to must not take its clip and thumbnail."""
    import os
    import time

    from streamrec.events.clipfiles import ClipFolder
    from streamrec.events.store import Event, EventStore

    (tmp_path / "cam").mkdir()
    store = EventStore(":memory:")
    now = time.time()
    still_open = Event("1700000000-0badf00d", "r", "cam", "l", now - 7200, 0.9, 0.8)
    store.opened(still_open, clip="cam/1700000000-0badf00d.mp4")
    ended = Event("1700000001-0badf00e", "r", "cam", "l", now - 7200, 0.9, 0.8)
    store.opened(ended, clip="cam/1700000001-0badf00e.mp4")
    ended.end_ts = now - 600
    store.closed(ended)
    names = ["1700000000-0badf00d.mp4", "1700000000-0badf00d.jpg", "1700000001-0badf00e.mp4",
             "1700000001-0badf00e.jpg", "1700000002-0badf00f.mp4"]  # the last one: no event points to it
    for name in names:
        (tmp_path / "cam" / name).write_bytes(b"x" * 1000)
        os.utime(tmp_path / "cam" / name, (now - 7000, now - 7000))
    store.set_files("1700000001-0badf00e", thumbnail="cam/1700000001-0badf00e.jpg")
    assert ClipFolder(tmp_path).prune(store, cutoff=now - 3600, max_bytes=float("inf"), active=set()) == 0
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == sorted(names[:4])
    store.close()


def test_the_api_says_an_event_has_no_clip_once_its_file_is_gone(tmp_path):
    from streamrec.serve.routes import list_events, one_event

    clips = tmp_path / "clips"
    (clips / "cam").mkdir(parents=True)
    rule = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0)
    events = EventManager(rules=(rule,), notify=NotifyConfig(), recording=RecordingConfig(dir=str(clips)),
                          db=str(tmp_path / "events.db"), classes=["pouring", "walking"], supervisor=Supervisor(),
                          publish=lambda message: None)
    try:
        for n, kept in ((1, True), (2, False), (3, "part")):  # a clip on disk, one removed, one being written
            ev = Event(f"170000000{n}-0badf00{n}", "pour", "cam", "pouring", 1000.0 + n, 0.9, 0.8)
            events.store.opened(ev, clip=f"cam/{ev.id}.mp4", now=1000.0)
            events.store.set_files(ev.id, thumbnail=f"cam/{ev.id}.jpg", clip_bytes=5)
            if kept:
                (clips / "cam" / (f"{ev.id}.mp4" + (".part" if kept == "part" else ""))).write_bytes(b"clip!")
                (clips / "cam" / f"{ev.id}.jpg").write_bytes(b"\xff\xd8\xff\xd9")
        got = {e["id"][-1]: (e["has_clip"], e["clip_bytes"], e["thumbnail"] is not None)
               for e in list_events(events, {}).body["events"]}
        assert got == {"1": (True, 5, True), "2": (False, 0, False), "3": (True, 5, True)}
        one = {n: one_event(events, f"170000000{n}-0badf00{n}").body for n in "123"}  # GET /api/events/ID: the same
        assert {n: (e["has_clip"], e["clip_bytes"], e["thumbnail"] is not None) for n, e in one.items()} == got
        answers = {n: (r.status, r.body if r.status == 404 else None) for n in "123"
                   for r in [one_event(events, f"170000000{n}-0badf00{n}", "clip.mp4")]}
        assert answers == {"1": (200, None), "2": (404, {"error": "event '1700000002-0badf002' has no clip.mp4"}),
                           "3": (404, {"error": "the clip.mp4 of event '1700000003-0badf003' is still being written "
                                                "(until the event ends, and a few seconds on)"})}
    finally:
        events.close()


FULL_DISK = """
import logging
from pathlib import Path
logging.basicConfig(format="%(levelname)s %(message)s")
from streamrec.events.clipfiles import check_writable
check_writable(Path(sys.argv[1]) / "clips")
print("started")
"""


def test_a_recording_folder_on_a_full_disk_is_a_warning_not_a_refusal(tmp_path):
    """A restart (systemd's, say) while the disk is full must not take the labels down: a 64 KiB
    file system, filled, in a mount namespace of its own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} && (dd if=/dev/zero of={disk}/fill bs=4k count=64 || true) "
              f"&& {sys.executable} -c 'import sys\n{FULL_DISK}' {disk}")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "started\n"
    assert f"WARNING [recording] dir {disk}/clips: No space left on device; clips are written once there is room" \
        in proc.stderr.splitlines()


def test_past_max_gb_files_no_event_points_to_go_before_any_event(tmp_path):
    """Clips of another database (switched to PostgreSQL, history.db lost) count against max_gb:
    deleting events for the room they take would empty the folder of every event the page shows."""
    from streamrec.events.clipfiles import ClipFolder

    folder = tmp_path / "events"
    store = EventStore(str(tmp_path / "events.db"))
    ids = [f"{2000 + i}-0000000{i}" for i in range(5)]
    for i, eid in enumerate(ids):
        closed(store, eid, 100 * DAY + i, clip=True, folder=folder)
    orphan = folder / "cam" / "1000-0badf00d.mp4"  # no event of this database points to it
    orphan.write_bytes(bytes(400))
    os.utime(orphan, (1000.0, 1000.0))
    other = folder / "cam" / "holiday.mp4"  # not named as an event's: never deleted
    other.write_bytes(bytes(50))
    assert ClipFolder(folder).prune(store, cutoff=0.0, max_bytes=550, active=set()) == 0
    assert sorted(e["id"] for e in store.query()) == ids
    assert not orphan.exists() and other.exists()
    store.close()


def test_retention_keeps_a_gigabyte_of_the_disk_free_whatever_max_gb_allows(tmp_path):
    """A disk smaller than max_gb (a 16 GB card and the default 20) fills up before the folder
    reaches max_gb: the oldest clips go while less than MIN_FREE_BYTES is free."""
    from streamrec.events.clipfiles import MIN_FREE_BYTES, ClipFolder

    folder = tmp_path / "events"
    store = EventStore(str(tmp_path / "events.db"))
    for i in range(5):
        closed(store, f"e{i}", 100 * DAY + i, clip=True, folder=folder)
    short = ClipFolder(folder, free=lambda path: MIN_FREE_BYTES - 150)  # 150 bytes short of the floor
    assert short.prune(store, cutoff=0.0, max_bytes=float("inf"), active={"e0"}) == 2  # e0's clip is being written
    assert sorted(e["id"] for e in store.query()) == ["e0", "e3", "e4"]
    roomy = ClipFolder(folder, free=lambda path: MIN_FREE_BYTES)
    assert roomy.prune(store, cutoff=0.0, max_bytes=float("inf"), active=set()) == 0
    store.close()


def test_a_camera_folder_linked_to_another_disk_is_counted_served_and_pruned(tmp_path):
    """``<dir>/cam`` a link to another disk: its clips count against max_gb and go with their
    events (they were left on that disk for good); a file that is itself a link out is refused."""
    from streamrec.events.clipfiles import ClipFolder

    folder, other_disk = tmp_path / "events", tmp_path / "big-disk" / "cam"
    other_disk.mkdir(parents=True)
    folder.mkdir()
    (folder / "cam").symlink_to(other_disk)
    store = EventStore(str(tmp_path / "events.db"))
    for i in range(3):
        closed(store, f"e{i}", 100 * DAY + i, clip=True, folder=folder)
        (folder / "cam" / f"e{i}.jpg").write_bytes(bytes(10))
        store.set_files(f"e{i}", thumbnail=f"cam/e{i}.jpg")
    secret = tmp_path / "secret.txt"
    secret.write_text("not a clip")
    (folder / "cam" / "leak.mp4").symlink_to(secret)
    clips = ClipFolder(folder)
    assert clips.total_bytes() == 330
    assert clips.inside("cam/e2.mp4") == folder / "cam" / "e2.mp4" and clips.inside("cam/leak.mp4") is None
    assert clips.prune(store, cutoff=0.0, max_bytes=150, active=set()) == 2
    assert sorted(p.name for p in other_disk.iterdir()) == ["e2.jpg", "e2.mp4", "leak.mp4"]
    store.close()


def test_a_start_recovers_the_clips_a_killed_process_left_of_a_camera_no_longer_configured(tmp_path):
    """Recovered only when the camera's ring was made, a clip of a camera since removed from the
    config (or no longer watched by a rule) stayed a .part: listed, never playable, never pruned."""
    folder = tmp_path / "events"
    (folder / "gone").mkdir(parents=True)
    (folder / "gone" / "1000-0badf00d.mp4.part").write_bytes(b"fragments")
    (folder / "gone" / "1001-0badf00d.mp4.part").write_bytes(b"")  # nothing was written: deleted
    manager = EventManager(rules=(RuleConfig(name="pour", labels=("pouring",)),), notify=NotifyConfig(),
                           recording=RecordingConfig(dir=str(folder)), db=str(tmp_path / "events.db"),
                           classes=["pouring"], supervisor=Supervisor(), publish=lambda m: None)
    try:
        assert sorted(p.name for p in (folder / "gone").iterdir()) == ["1000-0badf00d.mp4"]
        assert (folder / "gone" / "1000-0badf00d.mp4").read_bytes() == b"fragments"
    finally:
        manager.close()
