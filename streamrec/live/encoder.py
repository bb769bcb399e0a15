"""Compressed packets for a source that has none (a webcam through OpenCV gives decoded frames):
its frames are encoded to H.264 in a thread of their own and put into the camera's
:class:`~streamrec.live.packets.PacketRing`, so that event clips work the same for every source.

The capture only offers each frame (:meth:`FrameEncoder.offer`: an append under a short lock);
when the encoder falls behind, the oldest waiting frames are dropped and counted. libx264 runs
with ``ultrafast`` and ``zerolatency`` (a packet per frame, no frame held back), a keyframe every
second, timed by the frames' wall-clock dates. This costs CPU all the time, not only during an
event (a pre-roll needs the packets before it), more for larger frames: see docs/events.md
(``benchmarks/events.py``, the RGB to YUV conversion included).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from fractions import Fraction
from typing import Any

import numpy as np

from streamrec.live.packets import PacketRing
from streamrec.live.sources import open_container
from streamrec.supervision import Supervisor

logger = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)  # frames are timed by their wall-clock dates, in milliseconds
OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"}
GAP_MAX_S = 60.0  # frames further apart than this (a clock set forward) are timed one frame apart


class H264Stream:
    """One libx264 encoder for frames of one size, its first packet muxed into an MP4 in memory so
    that its stream holds the codec parameters (``extradata``) a clip's stream is copied from."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self._holder = open_container(io.BytesIO(), mode="w", format="mp4")
        self.stream = self._holder.add_stream("libx264", rate=max(1, round(fps)))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.time_base = self.stream.codec_context.time_base = TIME_BASE
        self.stream.codec_context.gop_size = max(1, round(fps))  # a keyframe a second: where clips may start
        self.stream.options = dict(OPTIONS)
        self.size = (height, width)
        self.fps = fps
        self.started = False
        self._t0: float | None = None
        self._last = -1

    def encode(self, rgb: np.ndarray, ts: float) -> list[Any]:
        import av

        self._t0 = ts if self._t0 is None else self._t0
        pts = round((ts - self._t0) / TIME_BASE)
        if self._last >= 0 and not self._last < pts <= self._last + GAP_MAX_S / TIME_BASE:
            # the clock went back (or leapt ahead): go on one frame later, and time from here;
            # held at last + 1 ms instead, a clip would play an hour's frames at 1,000 fps
            pts = self._last + max(1, round(1 / (self.fps * TIME_BASE)))
            self._t0 = ts - pts * TIME_BASE
        self._last = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = pts, TIME_BASE
        packets = self.stream.encode(frame)
        if packets and not self.started:
            self._holder.mux(packets[0])  # fills the stream's codec parameters; the holder gets no more
            self.started = True
        return packets


class FrameEncoder:
    """Encodes the frames :meth:`offer` is given into ``ring`` in a thread (:meth:`start`) that
    runs under ``supervisor`` until ``stop_event`` is set. ``max_waiting`` frames wait at most."""

    def __init__(self, ring: PacketRing, *, fps: float, stop_event: threading.Event, supervisor: Supervisor,
                 name: str, max_waiting: int = 8) -> None:
        self.ring = ring
        self.fps = fps if fps and fps > 0 else 30.0
        self.stop_event = stop_event
        self.supervisor = supervisor
        self.name = name
        self._waiting: deque[tuple[np.ndarray, float]] = deque(maxlen=max_waiting)
        self._cond = threading.Condition(threading.Lock())
        self.dropped = 0  # frames not encoded: the encoder was behind
        self.encoded = 0
        self.skipped = 0  # frames too small to encode (under 2 x 2 pixels)
        self._thread: threading.Thread | None = None

    def offer(self, rgb: np.ndarray, ts: float) -> None:
        """A frame of the camera, dated ``ts`` (the capture's clock); never waits."""
        with self._cond:
            if len(self._waiting) == self._waiting.maxlen:
                self.dropped += 1
            self._waiting.append((rgb, ts))
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.supervisor.run, args=(self.name, self.run, self.stop_event),
                                        name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self, timeout: float) -> tuple[np.ndarray, float] | None:
        with self._cond:
            if not self._waiting:
                self._cond.wait(timeout)
            return self._waiting.popleft() if self._waiting else None

    def run(self) -> None:
        """Encode until stopped (a failure: the supervisor logs it and starts a new stream)."""
        enc: H264Stream | None = None
        while not self.stop_event.is_set():
            item = self._take(0.25)
            if item is None:
                continue
            rgb, ts = item
            rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]  # 4:2:0 needs an even size
            if rgb.size == 0:  # a 1-pixel-wide frame: nothing to encode (it would fail and restart for ever)
                self.skipped += 1
                continue
            if enc is None or enc.size != rgb.shape[:2]:
                enc = H264Stream(rgb.shape[1], rgb.shape[0], self.fps)
            fresh = not enc.started
            packets = enc.encode(rgb, ts)
            if packets and fresh:
                self.ring.new_stream(enc.stream)
            for p in packets:
                self.ring.push(p, ts=ts)
            self.encoded += 1

    def stats(self) -> dict[str, int]:
        return {"encoded": self.encoded, "dropped": self.dropped}
