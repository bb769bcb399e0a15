import threading

import numpy as np
import pytest

from streamrec.live.ring import FrameRing, capacity_for


def fill(ring: FrameRing, n: int, fps: float, t0: float = 1000.0) -> None:
    for i in range(n):
        ring.write(np.full((1,), i, np.float32), t0 + i / fps)


def test_wraps_around_and_keeps_the_newest_frames():
    ring = FrameRing(capacity=8, frame_shape=(1,))
    fill(ring, 20, fps=30)
    w = ring.newest_window(frames=8, fps=30)
    assert [int(v) for v in w.frames[:, 0]] == list(range(12, 20))
    assert w.end_seq == 19


def test_a_window_after_a_sequence_number_needs_a_newer_frame_and_marks_nothing_used():
    ring = FrameRing(capacity=8, frame_shape=(1,))
    fill(ring, 8, fps=30)
    assert ring.newest_window(frames=4, fps=30, after=7) is None  # frame 7 is the newest
    assert ring.newest_window(frames=4, fps=30, after=100) is None
    fill(ring, 4, fps=30, t0=2000.0)  # overwrites 0..3: no window took any frame yet
    assert ring.dropped == 4
    w = ring.newest_window(frames=4, fps=30, after=7)
    assert (w.end_seq, [int(v) for v in w.frames[:, 0]]) == (11, [0, 1, 2, 3])
    ring.write(np.full((1,), 9, np.float32), 2000.5)
    assert [int(v) for v in w.frames[:, 0]] == [0, 1, 2, 3]  # a window is a copy: the ring moves on


def test_counts_frames_overwritten_before_any_window_used_them():
    ring = FrameRing(capacity=8, frame_shape=(1,))
    fill(ring, 8, fps=30)
    assert ring.dropped == 0
    ring.newest_window(frames=4, fps=30)  # uses frames 4..7
    fill(ring, 6, fps=30, t0=2000.0)  # overwrites 0..5: 0..3 unused, 4..5 used
    assert ring.dropped == 4


@pytest.mark.parametrize("fps", [25, 30, 60])
def test_window_spans_the_same_time_whatever_the_camera_rate(fps):
    ring = FrameRing(capacity=capacity_for(16, 15.0, source_fps=fps), frame_shape=(1,))
    fill(ring, 3 * fps, fps=fps)
    w = ring.newest_window(frames=16, fps=15.0)
    span = w.timestamps[-1] - w.timestamps[0]
    assert len(w.timestamps) == 16
    # 15 intervals of 1/15 s = 1.0 s, give or take half a source frame at each end
    assert abs(span - 1.0) <= 1.0 / fps + 1e-9
    steps = np.diff(w.timestamps)
    assert np.all(np.abs(steps - 1 / 15) <= 1.0 / fps + 1e-9)
    assert w.end_seq == 3 * fps - 1


def test_sampling_at_30fps_takes_every_other_frame():
    ring = FrameRing(capacity=64, frame_shape=(1,))
    fill(ring, 40, fps=30)
    w = ring.newest_window(frames=16, fps=15)
    assert [int(v) for v in w.frames[:, 0]] == list(range(9, 40, 2))


def test_sampling_at_60fps_takes_every_fourth_frame():
    ring = FrameRing(capacity=128, frame_shape=(1,))
    fill(ring, 100, fps=60)
    w = ring.newest_window(frames=16, fps=15)
    assert [int(v) for v in w.frames[:, 0]] == list(range(39, 100, 4))


def test_no_window_until_the_ring_spans_one():
    ring = FrameRing(capacity=64, frame_shape=(1,))
    fill(ring, 30, fps=30)  # 0.97 s < 1.0 s span
    assert ring.newest_window(frames=16, fps=15) is None
    ring.write(np.full((1,), 30, np.float32), 1000.0 + 30 / 30)
    assert ring.newest_window(frames=16, fps=15) is not None


def test_pad_repeats_the_last_frame_for_a_short_clip():
    ring = FrameRing(capacity=64, frame_shape=(1,))
    fill(ring, 5, fps=10)
    w = ring.newest_window(frames=8, fps=10, pad=True)
    assert [int(v) for v in w.frames[:, 0]] == [0, 1, 2, 3, 4, 4, 4, 4]


def test_end_ts_anchors_the_window_at_that_time():
    ring = FrameRing(capacity=64, frame_shape=(1,))
    fill(ring, 40, fps=10, t0=0.0)
    w = ring.newest_window(frames=4, fps=10, end_ts=2.02)
    assert [int(v) for v in w.frames[:, 0]] == [17, 18, 19, 20]
    w = ring.newest_window(frames=4, fps=10, end_ts=2.08)  # nearer the next frame
    assert [int(v) for v in w.frames[:, 0]] == [18, 19, 20, 21]
    assert w.end_seq == 21


def test_clear_forgets_frames_without_counting_drops():
    ring = FrameRing(capacity=8, frame_shape=(1,))
    fill(ring, 8, fps=30)
    ring.clear()
    assert ring.newest_window(frames=2, fps=30) is None
    fill(ring, 8, fps=30, t0=5000.0)
    assert ring.dropped == 0
    assert [int(v) for v in ring.newest_window(frames=2, fps=30).frames[:, 0]] == [6, 7]


def test_rejects_time_going_backwards():
    ring = FrameRing(capacity=8, frame_shape=(1,))
    ring.write(np.zeros(1, np.float32), 10.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        ring.write(np.zeros(1, np.float32), 9.0)


def test_writer_never_waits_for_a_reader():
    ring = FrameRing(capacity=4, frame_shape=(1,))
    stop, reads = threading.Event(), []

    def reader():  # takes windows as fast as it can, all the time the writer writes
        while not stop.is_set():
            reads.append(ring.newest_window(2, 30.0))

    t = threading.Thread(target=reader)
    t.start()
    fill(ring, 50, fps=30)
    stop.set()
    t.join()
    assert ring.written == 50 and reads and ring.newest_window(2, 30.0).end_seq == 49


@pytest.mark.parametrize("stated", [1000.0, 90_000.0])
def test_a_source_that_states_an_absurd_frame_rate_gets_a_bounded_buffer(tmp_path, stated, caplog):
    """A time base read as a frame rate (1,000 or 90,000 a second) would size each ring for that
    many frames of a window: gigabytes of crops for a 30 fps camera."""
    import logging

    from conftest import write_video
    from streamrec.live.capture import camera_capture
    from streamrec.live.ring import SOURCE_FPS_MAX
    from streamrec.live.sources import SourceSpec, open_source
    from streamrec.models.registry import model_spec

    spec = SourceSpec(str(write_video(tmp_path / "v.mp4", seconds=0.2, size=(64, 48))), "file")
    first = open_source(spec)
    first.fps = stated  # what such a file or camera states
    model = model_spec("r2plus1d_18")
    try:
        with caplog.at_level(logging.WARNING, logger="streamrec.live.capture"):
            rings, _ = camera_capture(spec, model, stop_event=threading.Event(), name="gate", first=first)
    finally:
        first.close()
    assert rings[None].capacity == capacity_for(model.frames, model.fps, source_fps=SOURCE_FPS_MAX) == 249
    assert [r.getMessage() for r in caplog.records] == [
        f"camera gate: the source states {stated:.6g} frames a second; its buffer holds 240 a second's worth"]
