"""Live sources: the decoder holds no frames back, and a frame is dated when its data came in."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import time

import numpy as np
import pytest

from conftest import write_video
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
        threads = src._stream.codec_context.thread_count
    assert (len(held), set(held), threads) == (60, {0}, 1)
    large = write_video(tmp_path / "large.ts", seconds=1.0, fps=30, size=(1280, 720))
    with PyAVSource(SourceSpec.parse(str(large))) as src:
        held = held_back(src)
        kind = src._stream.thread_type
    assert len(held) == 30
    assert str(kind).endswith("AUTO") and max(held) >= 1


@pytest.mark.parametrize(("size", "live", "expected"), [
    ((340, 256), False, ("SLICE", 1)), ((640, 480), True, ("SLICE", 1)), ((641, 480), True, ("SLICE", 0)),
    ((1920, 1080), False, ("AUTO", 0)), ((1920, 1080), True, ("SLICE", 0)), ((0, 0), True, ("SLICE", 0)),
])
def test_decoder_threading_by_frame_size_and_liveness(size, live, expected):
    assert decoder_threading(*size, live=live) == expected


class SlowLiveSource(Source):
    """A live source whose every frame's data came in ``delay`` seconds before it is yielded
    (what decoding and colour conversion take)."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay, self.fps = n, delay, 30.0

    def frames(self):
        for i in range(self.n):
            self.arrived = time.perf_counter()
            time.sleep(self.delay)
            yield np.full((120, 160, 3), i, np.uint8), None

    def close(self) -> None:
        pass


def test_capture_dates_a_live_frame_by_when_its_data_came_in():
    spec = SourceSpec("rtsp://127.0.0.1:1/cam", "network")
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    ring = FrameRing(8, pre.crop_shape, np.uint8)
    stop = threading.Event()
    clock_at_write: list[float] = []

    def clock() -> float:
        t = time.time()
        clock_at_write.append(t)
        return t

    cap = CaptureThread(spec, ring, pre, stop=stop, first=SlowLiveSource(3, 0.05), clock=clock, name="capture-test")
    t0 = time.time()
    cap._pump(cap._first)
    assert ring.written == 3
    frames, stamps = ring._frames[:3], ring._ts[:3]
    assert [int(f[0, 0, 0]) for f in frames] == [0, 1, 2]
    # each stamp is ~50 ms before the clock was read for it, not the time of reading
    reads = clock_at_write[:3]
    for ts, read in zip(stamps, reads):
        assert 0.045 <= read - ts <= 0.08
    assert stamps[0] >= t0 - 1e-3  # wall clock minus a perf_counter interval: equal to within clock rounding


class ShortFile(Source):
    """A file of ``n`` frames at ``fps``, each with its presentation time."""

    def __init__(self, n: int, fps: float = 10.0) -> None:
        self.n, self.fps = n, fps

    def frames(self):
        for i in range(self.n):
            yield np.full((120, 160, 3), i, np.uint8), i / self.fps

    def close(self) -> None:
        pass


def _looped_capture(n: int, opened: list[int]):
    spec = SourceSpec("/clips/short.mp4", "file")
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    ring = FrameRing(32, pre.crop_shape, np.uint8)

    def opener(_spec):
        opened.append(n)
        return ShortFile(n)

    return CaptureThread(spec, ring, pre, stop=threading.Event(), loop=True, opener=opener, name="capture-loop-test"), ring


@pytest.mark.parametrize("n", [1, 3])
def test_a_looped_file_keeps_its_pace_across_the_loop(n):
    """The first frame of each pass comes one frame time after the last one: a still image
    (one frame) loops at its frame rate instead of reopening the file as fast as it can."""
    opened: list[int] = []
    cap, ring = _looped_capture(n, opened)
    cap.start()
    try:
        deadline = time.monotonic() + 10
        while ring.written < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        cap.stop_event.set()
        cap.join(timeout=2)
    stamps = ring._ts[:7]
    assert [round(b - a, 6) for a, b in zip(stamps, stamps[1:])] == [0.1] * 6
    assert [int(f[0, 0, 0]) for f in ring._frames[:7]] == [i % n for i in range(7)]
    assert len(opened) in (7 // n, 7 // n + 1)  # one open per pass (the next may have begun)


def test_a_looped_file_with_no_frame_ends_instead_of_spinning():
    opened: list[int] = []
    cap, ring = _looped_capture(0, opened)
    cap.start()
    cap.join(timeout=5)
    assert not cap.is_alive()
    assert (cap.state, cap.error, len(opened), ring.written) == (
        "ended", "/clips/short.mp4: no decodable video frames", 1, 0)


def _tasks_created_system_wide() -> int:
    """The kernel's last process/thread id: every thread started anywhere raises it by one."""
    with open("/proc/sys/kernel/ns_last_pid") as f:
        return int(f.read())


@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/ns_last_pid"), reason="Linux only")
@pytest.mark.parametrize("size", [(340, 256), (1280, 720)])
def test_frames_reach_rgb_without_starting_threads(tmp_path, size):
    """Capture converts every frame to RGB; PyAV's default conversion starts and ends a
    thread per core for each frame (hundreds here). One thread per frame or more fails."""
    path = write_video(tmp_path / "v.mp4", seconds=4.0, fps=30, size=size)
    with PyAVSource(SourceSpec.parse(str(path))) as src:
        it = src.frames()
        first, _ = next(it)  # the decoder's own threads (large frames) have started by now
        before = _tasks_created_system_wide()
        rest = [rgb for rgb, _ in it]
        started = _tasks_created_system_wide() - before
    assert first.shape == (size[1], size[0], 3) and len(rest) == 119
    assert started < 60, started  # other processes on the machine may start a few meanwhile
