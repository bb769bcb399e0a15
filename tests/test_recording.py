"""Event clips copied from the source's compressed packets: real H.264 files played through a
real PyAVSource (and a CaptureThread) into a PacketRing, remuxed into fragmented MP4 with no
decode and no encode; a killed writer, a full disk, retention and the ring's byte bound."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import ROOT, wait_until
from streamrec.event_config import RecordingConfig
from streamrec.events.clipfiles import path_part
from streamrec.events.clipwriter import ClipWriter
from streamrec.events.recording import Recorder
from streamrec.events.store import Event, EventStore
from streamrec.live.capture import CaptureThread
from streamrec.live.packets import PacketRing
from streamrec.live.ring import FrameRing
from streamrec.live.sources import PyAVSource, SourceSpec, WebcamSource
from streamrec.models.preprocess import FramePreprocessor
from streamrec.models.registry import model_spec
from streamrec.supervision import Supervisor

FPS = 30
T0 = 1_000_000.0  # the virtual wall clock of the played files


def h264(path: Path, seconds: float, *, gop: int = FPS, size: tuple[int, int] = (320, 240), bframes: int = 0) -> Path:
    """An H.264 .mp4 with a keyframe every ``gop`` frames (and ``bframes`` B-frames in a row):
    a square moving over noise."""
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"preset": "ultrafast", "crf": "30", "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes)}
        for i in range(int(seconds * FPS)):
            img = base.copy()
            x = (i * 4) % (w - 40)
            img[h // 3: h // 3 + 40, x: x + 40] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            out.mux(s.encode(f))
        out.mux(s.encode())
    return path


class Player:
    """Plays a file through a PyAVSource tapped by ``ring`` on a virtual clock: packet ``i``
    comes in at ``T0 + i / FPS``."""

    def __init__(self, path: Path, ring: PacketRing, now: list[float]) -> None:
        self.source = PyAVSource(SourceSpec.parse(str(path)), packet_ring=ring)
        self.frames = iter(self.source.frames())
        self.now = now
        self.index = 0
        now[0] = T0

    def until(self, seconds: float) -> None:
        """Play the frames before ``T0 + seconds`` (or to the end)."""
        while self.index < round(seconds * FPS) and next(self.frames, None) is not None:
            self.index += 1
            self.now[0] = T0 + self.index / FPS


def codec_of(path: Path) -> tuple:
    with av.open(str(path)) as c:
        ctx = c.streams.video[0].codec_context
        return ctx.name, ctx.width, ctx.height, bytes(ctx.extradata or b"")


def frames_of(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def recording(tmp_path: Path, **kw) -> RecordingConfig:
    return RecordingConfig(**{"pre_seconds": 2.0, "post_seconds": 1.0, "dir": str(tmp_path / "events"), **kw})


def recorder(tmp_path: Path, now: list[float], **kw) -> tuple[Recorder, dict[str, tuple]]:
    """A Recorder of ``recording(tmp_path, **kw)`` on the virtual clock ``now``, and the clips it
    finished: event id -> (path, bytes)."""
    done: dict[str, tuple] = {}
    rec = Recorder(recording(tmp_path, **kw), supervisor=Supervisor(), clock=lambda: now[0],
                   on_done=lambda eid, rel, size: done.setdefault(eid, (rel, size)))
    return rec, done


@pytest.fixture(scope="module")
def clip12(tmp_path_factory) -> Path:
    return h264(tmp_path_factory.mktemp("src") / "cam.mp4", 12.0)


def test_clips_are_remuxed_fragmented_mp4_from_a_keyframe_before_the_event(clip12, tmp_path):
    now = [T0]
    rec, done = recorder(tmp_path, now)
    play = Player(clip12, rec.ring("rack-1"), now)
    play.until(1.5)
    # an event from 1.0 s: 2 s before it is before the file started (clamped to the first keyframe)
    assert rec.begin("early", "rack-1", T0 + 1.0) == "rack-1/early.mp4"
    play.until(2.5)
    rec.end("early", "rack-1", T0 + 2.0)  # the clip runs to 3.0
    play.until(6.0)
    # from 5.5: its clip starts at the keyframe at or before 3.5, the one at 3.0
    assert rec.begin("main", "rack-1", T0 + 5.5) == "rack-1/main.mp4"
    # the early clip's writer, a thread of its own, ends once it has copied the packets to 3.0
    wait_until(lambda: rec.stats()["clips_active"] == 1, "the early clip's writer to end", timeout=30)
    play.until(8.0)
    rec.end("main", "rack-1", T0 + 8.5)  # the clip runs to 9.5
    play.until(12.0)
    rec.close()
    rec.close()  # idempotent
    play.source.close()
    folder = tmp_path / "events"
    assert set(done) == {"early", "main"}
    for eid, seconds in (("early", 3.0), ("main", 6.5)):
        rel, size = done[eid]
        path = folder / rel
        assert size == path.stat().st_size > 0
        assert codec_of(path) == codec_of(clip12)  # same codec, size and extradata: no re-encode
        assert abs(frames_of(path) / FPS - seconds) <= 1.0 / FPS
        data = path.read_bytes()
        assert data.count(b"moof") >= int(seconds) and b"mvex" in data  # fragmented, a fragment per keyframe
    # pre + event + post: 2 + 3 + 1 = 6 s; 6.5 with the keyframe before the start
    stats = rec.stats()
    assert stats["clips_active"] == 0 and stats["clips_written"] == 2 and stats["write_errors"] == 0
    assert stats["bytes_written"] == sum(s for _, s in done.values())
    assert stats["rings"]["rack-1"]["dropped_packets"] == 0 and stats["rings"]["rack-1"]["generation"] == 1


def test_a_camera_removed_and_added_again_keeps_the_clip_it_is_writing(clip12, tmp_path):
    """Removing a camera drops its packet ring; adding it back makes a new one. The clip still
    being written (its post-roll) is not taken for one a killed process left behind."""
    now = [T0]
    rec, done = recorder(tmp_path, now, pre_seconds=0.0, post_seconds=1.0)
    play = Player(clip12, rec.ring("cam"), now)
    play.until(1.0)
    assert rec.begin("e", "cam", T0 + 1.0) == "cam/e.mp4"
    play.until(2.0)
    rec.end("e", "cam", T0 + 2.0)  # its clip runs to 3.0
    rec.drop_ring("cam")  # the camera removed...
    ring = rec.ring("cam")  # ...and added again, while the clip's writer still waits for its post-roll
    assert ring is not play.source.packet_ring and (tmp_path / "events" / "cam" / "e.mp4.part").exists()
    play.until(4.0)  # the writer reads the ring it started with
    wait_until(lambda: "e" in done, "the clip's writer to end", timeout=30)
    rec.close()
    play.source.close()
    rel, size = done["e"]
    assert rel == "cam/e.mp4" and size == (tmp_path / "events" / rel).stat().st_size > 0
    assert abs(frames_of(tmp_path / "events" / rel) / FPS - 3.0) <= 1.0 / FPS  # from the keyframe at 0.0 to 3.0


def test_a_clip_stops_at_max_seconds_and_when_the_source_reconnects(clip12, tmp_path):
    now = [T0]
    rec, done = recorder(tmp_path, now, pre_seconds=0.0, max_seconds=2.0)
    ring = rec.ring("cam")
    play = Player(clip12, ring, now)
    play.until(1.0)
    rec.begin("long", "cam", T0 + 1.0)  # never ended: max_seconds
    play.until(4.0)
    rec.begin("cut", "cam", T0 + 3.5)
    play.until(4.5)
    play.source.close()
    again = Player(clip12, ring, now)  # the source reopened: a new generation
    again.until(1.0)
    rec.close()
    again.source.close()
    assert abs(frames_of(tmp_path / "events" / done["long"][0]) / FPS - 2.0) <= 1.0 / FPS
    assert abs(frames_of(tmp_path / "events" / done["cut"][0]) / FPS - 1.5) <= 1.0 / FPS  # 3.0 to 4.5
    assert ring.stats()["generation"] == 2
    assert rec.begin("later", "cam", T0 + 20) is None  # closed



def record_one(tmp_path: Path, src: Path, *, begin: float, end: float, until: float) -> str:
    """Play ``src`` into camera "cam"'s ring on a virtual clock, record one event from ``begin`` to
    ``end`` (seconds into the file), play on to ``until``; the clip's path relative to the folder."""
    now = [T0]
    done: list[tuple] = []
    rec = Recorder(recording(tmp_path), supervisor=Supervisor(), clock=lambda: now[0], on_done=lambda *a: done.append(a))
    play = Player(src, rec.ring("cam"), now)
    play.until(begin)
    rec.begin("e", "cam", T0 + begin)
    play.until(end)
    rec.end("e", "cam", T0 + end)
    play.until(until)
    rec.close()
    play.source.close()
    [(_, rel, _)] = done
    return rel

