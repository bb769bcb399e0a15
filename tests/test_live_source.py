"""Live sources: the decoder holds no frames back, and a frame is dated when its data came in."""

from __future__ import annotations

import functools
import logging
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, network_capture_parts, write_video
from streamrec.errors import SourceError
from streamrec.live.capture import CaptureThread
from streamrec.models.registry import model_spec
from streamrec.models.preprocess import FramePreprocessor
from streamrec.live.ring import FrameRing
from streamrec.live.sources import PyAVSource, Source, SourceSpec, decoder_threading


@pytest.fixture
def http_stream(tmp_path):
    """A 2 s H.264 MPEG-TS stream (no B-frames) served over HTTP on 127.0.0.1, port 0."""
    write_video(tmp_path / "cam.ts", seconds=2.0, fps=30, size=(320, 240))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="http-stream", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cam.ts", tmp_path / "cam.ts"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def held_back(source: Source) -> list[int]:
    """For every frame yielded: packets read minus frames yielded (what the decoder holds)."""
    held = []
    for i, _ in enumerate(source.frames()):
        held.append(source.packets - (i + 1))
    return held


def test_network_stream_frames_leave_the_decoder_with_their_packet(http_stream):
    url, _ = http_stream
    with PyAVSource(SourceSpec.parse(url)) as src:
        held = held_back(src)
    assert len(held) == 60
    assert set(held) == {0}  # every frame out as soon as its packet is in


def test_small_files_decode_in_one_thread_and_large_files_keep_frame_threads(http_stream, tmp_path):
    # Files are paced by their timestamps, so frame threads (which hold frames) cost no
    # latency there; small frames are decoded in the capture thread alone all the same (a
    # hand-off costs what decoding does). The large file shows that the check can fail.
    _, small = http_stream
    with PyAVSource(SourceSpec.parse(str(small))) as src:
        held = held_back(src)
        threads = src.decoder_threads[0]
    assert (len(held), set(held), threads) == (60, {0}, 1)
    large = write_video(tmp_path / "large.ts", seconds=1.0, fps=30, size=(1280, 720))
    with PyAVSource(SourceSpec.parse(str(large))) as src:
        held = held_back(src)
        kind = src.decoder_threads[1]
    assert len(held) == 30
    assert str(kind).endswith("AUTO") and max(held) >= 1


@pytest.mark.parametrize(("size", "live", "expected"), [
    ((340, 256), False, ("SLICE", 1)), ((640, 480), True, ("SLICE", 1)), ((641, 480), True, ("SLICE", 0)),
    ((1920, 1080), False, ("AUTO", 0)), ((1920, 1080), True, ("SLICE", 0)), ((0, 0), True, ("SLICE", 0)),
])
def test_decoder_threading_by_frame_size_and_liveness(size, live, expected):
    assert decoder_threading(*size, live=live) == expected


