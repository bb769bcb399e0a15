"""The webcam path (``--source 0``) through real OpenCV captures.

No camera is attached to the test machine, so ``WebcamSource`` is given OpenCV's own
``VideoCapture`` on a recorded file instead of on a device index: the same grab/retrieve
calls, the same end-of-stream failure a camera gives when it is unplugged.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from conftest import write_frames
from streamrec.live.capture import CaptureThread
from streamrec.retry import Backoff
from streamrec.errors import SourceError
from streamrec.models.registry import model_spec
from streamrec.models.preprocess import FramePreprocessor
from streamrec.live.ring import FrameRing
from streamrec.live.sources import SourceSpec, WebcamSource

FRAMES, FPS = 20, 25


def red(i: int) -> int:
    return 20 + 10 * i


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """20 frames at 25 fps, frame i red = 20 + 10 i, blue 200: tells RGB from BGR and frames apart."""
    frames = []
    for i in range(FRAMES):
        img = np.zeros((120, 160, 3), np.uint8)
        img[..., 0], img[..., 2] = red(i), 200
        frames.append(img)
    return write_frames(tmp_path_factory.mktemp("webcam") / "cam.mp4", frames, FPS)


def camera(path):
    """A device opener that plays ``path`` (the index it is given is ignored, as the file stands in for it)."""
    return lambda index: cv2.VideoCapture(str(path))


def test_webcam_source_reads_rgb_frames_in_order_then_fails_like_an_unplugged_camera(recording):
    spec = SourceSpec.parse("0")
    src = WebcamSource(spec, device=camera(recording))
    try:
        assert src.fps == FPS
        assert src.size == (160, 120)
        reds, blues = [], []
        it = src.frames()
        for _ in range(FRAMES):
            t0 = time.perf_counter()
            rgb, pts = next(it)
            assert pts is None  # a camera has no stream clock: capture dates the frame
            assert t0 <= src.arrived <= time.perf_counter()  # dated after grab(), before retrieve + conversion
            assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
            reds.append(int(rgb[..., 0].mean().round()))
            blues.append(int(rgb[..., 2].mean().round()))
        assert np.abs(np.array(reds) - [red(i) for i in range(FRAMES)]).max() <= 6
        assert np.abs(np.array(blues) - 200).max() <= 6
        with pytest.raises(SourceError, match=r"^webcam 0: read failed \(unplugged\?\)$"):
            next(it)
    finally:
        src.close()
        src.close()  # idempotent


def test_webcam_that_cannot_be_opened_is_a_one_line_error(tmp_path):
    with pytest.raises(SourceError, match=r"^--source: cannot open webcam 3 \(no such device, or it is busy\)$"):
        WebcamSource(SourceSpec.parse("3"), device=camera(tmp_path / "absent.mp4"))


def test_capture_reopens_an_unplugged_webcam_and_keeps_retrying_while_it_is_gone(recording, tmp_path):
    """Plugged in twice (a whole recording each time), then gone: every frame of both sessions
    reaches the ring in order, each loss counts one reconnect, and the thread keeps trying
    (state ``reconnecting``, the open error shown) until it is stopped."""
    spec = SourceSpec.parse("0")
    opens: list[str] = []

    def opener(s: SourceSpec) -> WebcamSource:
        opens.append(s.target)
        plugged = len(opens) <= 2
        return WebcamSource(s, device=camera(recording if plugged else tmp_path / "unplugged.mp4"))

    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    ring = FrameRing(64, pre.crop_shape, np.uint8)
    stop = threading.Event()
    seen: list[tuple[int, float]] = []
    cap = CaptureThread(spec, ring, pre, stop_event=stop, backoff=Backoff(base_s=0.01, cap_s=0.02), name="capture-webcam-test",
                        opener=opener, on_frame=lambda rgb, ts: seen.append((int(rgb[..., 0].mean().round()), ts)))
    cap.start()
    try:
        deadline = time.monotonic() + 30
        while len(opens) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(opens) >= 5, f"opens: {opens}"
        assert cap.state == "reconnecting"
        assert cap.error == "--source: cannot open webcam 0 (no such device, or it is busy)"
        assert cap.frames == 2 * FRAMES
        assert cap.reconnects == 2  # two lost sessions; failed opens retry without counting again
        assert cap.decode_errors == 0
        expected = [red(i) for i in range(FRAMES)] * 2
        assert np.abs(np.array([r for r, _ in seen]) - expected).max() <= 6
        stamps = [ts for _, ts in seen]
        assert stamps == sorted(stamps)
        assert ring.newest_window(16, 15.0) is None  # cleared when the camera went: no window spans the gap
    finally:
        stop.set()
        cap.join(timeout=2)
    assert not cap.is_alive()
    assert cap.state == "stopped"
