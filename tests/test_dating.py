"""A live frame's date: its stream timestamp on the local clock, so arrival jitter does not move
which frames a window takes, and never later than its data came in."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import network_capture_parts
from streamrec.live.capture import CaptureThread
from streamrec.live.dating import StreamClock
from streamrec.live.ring import sample_indices
from streamrec.live.sources import Source

FPS = 25.0
# how late each frame's data comes in, repeating: a key frame's burst, then frames bunched up
DELAYS = (0.0, 0.031, 0.024, 0.017, 0.009, 0.002, 0.026, 0.013)


def test_jittered_arrivals_give_the_stream_timing_and_the_same_window_frames():
    pts = np.arange(200) / FPS
    arrivals = 500.0 + pts + np.resize(DELAYS, len(pts))
    clock = StreamClock()
    dates = np.array([clock.date(float(a), float(p)) for a, p in zip(arrivals, pts)])
    np.testing.assert_allclose(np.diff(dates), 1 / FPS, atol=5e-4)  # less than 1/80 of a frame
    assert np.all(dates <= arrivals)
    by_pts = [sample_indices(pts[: n + 1], 16, 15.0).tolist() for n in range(60, 200)]
    by_date = [sample_indices(dates[: n + 1], 16, 15.0).tolist() for n in range(60, 200)]
    by_arrival = [sample_indices(arrivals[: n + 1], 16, 15.0).tolist() for n in range(60, 200)]
    assert by_date == by_pts
    assert sum(a != p for a, p in zip(by_arrival, by_pts)) > 40  # what dating by arrival did


def test_a_camera_clock_slower_than_ours_is_followed_within_a_frame():
    clock = StreamClock()
    lag = []
    for i in range(int(600 * FPS)):  # ten minutes, the camera's clock 1000 ppm slow
        arrival = 100.0 + i / FPS
        lag.append(arrival - clock.date(arrival + DELAYS[i % len(DELAYS)], 0.999 * i / FPS))
    assert max(lag[-250:]) < 1 / FPS
    assert clock.resyncs == 0


def test_a_restarted_stream_starts_over_from_its_arrival():
    clock = StreamClock()
    for i in range(50):
        clock.date(10.0 + i / FPS, 3600.0 + i / FPS)
    assert clock.date(12.5, 0.0) == 12.5  # its timestamps began again at 0
    assert clock.resyncs == 1
    assert clock.date(12.54, 0.04) == 12.54


def test_frames_without_timestamps_are_dated_by_arrival():
    clock = StreamClock()
    assert [clock.date(a, None) for a in (1.0, 1.5, 1.5)] == [1.0, 1.5, 1.5 + 1e-6]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 2.0), st.floats(-0.5, 2.0)), min_size=1, max_size=60))
def test_dates_rise_and_are_never_after_the_arrival(steps):
    """Any arrivals (rising) and any timestamps (jumps, restarts, stalls included)."""
    clock = StreamClock()
    arrival, pts, last = 0.0, 0.0, -float("inf")
    for gap, advance in steps:
        arrival += gap
        pts += advance
        ts = clock.date(arrival, pts)
        assert last < ts <= arrival
        last = ts


class JitteryCamera(Source):
    """A 25 fps network stream whose frames' data came in ``DELAYS`` late, in turn."""

    def __init__(self, n: int) -> None:
        self.n, self.fps = n, FPS

    def frames(self):
        for i in range(self.n):
            self.arrived = time.perf_counter() - DELAYS[i % len(DELAYS)]
            yield np.full((120, 160, 3), i, np.uint8), 7.0 + i / FPS

    def close(self) -> None:
        pass


def test_capture_writes_a_jittered_stream_at_its_own_pace():
    spec, pre, ring = network_capture_parts(64)
    stop = threading.Event()
    reads = iter(1000.0 + np.arange(10_000) / FPS)  # our clock: one frame's time per read
    seen: list[float] = []

    def on_frame(rgb, ts) -> None:
        seen.append(ts)
        if len(seen) == 40:
            stop.set()

    cap = CaptureThread(spec, ring, pre, stop_event=stop, first=JitteryCamera(40), clock=lambda: float(next(reads)),
                        on_frame=on_frame, name="capture-jitter")
    cap.start()
    cap.join(timeout=30)
    assert not cap.is_alive() and ring.written == 40
    # from the least-delayed frame of the first round on, the stream's own pace
    np.testing.assert_allclose(np.diff(seen[len(DELAYS):]), 1 / FPS, atol=5e-4)


def test_timestamps_far_slower_than_real_time_give_way_to_arrival():
    """A camera whose timestamps run at half speed: after a few jumps, dated as it arrives."""
    clock = StreamClock()
    dates = [clock.date(100.0 + i / FPS, 0.5 * i / FPS) for i in range(int(20 * FPS))]
    assert not clock.trusted and clock.resyncs == 3
    np.testing.assert_allclose(np.diff(dates[-100:]), 1 / FPS, atol=1e-9)


def test_a_clock_that_goes_back_dates_the_frames_anew_from_it():
    """An NTP correction of an hour back: the frames are not held at the old date (no window for
    an hour); they are dated by the clock from there, at the stream's pace."""
    clock = StreamClock()
    for i in range(100):
        clock.date(5000.0 + i / FPS, i / FPS)
    after = [clock.date(1400.0 + i / FPS, (100 + i) / FPS) for i in range(50)]  # 3600 s back
    assert after[0] == 1400.0
    np.testing.assert_allclose(np.diff(after), 1 / FPS, atol=1e-9)
    assert clock.date(1402.0 - 0.5, 151 / FPS) > after[-1]  # a step back of less than RESYNC_S: never back