def test_an_annex_b_stream_as_cameras_send_it_is_remuxed_too(clip12, tmp_path):
    """MPEG-TS (as an HTTP camera, and RTSP's H.264 in-band parameter sets): Annex B packets."""
    ts = tmp_path / "cam.ts"
    with av.open(str(clip12)) as i, av.open(str(ts), "w", format="mpegts") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(video=0):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    rel = record_one(tmp_path, ts, begin=4.5, end=5.0, until=7.0)  # from the keyframe at 2.0
    name, width, height, extradata = codec_of(tmp_path / "events" / rel)
    assert (name, width, height) == codec_of(clip12)[:3] and extradata  # avcC made from the in-band SPS/PPS
    assert frames_of(tmp_path / "events" / rel) == 4 * FPS


def test_b_frames_keep_their_order(tmp_path):
    src = h264(tmp_path / "cam.mp4", 6.0, bframes=2)
    with av.open(str(src)) as c:
        assert any(p.pts != p.dts for p in c.demux(video=0) if p.size)  # frames reordered: B-frames
    rel = record_one(tmp_path, src, begin=3.5, end=4.0, until=6.0)  # from the keyframe at 1.0
    with av.open(str(src)) as c:
        want = [f.to_ndarray(format="gray")[80, ::16] for f in c.decode(video=0)][FPS:]
    with av.open(str(tmp_path / "events" / rel)) as c:
        got = [(f.time, f.to_ndarray(format="gray")[80, ::16]) for f in c.decode(video=0)]
    assert [t for t, _ in got] == sorted(t for t, _ in got) and got[0][0] >= 0
    # the pictures from the keyframe at 1.0 on, in order, to about 5.0 (packets come in decode order: the
    # decoder holds back a frame or two, so the virtual clock dates them a little later)
    assert abs(len(got) - 4 * FPS) <= 5 and all(np.array_equal(a, b) for (_, a), b in zip(got, want))


