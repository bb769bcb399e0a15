"""Encoding a webcam's frames for clips: packets timed by the frames' dates, one frame apart
when the clock goes back or leaps ahead."""

from __future__ import annotations

import numpy as np

from streamrec.live.encoder import H264Stream


def encoded_pts(dates: list[float], fps: float = 30.0) -> list[int]:
    enc = H264Stream(64, 48, fps)
    pts = []
    for i, ts in enumerate(dates):
        frame = np.full((48, 64, 3), (i * 16) % 256, np.uint8)
        pts += [p.pts for p in enc.encode(frame, ts)]
    return pts


def test_packets_are_timed_by_the_frames_dates_in_milliseconds():
    assert encoded_pts([100.0, 100.04, 100.1, 103.1]) == [0, 40, 100, 3100]  # a 3 s stall stays in the clip


def test_a_clock_set_back_or_forward_times_the_next_frame_one_frame_later():
    """Held at 1 ms after the last instead, the frames of the hour after a clock set back an hour
    would play at 1,000 fps in a clip; a clock set forward a day would leave a day-long gap."""
    back = [100.0 + i / 30 for i in range(4)] + [40.0 + i / 30 for i in range(3)]
    assert encoded_pts(back) == [0, 33, 67, 100, 133, 166, 200]  # then timed by the dates again
    ahead = [100.0, 100.5, 86_500.0, 86_500.25]
    assert encoded_pts(ahead, fps=10.0) == [0, 500, 600, 850]


def test_frames_too_small_to_encode_are_skipped_and_the_encoder_goes_on():
    """A 1-pixel-wide frame has no even-sized picture: skipped and counted, never a failure the
    supervisor restarts for ever; the frames after it are encoded."""
    import threading
    import time

    from streamrec.live.encoder import FrameEncoder
    from streamrec.live.packets import PacketRing
    from streamrec.supervision import Supervisor

    stop, supervisor = threading.Event(), Supervisor()
    enc = FrameEncoder(PacketRing(1 << 20), fps=10.0, stop_event=stop, supervisor=supervisor, name="encode-tiny")
    enc.start()
    try:
        enc.offer(np.zeros((1, 1, 3), np.uint8), 100.0)
        deadline = time.monotonic() + 10
        while enc.skipped < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(3):
            enc.offer(np.zeros((48, 64, 3), np.uint8), 100.1 + i / 10)
            while enc.encoded < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
    assert (enc.skipped, enc.encoded) == (1, 3)
    assert supervisor.stats()["encode-tiny"]["failures"] == 0
