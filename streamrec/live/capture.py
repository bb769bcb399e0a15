"""The capture thread: source -> one decode per frame -> one crop and resize per labelled stream -> its ring.

A labelled stream is the whole frame or one zone of it (:mod:`streamrec.zones`): each zone is
cut out of the decoded RGB frame, then given the model's reference resize and centre crop, as a
whole frame of that size would be (a zone smaller than the crop is upscaled).

It never waits on inference. Files are paced by their timestamps as if live; ``loop``
restarts them. A live source that fails, stalls or ends is reopened with capped, jittered
exponential backoff while ``state`` reads ``"reconnecting"``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Sequence

import numpy as np

from streamrec.errors import SourceError
from streamrec.zones import ZoneConfig, upscale_warnings
from streamrec.supervision import Supervisor, describe
from streamrec.models.preprocess import FramePreprocessor
from streamrec.live.dating import RESYNC_S, StreamClock
from streamrec.live.encoder import FrameEncoder
from streamrec.live.packets import PacketRing
from streamrec.live.rates import RateMeter
from streamrec.live.ring import FrameRing
from streamrec.retry import Backoff
from streamrec.live.sources import PyAVSource, Source, SourceSpec, open_source
from streamrec.redact import mask_quoted, printable

logger = logging.getLogger(__name__)

LOOP_PASS_MIN_S = 0.04  # a looped file's last frame shows this long at least before the file plays again
STEADY_S = 10.0  # a live source that delivered this long starts its backoff over when it drops; one that
# drops sooner (a camera that sends a few frames and goes) waits longer each time


class CaptureState(StrEnum):
    """Where a camera's capture thread is; the ``state`` of its status message and ``/healthz``
    (a ``str``: it compares equal to, and serializes as, its value)."""

    STARTING = "starting"  # opening the source the first time
    RUNNING = "running"  # frames arrive
    RECONNECTING = "reconnecting"  # the source failed or stalled: opened again after a backoff
    ENDED = "ended"  # a file without ``loop`` reached its end
    STOPPED = "stopped"  # closed


@dataclass
class Pacing:
    """Where a file's frames fall on the clock: ``base``, the clock's time of its timestamp 0;
    ``due``, the last frame's date; ``step``, one frame's time on screen."""

    step: float
    base: float | None = None
    due: float | None = None


class CaptureThread(threading.Thread):
    """Reads ``spec`` into ``ring`` (the whole frame; ``None``: not labelled) and each zone of
    ``zones`` into its own ring, until ``stop_event`` is set.

    ``first`` is an already opened source (the CLI opens it once up front to fail fast);
    ``opener`` opens the source again after it ended or failed (:func:`open_source`).
    ``packet_ring``, when given, receives the compressed video packets of every source opened
    (``first`` too): the event clips' history; a source without them (a webcam) has its frames
    encoded into it by a :class:`FrameEncoder` thread.
    """

    def __init__(
        self,
        spec: SourceSpec,
        ring: FrameRing | None,
        preprocessor: FramePreprocessor,
        *,
        stop_event: threading.Event,
        zones: Sequence[tuple[ZoneConfig, FrameRing]] = (),
        loop: bool = False,
        first: Source | None = None,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.time,
        name: str = "capture",
        on_frame: Callable[[np.ndarray, float], None] | None = None,
        opener: Callable[[SourceSpec], Source] = open_source,
        supervisor: Supervisor | None = None,
        packet_ring: PacketRing | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.packet_ring = packet_ring
        self.encoder: FrameEncoder | None = None  # a webcam's frames into packet_ring
        self.supervisor = supervisor or Supervisor()
        self.opener = opener
        self.spec = spec
        self.ring = ring
        self.zones = tuple(zones)
        if ring is None and not self.zones:
            raise ValueError("capture: expected a whole-frame ring or zones, got neither")
        self.rings: dict[str | None, FrameRing] = {**({None: ring} if ring is not None else {}),
                                                   **{z.name: r for z, r in self.zones}}
        self._boxes: tuple[int, int, list[tuple[int, int, int, int]]] | None = None  # (w, h, each zone's box)
        self.pre = preprocessor
        self.stop_event = stop_event
        self.loop = loop
        self._first = first
        self.backoff = backoff
        self.clock = clock
        self.on_frame = on_frame
        self._rng = random.Random()
        self._fps = RateMeter()
        self._lock = threading.Lock()
        self.state = CaptureState.STARTING
        self.frames = 0
        self._closed_errors = 0  # decode errors of sources already closed
        self._source: Source | None = None
        self.reconnects = 0
        self.interruptions = 0  # gaps in the stream: reconnects, and restarts after a failure
        self.latest_rgb: np.ndarray | None = None  # newest decoded frame, for the page preview
        self.latest_ts = 0.0
        self.resize_s = 0.0  # total time in per-frame preprocessing
        self.decode_s = 0.0  # total time waiting on the source for a decoded frame
        self.error: str | None = None
        self._next_due: float | None = None  # a looped file: when the next pass's first frame is due
        # frames closer than this to the last one written are not written (0: every frame): a source
        # faster than its rings were sized for would otherwise never hold one window's span
        self.min_gap_s = 0.0
        self.thinned = 0
        self._written_ts: float | None = None

    @property
    def decode_errors(self) -> int:
        """Corrupt packets skipped so far, across reconnects."""
        return self._closed_errors + getattr(self._source, "decode_errors", 0)

    # -- stats -----------------------------------------------------------------
    def fps(self) -> float:
        with self._lock:
            return self._fps.rate(self.clock())

    def stats(self) -> dict:
        return {
            "state": self.state.value,
            "source": self.spec.display_name,
            "frames": self.frames,
            "capture_fps": round(self.fps(), 2),
            "dropped": sum(r.dropped for r in self.rings.values()),
            "decode_errors": self.decode_errors,
            "reconnects": self.reconnects,
            "error": self.error,
        }

    # -- thread body ------------------------------------------------------------
    def release(self) -> None:
        """Close the source opened before the thread (``first``) when the thread never started."""
        first, self._first = self._first, None
        if first is not None and not self.is_alive():
            first.close()

    def run(self) -> None:
        """Capture until stopped, under the supervisor: a bug in a step is logged, counted and restarted."""
        self.supervisor.run(self.name, self.capture_loop, self.stop_event)

    def capture_loop(self) -> None:
        attempt = 0
        source = self._first
        self._first = None
        try:
            while not self.stop_event.is_set():
                if source is None:
                    try:
                        source = self.opener(self.spec)
                    except SourceError as exc:
                        self.error = printable(mask_quoted(str(exc), self.spec.target))
                        if not self.spec.is_live:
                            logger.error("%s", self.error)
                            self.state = CaptureState.ENDED
                            return
                        self._wait_backoff(attempt)
                        attempt += 1
                        continue
                self._source = source
                self._tap(source)
                got, started = False, time.monotonic()
                try:
                    got = self._pump(source)
                    if got and time.monotonic() - started >= STEADY_S:
                        attempt = 0  # it ran a while: the next drop is news, retried at once
                finally:
                    self._closed_errors += getattr(source, "decode_errors", 0)
                    source.close()
                    source, self._source = None, None
                if self.stop_event.is_set():
                    break
                if not self.spec.is_live:
                    if not got:  # looping a file with no frame to show would spin: end instead
                        self.error = self.error or f"{self.spec.display_name}: no decodable video frames"
                        logger.error("%s", self.error)
                        self.state = CaptureState.ENDED
                        return
                    if not self.loop:
                        self.state = CaptureState.ENDED
                        logger.info("end of file %s", self.spec.display_name)
                        return
                    continue  # reopen and play again
                if self.error is None:  # no read error: the stream ended cleanly (the sender stopped it)
                    self.error = "the stream ended"
                self.reconnects += 1
                self._wait_backoff(attempt)
                attempt += 1
        except Exception as exc:  # a bug: the supervisor logs it and starts the loop again
            self.error = printable(mask_quoted(f"capture failed ({describe(exc)}); starting it again",
                                               self.spec.target))
            raise
        finally:
            if source is not None:
                source.close()
            if self.state is not CaptureState.ENDED and self.stop_event.is_set():
                self.state = CaptureState.STOPPED
            elif self.state is not CaptureState.ENDED:  # started again by the supervisor: a gap, as a reconnect's
                self._interrupted()

    def _tap(self, source: Source) -> None:
        """Give ``source`` the packet ring; a source without compressed packets (a webcam) gets its
        frames encoded instead, by one encoder for the capture's life."""
        if self.packet_ring is None:
            return
        source.packet_ring = self.packet_ring
        if self.encoder is None and not isinstance(source, PyAVSource):
            self.encoder = FrameEncoder(self.packet_ring, fps=source.fps or 30.0, stop_event=self.stop_event,
                                        supervisor=self.supervisor, name=f"encode-{self.name.removeprefix('capture-')}")
            self.encoder.start()

    def clear_rings(self) -> None:
        for ring in self.rings.values():
            ring.clear()

    def crops(self, rgb: np.ndarray) -> list[tuple[FrameRing, np.ndarray]]:
        """Each stream's ring with its crop of the decoded frame ``rgb``: the whole frame, then each
        zone cut out of ``rgb`` before the reference resize and centre crop."""
        h, w = rgb.shape[:2]
        if self._boxes is None or self._boxes[:2] != (w, h):
            if self._boxes is None:  # the first frame: its size says which zones are upscaled
                crop = min(self.pre.spec.crop)
                for line in upscale_warnings([z for z, _ in self.zones], w, h, crop, camera=self.name.removeprefix("capture-")):
                    logger.warning("%s", line)
            self._boxes = (w, h, [z.box(w, h) for z, _ in self.zones])
        out = [] if self.ring is None else [(self.ring, self.pre.resize_crop(rgb))]
        for (_, ring), (x0, y0, x1, y1) in zip(self.zones, self._boxes[2]):
            out.append((ring, self.pre.resize_crop(rgb[y0:y1, x0:x1])))
        return out

    def _interrupted(self) -> None:
        """The stream stopped: frames before the gap must not join frames after it, and the labels
        after it start anew (:attr:`interruptions` counts the gaps: a reader that samples
        :attr:`state` could miss a short one)."""
        self.state = CaptureState.RECONNECTING
        self.interruptions += 1
        self.clear_rings()

    def _wait_backoff(self, attempt: int) -> None:
        self._interrupted()
        delay = self.backoff.delay(attempt, self._rng)
        logger.warning("source %s unavailable (%s); retrying in %.1f s", self.spec.display_name,
                       self.error or "no reason given", delay)
        self.stop_event.wait(delay)

    def _arrival(self, source: Source) -> float:
        """When the frame just read from a live ``source`` came in (before decode and conversion), on ``clock``."""
        now = self.clock()
        return now if source.arrived is None else now - max(0.0, time.perf_counter() - source.arrived)

    def _pace(self, pacing: Pacing, pts: float) -> float:
        """The date of a file's frame at ``pts``, once it is due: a file plays as a camera would
        deliver it, its frames paced by their timestamps on ``clock``."""
        now = self.clock()
        if pacing.due is not None and now < pacing.due - pacing.step - RESYNC_S:  # the clock went back: anew from now
            pacing.base, self._next_due = None, None
        if pacing.base is None:
            pacing.base = (self._next_due if self._next_due is not None else now) - pts
            self._next_due = None
        pacing.due = pacing.base + pts
        if pacing.due - now > pacing.step + RESYNC_S:  # the file's timestamps jumped ahead (spliced): not a wait
            pacing.base, pacing.due = now - pts, now
        if pacing.due - now > 0:
            self.stop_event.wait(pacing.due - now)
        elif now - pacing.due > 0.5:  # decoding fell behind real time: rebase, as a camera would
            pacing.base += now - pacing.due
            pacing.due = now
        return pacing.due

    def _write_rings(self, rgb: np.ndarray, ts: float) -> None:
        t0 = time.perf_counter()
        crops = self.crops(rgb)  # uint8 (h, w, 3) per stream: normalized later, a batch at a time
        self.resize_s += time.perf_counter() - t0
        try:
            for ring, frame in crops:
                ring.write(frame, ts)
        except ValueError:  # clock stepped back: start a fresh history
            self.clear_rings()
            for ring, frame in crops:
                ring.write(frame, ts)
        self._written_ts = ts

    def _pump(self, source: Source) -> bool:
        """Read ``source`` until it ends, fails or we are stopped; returns whether a frame came."""
        got = False
        pacing = Pacing(step=1.0 / (source.fps or 30.0))  # a file's (30 fps when the file does not say)
        dates = StreamClock(self.spec.display_name)  # a live stream's frames, dated by their timestamps
        it = iter(source.frames())
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                rgb, pts = next(it)
            except StopIteration:
                if pacing.due is not None:  # a looped file plays on at its pace: the last frame is shown
                    # for its time (a pass at least LOOP_PASS_MIN_S: a one-frame file that says 1,000 fps
                    # would be reopened a thousand times a second), then the first again
                    self._next_due = pacing.due + max(pacing.step, LOOP_PASS_MIN_S)
                return got
            except Exception as exc:  # noqa: BLE001 - any read error: reconnect
                self.error = printable(mask_quoted(f"{type(exc).__name__}: {exc}", self.spec.target))
                logger.warning("read from %s failed: %s", self.spec.display_name, self.error)
                return got
            t1 = time.perf_counter()
            if not self.spec.is_live and pts is not None:
                ts = self._pace(pacing, pts)
            else:
                ts = dates.date(self._arrival(source), pts)
            self.decode_s += t1 - t0
            if self._written_ts is not None and 0 <= ts - self._written_ts < self.min_gap_s:
                self.thinned += 1  # counted as a frame below, never preprocessed or written
            else:
                self._write_rings(rgb, ts)
            with self._lock:
                self._fps.tick(ts)
            self.latest_rgb, self.latest_ts = rgb, ts
            if self.encoder is not None:
                self.encoder.offer(rgb, ts)
            self.frames += 1
            if not got:
                got = True
                self.state = CaptureState.RUNNING
                self.error = None
            if self.on_frame is not None:
                self.on_frame(rgb, ts)
        return got