@pytest.mark.parametrize("bframes", [0, 2])
def test_a_source_whose_times_go_back_keeps_every_packet_in_increasing_order(tmp_path, bframes):
    """A camera whose clock resets mid-clip (its times go back 50 frames at 2 s): no packet is
    dropped, the clip's decode times keep increasing."""
    src = h264(tmp_path / "cam.mp4", 4.0, bframes=bframes)
    now, done = [T0], []
    rec = Recorder(recording(tmp_path, pre_seconds=0.0), supervisor=Supervisor(), clock=lambda: now[0],
                   on_done=lambda *a: done.append(a))
    ring = rec.ring("cam")
    with av.open(str(src)) as c:
        ring.new_stream(c.streams.video[0])
        packets = [p for p in c.demux(video=0) if p.size]
        back = 50 * (packets[1].dts - packets[0].dts)
        for i, p in enumerate(packets):
            if i >= 2 * FPS:
                p.dts, p.pts = p.dts - back, p.pts - back
            now[0] = T0 + i / FPS
            ring.push(p, ts=now[0])
            if i == 1:
                rec.begin("e", "cam", T0)
    rec.end("e", "cam", T0 + 10.0)
    now[0] = T0 + 100.0  # past the clip's end: its writer finishes once it has written what came
    deadline = time.monotonic() + 20
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    rec.close()
    [(_, rel, _)] = done
    with av.open(str(tmp_path / "events" / rel)) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size]
    assert len(dts) == len(packets) and all(a < b for a, b in zip(dts, dts[1:]))