class LateLiveSource(Source):
    """A live source whose every frame's data came in ``delay`` seconds before it is yielded
    (what decoding and colour conversion take): ``arrived`` is set back, nothing sleeps."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay, self.fps = n, delay, 30.0
        self.arrivals: list[float] = []

    def frames(self):
        for i in range(self.n):
            self.arrived = time.perf_counter() - self.delay
            self.arrivals.append(self.arrived)
            yield np.full((120, 160, 3), i, np.uint8), None

    def close(self) -> None:
        pass


def test_capture_dates_a_live_frame_by_when_its_data_came_in():
    spec, pre, ring = network_capture_parts(8)
    stop = threading.Event()
    clock_reads: list[float] = []  # what the capture's clock said for each frame
    seen: list[tuple[int, float, float]] = []  # (frame's value, its stamp, perf_counter once it was in the ring)

    def clock() -> float:
        clock_reads.append(1000.0 + len(clock_reads))  # a clock of its own: one second per read
        return clock_reads[-1]

    def on_frame(rgb, ts) -> None:
        seen.append((int(rgb[0, 0, 0]), ts, time.perf_counter()))
        if len(seen) == 3:
            stop.set()

    source = LateLiveSource(3, 0.05)
    cap = CaptureThread(spec, ring, pre, stop_event=stop, first=source, clock=clock, on_frame=on_frame,
                        name="capture-test")
    cap.start()
    cap.join(timeout=30)
    assert not cap.is_alive() and cap.state == "stopped"
    assert ring.written == 3 and [v for v, _, _ in seen] == [0, 1, 2]
    assert clock_reads[:3] == [1000.0, 1001.0, 1002.0]  # the live path reads the clock once per frame
    for (_, ts, in_ring), read, arrived in zip(seen, clock_reads, source.arrivals):
        # dated back from the clock's reading by the time since the data came in: at least the
        # 50 ms the source reports, and no more than had passed when the frame was in the ring
        assert 0.05 <= read - ts <= in_ring - arrived


class ShortFile(Source):
    """A file of ``n`` frames at ``fps``, each with its presentation time."""

    def __init__(self, n: int, fps: float = 10.0) -> None:
        self.n, self.fps = n, fps

    def frames(self):
        for i in range(self.n):
            yield np.full((120, 160, 3), i, np.uint8), i / self.fps

    def close(self) -> None:
        pass


def _looped_capture(n: int, opened: list[int], seen: list[tuple[int, float]] | None = None, fps: float = 10.0):
    """A capture looping a file of ``n`` frames at 10 fps; with ``seen``, it records (value, stamp)
    of each frame and stops after 7. Its clock moves 0.1 s per read, so the pacing never waits."""
    spec = SourceSpec("/clips/short.mp4", "file")
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    ring = FrameRing(32, pre.crop_shape, np.uint8)
    stop = threading.Event()
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return 1000.0 + 0.1 * (reads[0] - 1)

    def opener(_spec):
        opened.append(n)
        return ShortFile(n, fps)

    def on_frame(rgb, ts) -> None:
        seen.append((int(rgb[0, 0, 0]), ts))
        if len(seen) == 7:
            stop.set()

    return CaptureThread(spec, ring, pre, stop_event=stop, loop=True, opener=opener, clock=clock, name="capture-loop-test",
                         on_frame=on_frame if seen is not None else None), ring


@pytest.mark.parametrize("n", [1, 3])
def test_a_looped_file_keeps_its_pace_across_the_loop(n):
    """The first frame of each pass comes one frame time after the last one: a still image
    (one frame) loops at its frame rate instead of reopening the file as fast as it can."""
    opened: list[int] = []
    seen: list[tuple[int, float]] = []
    cap, ring = _looped_capture(n, opened, seen)
    cap.start()
    cap.join(timeout=30)
    assert not cap.is_alive()
    stamps = [ts for _, ts in seen]
    assert [round(b - a, 6) for a, b in zip(stamps, stamps[1:])] == [0.1] * 6
    assert [v for v, _ in seen] == [i % n for i in range(7)]
    assert len(opened) == -(-7 // n)  # one open per pass; stopped on the 7th frame


def test_a_looped_one_frame_file_that_says_1000_fps_shows_its_frame_40_ms_a_pass():
    """Not reopened a thousand times a second (a core spun on it): a pass lasts 40 ms at least."""
    opened: list[int] = []
    seen: list[tuple[int, float]] = []
    cap, _ = _looped_capture(1, opened, seen, fps=1000.0)
    cap.start()
    cap.join(timeout=30)
    stamps = [ts for _, ts in seen]
    assert not cap.is_alive() and [round(b - a, 6) for a, b in zip(stamps, stamps[1:])] == [0.04] * 6


def test_a_looped_file_with_no_frame_ends_instead_of_spinning():
    opened: list[int] = []
    cap, ring = _looped_capture(0, opened)
    cap.start()
    cap.join(timeout=5)
    assert not cap.is_alive()
    assert (cap.state, cap.error, len(opened), ring.written) == (
        "ended", "/clips/short.mp4: no decodable video frames", 1, 0)


COUNT_THREADS = r"""
import sys
from streamrec.live.sources import PyAVSource, SourceSpec


def last_pid() -> int:  # the last process/thread id of this PID namespace: every thread started raises it
    with open("/proc/sys/kernel/ns_last_pid") as f:
        return int(f.read())


with PyAVSource(SourceSpec.parse(sys.argv[1])) as src:
    it = src.frames()
    first, _ = next(it)  # the decoder's own threads (large frames) have started by now
    before = last_pid()
    rest = [rgb for rgb, _ in it]
    started = last_pid() - before