def camera_capture(
    spec: SourceSpec,
    model_spec,
    *,
    stop_event: threading.Event,
    name: str,
    loop: bool = False,
    first: Source | None = None,
    on_frame: Callable[[np.ndarray, float], None] | None = None,
    supervisor: Supervisor | None = None,
    packet_ring: PacketRing | None = None,
    zones: Sequence[ZoneConfig] = (),
    whole_frame: bool = True,
) -> tuple[dict[str | None, FrameRing], CaptureThread]:
    """A ring sized for one window of ``model_spec`` per labelled stream (``None``: the whole
    frame, when ``whole_frame``; then each zone's name) and the capture thread that fills them
    (not started): the one set-up shared by local cameras and cluster capture actors."""
    from streamrec.live.ring import SOURCE_FPS_MAX, capacity_for

    pre = FramePreprocessor(model_spec)
    fps = first.fps if first is not None and first.fps else 30.0
    if fps > SOURCE_FPS_MAX:
        logger.warning("camera %s: the source states %.6g frames a second; its buffer holds %g a second's worth",
                       printable(name), fps, SOURCE_FPS_MAX)
    capacity = capacity_for(model_spec.frames, model_spec.fps, source_fps=max(fps, 30.0))
    span_s = (model_spec.frames - 1) / model_spec.fps

    def ring() -> FrameRing:
        return FrameRing(capacity, pre.crop_shape, np.uint8)

    whole = ring() if whole_frame else None
    zone_rings = [(z, ring()) for z in zones]
    thread = CaptureThread(spec, whole, pre, stop_event=stop_event, zones=zone_rings, loop=loop, first=first,
                           name=f"capture-{name}", on_frame=on_frame, supervisor=supervisor, packet_ring=packet_ring)
    thread.min_gap_s = span_s / (capacity - 2)  # a 60 fps camera that said 25 (or nothing): every other frame
    return thread.rings, thread