def test_a_raw_stream_without_timestamps_is_timed_by_arrival(clip12, tmp_path):
    raw = tmp_path / "cam.h264"
    with av.open(str(clip12)) as i, av.open(str(raw), "w", format="h264") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(video=0):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    now = [T0]
    done: list[tuple] = []
    rec = Recorder(recording(tmp_path, pre_seconds=1.0), supervisor=Supervisor(), clock=lambda: now[0],
                   on_done=lambda *a: done.append(a))
    play = Player(raw, rec.ring("cam"), now)
    play.until(3.5)
    rec.begin("e", "cam", T0 + 3.5)  # from the keyframe at 2.0
    play.until(4.0)
    rec.end("e", "cam", T0 + 4.0)
    play.until(6.0)
    rec.close()
    play.source.close()
    [(_, rel, _)] = done
    with av.open(str(tmp_path / "events" / rel)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert len(times) == 3 * FPS and times == sorted(times)
    assert abs(times[-1] - times[0] - (3 * FPS - 1) / FPS) < 0.01  # the pace they came in at


def test_a_writer_that_fell_behind_the_ring_goes_on_from_its_oldest_keyframe(clip12, tmp_path):
    """The ring dropped the packets a slow writer (a slow disk) had not read yet: the clip jumps to
    the oldest group of pictures still held, and decodes."""
    now = [T0]
    ring = PacketRing(clip12.stat().st_size // 6, clock=lambda: now[0], name="cam")  # about 2 s of it
    play = Player(clip12, ring, now)
    play.until(2.0)
    start = ring.clip_start(T0 + 0.5)
    assert start is not None and start.seq == 0
    play.until(8.0)
    held = ring.after(-1)
    assert held[0].keyframe and held[0].seq > 0 and ring.dropped_packets == held[0].seq
    writer = ClipWriter("e", "cam", ring, start, tmp_path / "e.mp4", max_seconds=60.0, clock=lambda: now[0])
    writer.stop_at = T0 + 7.5
    now[0] = T0 + 100  # nothing more comes: it finishes when it has written what is held
    writer.run()
    play.source.close()
    assert writer.error is None
    first = round((held[0].ts - T0) * FPS)
    assert frames_of(tmp_path / "e.mp4") == writer.packets == round(7.5 * FPS) - first


KILLED = """
import os, sys, time
sys.path[:0] = [{tests!r}]
import test_recording as t
from streamrec.events.recording import Recorder
from streamrec.supervision import Supervisor
now = [0.0]
rec = Recorder(t.recording(t.Path({tmp!r})), supervisor=Supervisor(), clock=lambda: now[0])
play = t.Player(t.Path({src!r}), rec.ring("cam"), now)
play.until(4.0)
path = t.Path({tmp!r}) / "events" / (rec.begin("e", "cam", t.T0 + 3.0) + ".part")
play.until(10.0)
deadline = time.monotonic() + 60
while path.read_bytes().count(b"moof") < 8 and time.monotonic() < deadline:
    time.sleep(0.02)
os._exit(3)
"""


@pytest.mark.slow
def test_a_clip_whose_writer_is_killed_plays_up_to_its_last_fragment(clip12, tmp_path):
    code = KILLED.format(tests=str(ROOT / "tests"), tmp=str(tmp_path), src=str(clip12))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    path = tmp_path / "events" / "cam" / "e.mp4"
    assert not path.exists()  # only a finished clip has the clip's name
    Recorder(recording(tmp_path), supervisor=Supervisor()).ring("cam")  # the next start recovers it
    assert not path.with_name("e.mp4.part").exists()
    assert path.read_bytes().count(b"moof") >= 8
    n = frames_of(path)  # from the keyframe at 1.0: 8 s of complete fragments at least, not the one still open
    assert 8 * FPS <= n <= 9 * FPS


DISK_FULL = """
import json, logging, resource, signal, sys
sys.path[:0] = [{tests!r}]
import test_recording as t
from streamrec.events.recording import Recorder
from streamrec.supervision import Supervisor
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
now = [0.0]
done = []
rec = Recorder(t.recording(t.Path({tmp!r})), supervisor=Supervisor(), clock=lambda: now[0],
               on_done=lambda *a: done.append(a))
play = t.Player(t.Path({src!r}), rec.ring("cam"), now)
play.until(3.0)
rec.begin("e", "cam", t.T0 + 2.0)
play.until(6.0)
rec.end("e", "cam", t.T0 + 5.0)
play.until(12.0)  # the labels (here, the frames) go on
rec.close()
print(json.dumps({{"frames": play.index, "stats": rec.stats(), "done": done}}))
"""


@pytest.mark.parametrize("room", ["some fragments", "no fragment"])
@pytest.mark.slow
def test_a_full_disk_ends_the_clip_with_one_error_line_and_a_count(clip12, tmp_path, room):
    limit = clip12.stat().st_size // 6 if room == "some fragments" else 2000  # 2000: the MP4's header, no more
    code = DISK_FULL.format(tests=str(ROOT / "tests"), tmp=str(tmp_path), src=str(clip12), limit=limit)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["frames"] == 12 * FPS
    assert out["stats"]["write_errors"] == 1 and out["stats"]["clips_active"] == 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "clip e of camera cam: cannot write" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    [(eid, rel, size)] = out["done"]
    assert not list((tmp_path / "events").rglob("*.part"))  # the clip is under its name, whole, or nowhere
    if room == "some fragments":
        assert eid == "e" and 0 < size <= limit  # what fitted is kept, cut back to its last whole fragment
        assert frames_of(tmp_path / "events" / rel) > 0
    else:
        assert (eid, rel, size) == ("e", None, 0)  # no picture fitted: no clip
        assert not (tmp_path / "events" / "cam" / "e.mp4").exists()


@pytest.mark.slow
def test_a_real_capture_thread_feeds_the_ring(tmp_path):
    """The tap through CaptureThread, dated by time.time(), with the first source opened up front."""
    src = h264(tmp_path / "cam.mp4", 3.0, gop=15)
    done: list[tuple] = []
    rec = Recorder(recording(tmp_path, pre_seconds=0.5, post_seconds=0.5), supervisor=Supervisor(),
                   on_done=lambda *a: done.append(a))
    spec = SourceSpec.parse(str(src))
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    stop = threading.Event()
    cap = CaptureThread(spec, FrameRing(64, pre.crop_shape, np.uint8), pre, stop_event=stop, first=PyAVSource(spec),
                        packet_ring=rec.ring("cam"), name="capture-recording-test")
    cap.start()
    deadline = time.monotonic() + 30
    while cap.frames < 45 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.time() - 0.2
    assert rec.begin("e", "cam", start) == "cam/e.mp4"
    time.sleep(0.3)
    end = time.time()
    rec.end("e", "cam", end)
    cap.join(30)
    stop.set()
    rec.close()
    [(eid, rel, size)] = done
    assert codec_of(tmp_path / "events" / rel) == codec_of(src)
    seconds = frames_of(tmp_path / "events" / rel) / FPS
    # pre 0.5 + the event + post 0.5, plus up to one keyframe interval (15 frames) before the pre-roll
    want = 0.5 + (end - start) + 0.5
    assert want - 2 / FPS <= seconds <= want + 15 / FPS + 2 / FPS, (seconds, want)


@pytest.mark.slow
def test_a_webcam_has_its_frames_encoded_for_clips(tmp_path):
    """OpenCV gives decoded frames: an encoder thread puts H.264 packets into the ring instead."""
    import cv2

    video = h264(tmp_path / "cam.mp4", 3.0)
    done: list[tuple] = []
    rec = Recorder(recording(tmp_path, pre_seconds=0.5, post_seconds=0.5), supervisor=Supervisor(),
                   on_done=lambda *a: done.append(a))
    spec = SourceSpec.parse("0")
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    stop = threading.Event()
    cap = CaptureThread(spec, FrameRing(64, pre.crop_shape, np.uint8), pre, stop_event=stop, name="capture-webcam-rec",
                        opener=lambda s: WebcamSource(s, device=lambda i: cv2.VideoCapture(str(video))),
                        packet_ring=rec.ring("webcam"))
    cap.start()
    deadline = time.monotonic() + 30
    while cap.frames < 60 and time.monotonic() < deadline:  # OpenCV reads the file as fast as it can
        time.sleep(0.01)
    begun = time.time()
    rel = rec.begin("e", "webcam", begun)
    rec.end("e", "webcam", begun)
    time.sleep(1.0)
    stop.set()
    cap.join(10)
    cap.encoder.join(10)
    rec.close()
    assert rel == "webcam/e.mp4" and [d[1] for d in done] == [rel]
    assert cap.encoder.stats()["encoded"] > 0
    name, width, height, extradata = codec_of(tmp_path / "events" / rel)
    assert (name, width, height) == ("h264", 320, 240) and extradata
    assert frames_of(tmp_path / "events" / rel) > 0
    assert rec.begin("e2", "no-such-camera", time.time()) is None


def packet(size: int, i: int, key: bool) -> av.Packet:
    p = av.Packet(bytes(size))
    p.pts = p.dts = i
    p.time_base, p.is_keyframe = Fraction(1, FPS), key
    return p


def test_the_ring_is_bounded_in_bytes_whole_groups_at_a_time(caplog):
    caplog.set_level(logging.WARNING, logger="streamrec.live.packets")  # whatever earlier tests did to levels
    now = [T0]
    ring = PacketRing(25_000, keep_s=2.0, clock=lambda: now[0], name="cam")
    held = []
    for i in range(100):
        now[0] = T0 + i / FPS
        ring.push(packet(1000, i, i % 10 == 0))
        held.append(ring.total_bytes)
    assert max(held) <= 25_000
    stats = ring.stats()
    kept = [p.pts for p in ring.after(-1)]
    assert kept[0] % 10 == 0 and kept == list(range(kept[0], 100))  # from a keyframe, all after it
    assert stats["packets"] == len(kept) and stats["bytes"] == 1000 * len(kept)
    assert stats["dropped_packets"] == 100 - len(kept) and stats["dropped_bytes"] == 1000 * (100 - len(kept))
    # 25 packets are 0.8 s of 30 fps, less than keep_s: said once
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
    assert "packet_ring_mb" in caplog.records[0].message
    ring.push(packet(0, 100, True))  # the empty packet that flushes a decoder: not kept
    assert ring.stats()["packets"] == len(kept)
    ring.clear()
    ring.push(packet(10, 101, False))  # nothing to decode it from
    assert ring.stats()["packets"] == 0 and ring.dropped_packets == stats["dropped_packets"] + 1


def test_thumbnails_are_jpegs_and_a_failure_is_counted(tmp_path):
    import cv2

    rec = Recorder(recording(tmp_path), supervisor=Supervisor())
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rel = rec.thumbnail("e1", "cam", rgb)
    assert rel == "cam/e1.jpg"
    bgr = cv2.imread(str(tmp_path / "events" / rel))
    assert bgr.shape == (48, 64, 3) and abs(int(bgr[..., 2].mean()) - 200) <= 3 and bgr[..., 0].mean() < 5
    (tmp_path / "events" / "blocked").write_text("a file where the camera's folder goes")
    assert rec.thumbnail("e2", "blocked", rgb) is None
    assert rec.stats()["write_errors"] == 1 and rec.stats()["thumbnails_written"] == 1
    assert path_part("..") == "_.." and rec.thumbnail("e3", "..", rgb) == "_../e3.jpg"


def stored(store: EventStore, folder: Path, eid: str, start: float, size: int) -> None:
    store.opened(Event(eid, "rule", "cam", "label", start, 0.9, 0.8), now=start)
    store.closed(Event(eid, "rule", "cam", "label", start, 0.9, 0.8, end_ts=start + 10), now=start + 10)
    (folder / "cam").mkdir(parents=True, exist_ok=True)
    (folder / "cam" / f"{eid}.mp4").write_bytes(bytes(size))
    (folder / "cam" / f"{eid}.jpg").write_bytes(bytes(100))
    store.set_files(eid, clip=f"cam/{eid}.mp4", thumbnail=f"cam/{eid}.jpg", clip_bytes=size)


def test_retention_deletes_old_clips_then_the_oldest_past_max_gb(tmp_path):
    day = 86400.0
    cfg = recording(tmp_path, retention_days=14.0, max_gb=2500 / 2**30)  # 2500 bytes
    rec = Recorder(cfg, supervisor=Supervisor())
    folder = tmp_path / "events"
    store = EventStore(str(tmp_path / "events.db"))
    now = 100 * day
    stored(store, folder, "ancient", now - 30 * day, 10)
    for i, eid in enumerate(("a", "b", "c", "d")):
        stored(store, folder, eid, now - day + i * 60, 1000)
    store.opened(Event("open", "rule", "cam", "label", now - 20 * day, 0.9, 0.8), clip="cam/open.mp4")
    (folder / "cam" / "open.mp4").write_bytes(bytes(10))
    orphans = [folder / "cam" / name for name in ("1700000000-0badf00d.mp4", "1700000000-0badf00d.jpg",
                                                  "1700000000-0badf00d.mp4.part", ".1700000000-0badf00d.jpg.k2f9_x.tmp")]
    others = [folder / "cam" / "holiday.mp4", folder / "cam" / "notes.txt"]  # not an event's: never deleted,
    for path in orphans + others:  # and no room they take costs an event its clip
        path.write_bytes(bytes(10**6 if path.name == "holiday.mp4" else 10))
        os.utime(path, (now - 20 * day, now - 20 * day))
    # 30 days old: by retention_days; then 4 x 1100 bytes + 20 > 2500: a and b, the oldest
    assert rec.prune(store, now) == 3
    assert {e["id"] for e in store.query()} == {"c", "d", "open"}
    assert sorted(p.name for p in (folder / "cam").iterdir()) == ["c.jpg", "c.mp4", "d.jpg", "d.mp4", "holiday.mp4",
                                                                  "notes.txt", "open.mp4"]
    assert rec.folder_bytes() == 2 * 1100 + 10 + 10**6 + 10  # c, d, open, holiday.mp4, notes.txt
    assert rec.prune(store, now) == 0
    store.close()


def test_close_writes_what_the_ring_holds_even_before_the_writer_read_it(clip12, tmp_path):
    now = [T0]
    done: list[tuple] = []
    rec = Recorder(recording(tmp_path, pre_seconds=2.0), supervisor=Supervisor(), clock=lambda: now[0],
                   on_done=lambda *a: done.append(a))
    ring = rec.ring("cam")
    play = Player(clip12, ring, now)
    play.until(6.0)
    rec.begin("e", "cam", now[0])
    rec.close()  # at once: the writer has only just opened its file
    play.source.close()
    held = ring.after(-1)
    start = max(p.ts for p in held if p.keyframe and p.ts <= now[0] - 2.0)  # the keyframe at 4.0
    [(_, rel, size)] = done
    assert size > 0 and frames_of(tmp_path / "events" / rel) == sum(1 for p in held if p.ts >= start) >= 2 * FPS


def vfr_mkv_with_b_frames(path: Path) -> Path:
    """4 s of H.264 in Matroska, 3 B-frames in a row, frames 33 to 57 ms apart (variable frame
    rate): its first packets come without a dts, as Matroska gives them."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: it makes the Matroska file with B-frames this test reads")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}", "-t", "4",
                    "-vf", rf"settb=1/1000,setpts=N/{FPS}/TB+0.012*mod(N\,3)/TB", "-fps_mode", "vfr",
                    "-enc_time_base", "1/1000", "-c:v", "libx264", "-preset", "ultrafast", "-bf", "3", "-g", str(FPS),
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=120)
    return path


def test_a_matroska_stream_with_b_frames_keeps_its_first_packets(tmp_path):
    src = vfr_mkv_with_b_frames(tmp_path / "cam.mkv")
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
        assert packets[0].dts is None and packets[1].dts is None  # what the ring has to make up for
        shown = sorted(p.pts for p in packets)
    now = [T0]
    done: list[tuple] = []
    rec = Recorder(recording(tmp_path, pre_seconds=0.0), supervisor=Supervisor(), clock=lambda: now[0],
                   on_done=lambda *a: done.append(a))
    play = Player(src, rec.ring("cam"), now)
    play.until(0.1)
    rec.begin("e", "cam", T0)
    play.until(10.0)  # to the end of the file
    rec.close()
    play.source.close()
    [(_, rel, _)] = done
    with av.open(str(tmp_path / "events" / rel)) as c:
        out = [p for p in c.demux(video=0) if p.size]
    with av.open(str(tmp_path / "events" / rel)) as c:
        tb = c.streams.video[0].time_base
        decoded = [f.pts for f in c.decode(video=0)]
    assert len(out) == len(packets) == len(decoded)  # every packet, the first group of pictures included
    dts = [p.dts for p in out]
    assert all(a < b for a, b in zip(dts, dts[1:]))  # decode times increase
    # the pictures come out in the source's order and spacing (variable, shifted to the clip's start)
    assert [round((t - decoded[0]) * tb * 1000) for t in decoded] == [t - shown[0] for t in shown]


def test_a_clip_ends_when_the_clock_is_set_back_during_it(clip12, tmp_path):
    """The clock set back an hour (NTP on a board without a clock), the packets' dates with it: a
    clip of at most max_seconds was written until its dates had caught up, an hour later."""
    from conftest import wait_until

    now = [T0]
    rec, done = recorder(tmp_path, now, pre_seconds=0.0, max_seconds=3.0)
    play = Player(clip12, rec.ring("cam"), now)
    play.until(1.0)
    rec.begin("e", "cam", T0 + 1.0)  # at most 3 s: dated up to T0 + 4, never reached
    for i, _ in enumerate(play.frames):  # the rest of the file, an hour earlier
        now[0] = T0 - 3600.0 + i / FPS
    try:
        wait_until(lambda: "e" in done, "the clip's end", timeout=20)
    finally:
        rec.close()
        play.source.close()
    assert frames_of(tmp_path / "events" / done["e"][0]) == 12 * FPS  # what came (at once here) is in it