print(first.shape[1], first.shape[0], len(rest), started)
"""


def _threads_started_while_decoding(path) -> tuple[tuple[int, int], int, int, bool]:
    """((width, height), frames after the first, threads started meanwhile, whether only the
    decoding process's own threads were counted). The decoding runs in a child in a PID
    namespace of its own, where thread ids count its threads alone; where the machine refuses
    a namespace, the child counts every thread started on the machine meanwhile."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", COUNT_THREADS, str(path)]
    own = shutil.which("unshare") is not None
    if own:
        r = subprocess.run(["unshare", "--user", "--map-root-user", "--pid", "--fork", *cmd], capture_output=True,
                           text=True, timeout=120, env=env)
        own = not (r.returncode != 0 and r.stderr.startswith("unshare:"))  # no namespaces here: count machine-wide
    if not own:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    w, h, rest, started = (int(x) for x in r.stdout.split())
    return (w, h), rest, started, own


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/ns_last_pid"), reason="Linux only")
@pytest.mark.parametrize("size", [(340, 256), (1280, 720)])
def test_frames_reach_rgb_without_starting_threads(tmp_path, size):
    """Capture converts every frame to RGB; PyAV's default conversion starts and ends a
    thread per core for each frame (hundreds here). One thread per frame or more fails."""
    path = write_video(tmp_path / "v.mp4", seconds=4.0, fps=30, size=size)
    shape, rest, started, own = _threads_started_while_decoding(path)
    assert shape == size and rest == 119
    if own:
        assert started == 0, started
    else:  # other processes start threads too: the bound is the failure's, one thread per frame
        assert started < rest, started