class SteadyCamera(Source):
    """``n`` frames of a 25 fps stream (a network camera, or a file) with even timestamps."""

    def __init__(self, n: int) -> None:
        self.n, self.fps = n, FPS

    def frames(self):
        for i in range(self.n):
            self.arrived = None
            yield np.full((120, 160, 3), i % 256, np.uint8), i / FPS

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind, target", [("network", "rtsp://127.0.0.1:1/cam"), ("file", "clip.mp4")])
def test_windows_go_on_after_the_clock_goes_back_an_hour(kind, target):
    from streamrec.live.sources import SourceSpec

    _, pre, ring = network_capture_parts(64)
    stop = threading.Event()
    times = 1000.0 + np.arange(10_000) / FPS
    times[100:] -= 3600.0  # read 100 on, the clock is an hour back
    reads = iter(times)
    seen: list[float] = []

    def on_frame(rgb, ts) -> None:
        seen.append(ts)
        if len(seen) == 200:
            stop.set()  # a network camera would be reopened when it ends

    cap = CaptureThread(SourceSpec(target, kind), ring, pre, stop_event=stop, first=SteadyCamera(200),
                        clock=lambda: float(next(reads)), on_frame=on_frame, name=f"capture-{kind}")
    cap.start()
    cap.join(timeout=30)
    assert not cap.is_alive() and len(seen) == 200
    assert seen[-1] < 1000.0 - 3600.0 + 200 / FPS  # dated by the clock after its step
    window = ring.newest_window(16, 15.0)
    assert window is not None and window.frames.shape[0] == 16


def test_the_frame_rate_reads_true_after_the_clock_goes_back_and_after_a_burst():
    from streamrec.live.rates import RateMeter

    meter = RateMeter(horizon_s=2.0)
    for i in range(60):
        meter.tick(5000.0 + i / 30)
    for i in range(540):  # an hour back, 30 fps on
        meter.tick(1400.0 + i / 30)
    assert 29.5 <= meter.rate(1400.0 + 539 / 30) <= 30.5  # it read 0 for the hour, its window growing
    for i in range(30):  # a reconnect's frames, bunched up after 6 s without one
        meter.tick(1424.0 + i * 1e-6)
    assert meter.rate(1424.0) == 15.0  # 30 frames in the last 2 s (5,795 a second before)


def test_a_file_whose_timestamps_jump_ahead_plays_on_instead_of_waiting_out_the_jump():
    from streamrec.live.sources import SourceSpec

    class Spliced(SteadyCamera):
        def frames(self):
            for rgb, pts in super().frames():
                yield rgb, pts + (50_000.0 if pts >= 2.0 else 0.0)  # two files cut together

    _, pre, ring = network_capture_parts(64)
    stop = threading.Event()
    reads = iter(1000.0 + np.arange(10_000) / FPS)  # our clock: one frame's time per read
    seen: list[float] = []
    cap = CaptureThread(SourceSpec("spliced.ts", "file"), ring, pre, stop_event=stop, first=Spliced(100),
                        clock=lambda: float(next(reads)), on_frame=lambda rgb, ts: seen.append(ts), name="capture-splice")
    cap.start()
    cap.join(timeout=30)
    stop.set()
    assert not cap.is_alive() and len(seen) == 100  # it waited 50,000 s at the splice before
    np.testing.assert_allclose(np.diff(seen), 1 / FPS, atol=1e-6)


class FastCamera(Source):
    """A 60 fps network stream (an MJPEG camera) whose container says 25 frames a second."""

    def __init__(self, n: int) -> None:
        self.n, self.fps = n, 25.0

    def frames(self):
        for i in range(self.n):
            self.arrived = None
            yield np.full((120, 160, 3), i % 256, np.uint8), i / 60.0

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_a_camera_faster_than_it_says_still_fills_windows():
    """Its rings were sized for 30 frames a second: every frame written, a window's second would
    never fit and no window would ever be taken. Frames closer than the rings allow are thinned."""
    from streamrec.live.capture import camera_capture
    from streamrec.live.sources import SourceSpec
    from streamrec.models.registry import model_spec

    spec, stop = model_spec("r2plus1d_18"), threading.Event()
    seen: list[float] = []

    def on_frame(rgb, ts) -> None:
        seen.append(ts)
        if len(seen) == 240:  # four seconds of it
            stop.set()

    rings, cap = camera_capture(SourceSpec("rtsp://127.0.0.1:1/cam", "network"), spec, stop_event=stop, name="fast",
                                first=FastCamera(240), on_frame=on_frame)
    cap.clock = iter(2000.0 + np.arange(10_000) / 60.0).__next__  # arrivals at its true pace
    cap.start()
    cap.join(timeout=30)
    ring = rings[None]
    assert not cap.is_alive() and cap.frames == 240 and cap.thinned == 120  # every other frame
    window = ring.newest_window(spec.frames, spec.fps)
    assert window is not None and window.frames.shape[0] == spec.frames
    assert window.end_ts == pytest.approx(seen[-2], abs=1e-9)  # the last frame written