@pytest.mark.slow
def test_a_live_stream_whose_video_stops_while_its_audio_goes_on_is_a_stall(tmp_path):
    """An IP camera's picture stops and its sound goes on: FFmpeg's read timeout is reset by every
    packet, so the capture read on, 'running' at 0 fps, and did not stop when asked."""
    ts = tmp_path / "av.ts"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=d=20:s=160x120:r=25",
                    "-f", "lavfi", "-i", "sine=d=20", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-f", "mpegts", str(ts)], check=True, timeout=120)
    data = ts.read_bytes()
    packets = [data[i:i + 188] for i in range(0, len(data), 188)]
    video = [i for i, p in enumerate(packets) if ((p[1] & 0x1F) << 8 | p[2]) == 0x100]  # the video's PID
    cut = set(video[len(video) // 10:])  # the picture stops after about 2 s; the sound goes on
    kept = [p for i, p in enumerate(packets) if i not in cut]
    head, audio = b"".join(kept[:10]), kept[10:]
    pace = 20.0 / (len(audio) / 10)

    class Camera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            try:
                self.wfile.write(head)
                for i in range(0, len(audio), 10):  # in real time: 2 s of pictures, then the sound alone
                    self.wfile.write(b"".join(audio[i:i + 10]))
                    self.wfile.flush()
                    time.sleep(pace)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from streamrec.retry import Backoff

    spec = SourceSpec.parse(f"http://127.0.0.1:{server.server_address[1]}/cam.ts", open_timeout_s=5, read_timeout_s=1)
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    stop = threading.Event()
    cap = CaptureThread(spec, FrameRing(32, pre.crop_shape, np.uint8), pre, stop_event=stop, name="capture-av",
                        backoff=Backoff(0.2, 0.5, jitter=0.0))
    cap.start()
    try:
        deadline = time.monotonic() + 12  # 2 s of pictures, then 1 s without: long before the stream's end (20 s)
        while (stats := cap.stats())["reconnects"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats["reconnects"] >= 1 and stats["frames"] >= 20, stats
        assert "no video for 1 s while its other streams go on" in (stats["error"] or ""), stats
    finally:
        stop.set()
        cap.join(5)
        server.shutdown()
        server.server_close()
    assert not cap.is_alive()  # it stops when asked, between packets


def test_a_capture_that_fails_reads_reconnecting_with_its_error_until_it_runs_again():
    """A bug in the capture loop: the supervisor starts it again after its backoff. Meanwhile the
    camera reads 'reconnecting' with what failed (it read 'stopped' with no error, as if closed)."""
    from conftest import wait_until
    from streamrec.supervision import Supervisor

    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    ring, stop, reopen = FrameRing(32, pre.crop_shape, np.uint8), threading.Event(), threading.Event()
    calls: list[int] = []

    def opener(_spec):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("decoder bug\nsecond line")
        reopen.wait(30)  # the test looks while the loop is being started again
        return ShortFile(1000)

    cap = CaptureThread(SourceSpec("/clips/gate.mp4", "file"), ring, pre, stop_event=stop, loop=True, opener=opener,
                        name="capture-gate", supervisor=Supervisor(backoff_s=0.01))
    cap.start()
    try:
        wait_until(lambda: len(calls) == 2, "the capture started again")
        assert cap.state == "reconnecting"
        assert cap.error == "capture failed (RuntimeError: decoder bug); starting it again"
        reopen.set()
        wait_until(lambda: cap.state == "running", "frames again")
        assert cap.error is None
    finally:
        reopen.set()
        stop.set()
        cap.join(30)
    assert not cap.is_alive() and cap.state == "stopped"


@pytest.mark.slow
def test_a_camera_that_drops_after_a_few_frames_waits_longer_each_time(caplog):
    """A few frames are no sign that the camera is back for good: its backoff goes on growing
    (it was reconnected every 0.25-0.5 s for ever)."""
    from streamrec.retry import Backoff

    spec = SourceSpec("rtsp://127.0.0.1:1/cam", "network")
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    stop, opened = threading.Event(), []

    def opener(_spec):
        opened.append(1)
        if len(opened) == 5:
            stop.set()
        return ShortFile(2)

    cap = CaptureThread(spec, FrameRing(32, pre.crop_shape, np.uint8), pre, stop_event=stop, opener=opener,
                        backoff=Backoff(base_s=0.1, cap_s=10.0, jitter=0.0), name="capture-flap")
    with caplog.at_level(logging.WARNING, logger="streamrec.live.capture"):
        cap.start()
        cap.join(timeout=30)
    delays = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "retrying in" in r.getMessage()]
    assert not cap.is_alive() and delays[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.8 s"]


@pytest.mark.slow
@pytest.mark.parametrize("rotate, turns", [("90", 1), ("180", 2), ("270", 3)])
def test_a_video_stored_sideways_is_read_upright(tmp_path, rotate, turns):
    """A phone's portrait clip is stored landscape with a display matrix: the model sees it as
    players (and FFmpeg) show it, not lying on its side."""
    plain = write_video(tmp_path / "plain.mp4", seconds=0.5, fps=10, size=(160, 96))
    turned = tmp_path / "turned.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}",
                    str(turned)], check=True, timeout=60)
    with PyAVSource(SourceSpec.parse(str(plain))) as a, PyAVSource(SourceSpec.parse(str(turned))) as b:
        frames = list(zip(a.frames(), b.frames()))
    assert len(frames) == 5
    for (flat, _), (upright, _) in frames:
        assert np.array_equal(upright, np.rot90(flat, turns))


@pytest.mark.parametrize("url, shown", [("rtsp://", "rtsp://"), ("rtsp://user:pw@/stream", "rtsp://user:***@/stream"),
                                        ("http://[::1/x", "http://[::1/x"), ("rtsps://:554/x", "rtsps://:554/x")])
def test_a_stream_url_without_a_host_is_refused_at_once(url, shown):
    """It used to start the page, then fail to connect ("Connection refused") and stop."""
    with pytest.raises(SourceError) as info:
        SourceSpec.parse(url)
    assert str(info.value) == f"--source: expected a URL with a host (rtsp://HOST/path), got {shown!r}"


@pytest.mark.slow
def test_one_repeated_timestamp_is_fixed_up_and_the_times_after_it_kept(tmp_path):
    """A variable-rate file (6 s at 5 fps, then 2 s at 60 fps) whose fourth frame repeats the
    third's time: that frame comes one frame time later, and every later frame keeps its own time
    (the whole rest of the stream used to be timed by index at the average rate: 8 s read as 5)."""
    from fractions import Fraction

    import av

    path = tmp_path / "vfr.mkv"
    times = [i * 0.2 for i in range(30)] + [6 + i / 60 for i in range(120)]
    times[3] = times[2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i % 255, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with PyAVSource(SourceSpec.parse(str(path))) as src:
        got = [pts for _, pts in src.frames()]
    assert len(got) == 150
    expected = list(times)
    expected[3] = times[2] + 1 / src.fps
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_a_live_stream_whose_packets_decode_into_no_picture_is_opened_again(tmp_path):
    """Packets go on arriving but none decodes (the stream's SPS/PPS lost, a codec switched): the
    capture read on 'running' at 0 fps, never reconnecting. Now it is a stall, after two stall
    timeouts of decode errors; a stream that decodes never is, however short its timeout."""
    import re

    import av

    path = tmp_path / "full.h264"
    with av.open(str(path), "w", format="h264") as out:
        s = out.add_stream("libx264", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i in range(1500):  # a minute: reading its packets takes longer than two stall timeouts of 1 ms
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i % 256, np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    parts = re.split(rb"(\x00\x00\x00\x01|\x00\x00\x01)", path.read_bytes())
    nosps = tmp_path / "nosps.h264"  # every NAL unit but the SPS (7) and PPS (8)
    nosps.write_bytes(b"".join(parts[i] + parts[i + 1] for i in range(1, len(parts) - 1, 2)
                               if parts[i + 1] and parts[i + 1][0] & 0x1F not in (7, 8)))
    live = SourceSpec(str(nosps), "network", read_timeout_s=0.001)  # a live stream's path through the reader
    source = PyAVSource(live)
    try:
        with pytest.raises(SourceError, match=r"packets arrive but none decodes into a picture \(\d+ decode errors"):
            for _ in source.frames():
                pass
    finally:
        source.close()
    source = PyAVSource(SourceSpec(str(path), "network", read_timeout_s=0.001))
    try:
        assert sum(1 for _ in source.frames()) == 1500 and source.decode_errors == 0
    finally:
        source.close()


def test_a_capture_started_again_after_a_failure_keeps_no_frame_from_before_and_counts_the_gap():
    """A step fails at the 20th frame; the supervisor starts the capture again: the frames before
    the gap leave the ring (no window spans it) and the gap is counted, so the camera's labels
    start anew however short it was."""
    from streamrec.supervision import Supervisor

    spec, pre, ring = network_capture_parts(64)
    stop = threading.Event()
    seen: list[float] = []

    def on_frame(rgb, ts) -> None:
        seen.append(ts)
        if len(seen) == 20:
            raise RuntimeError("a bug in a step")
        if len(seen) == 40:
            stop.set()

    ticks = iter(range(10**6))
    cap = CaptureThread(spec, ring, pre, stop_event=stop, clock=lambda: 1000.0 + next(ticks) / 30, on_frame=on_frame,
                        opener=lambda s: LateLiveSource(1000, 0.0), supervisor=Supervisor(backoff_s=0.0),
                        name="capture-test")
    cap.start()
    cap.join(timeout=30)
    assert not cap.is_alive() and cap.interruptions == 1 and len(seen) == 40
    window = ring.newest_window(16, 15.0, pad=True)
    assert window.start_ts >= seen[20], (window.start_ts, seen[19], seen[20])  # nothing of the first run


def test_a_short_gap_resets_the_labels_though_the_state_was_never_seen_reconnecting():
    """The inference worker samples the capture's state once per forward pass: a reconnect quicker
    than one went unseen, and the smoothing carried the old stream's labels into the new one."""
    from types import SimpleNamespace

    from streamrec.live.camera import Camera
    from streamrec.live.smoothing import LabelSmoother

    capture = SimpleNamespace(interruptions=0)
    smoother = LabelSmoother()
    cam = Camera.__new__(Camera)  # the parts reset_if_reconnected reads, without a source to open
    cam.capture, cam.streams, cam._gaps_seen = capture, {None: SimpleNamespace(smoother=smoother)}, 0
    first = smoother.update(np.array([0.9, 0.1]))
    cam.reset_if_reconnected()
    capture.interruptions = 1  # down and back between two passes: "running" both times
    cam.reset_if_reconnected()
    after = smoother.update(np.array([0.1, 0.9]))
    assert first.label_index == 0 and after.label_index == 1 and after.score == pytest.approx(0.9)
