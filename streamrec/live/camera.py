"""Cameras and the inference worker that batches them.

A :class:`Camera` owns its source, ring buffer, capture thread and smoother. One
:class:`InferenceWorker` per loaded model takes the newest complete window of every camera
that has a new one, waits at most ``batch_wait_s`` for the others, and classifies them all
in one forward pass. It never works through a backlog: windows that ended while the model
was busy are skipped (and counted), not queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Container, Iterator

import numpy as np

from streamrec.live.capture import RateMeter, camera_capture
from streamrec.config import CameraConfig
from streamrec.runtime.classifier import Classifier
from streamrec.errors import StreamrecError
from streamrec.models.kinetics import restrict_rows, sport_indices
from streamrec.models.preprocess import batch_windows
from streamrec.live.messages import prediction_message, top_k_many
from streamrec.live.ring import Window
from streamrec.live.smoothing import LabelSmoother, SmoothingConfig, update_many
from streamrec.live.sources import Source, SourceSpec

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 1.5


@contextmanager
def adding_camera(lock: threading.Lock | threading.RLock, cameras: Container[str], adding: set[str],
                  name: str) -> Iterator[None]:
    """Hold camera name ``name`` in ``adding`` while it is being added (opening its source, loading
    a model: seconds, outside ``lock``), so that a second add of the same name fails at once.

    Example:
        >>> adding = set()
        >>> with adding_camera(threading.Lock(), {"pool"}, adding, "gate"):
        ...     sorted(adding)
        ['gate']
        >>> adding
        set()
    """
    with lock:
        if name in cameras or name in adding:
            raise StreamrecError(f"camera {name!r} already exists")
        adding.add(name)
    try:
        yield
    finally:
        with lock:
            adding.discard(name)


class LabelStats:
    """One camera's labels so far: how many (``seq``), how fast, their inference time and latency,
    and the windows skipped while the model was busy. :class:`Camera` is one; the cluster's driver
    keeps one per remote camera.

    Example:
        >>> s = LabelStats()
        >>> s.took(4); s.took(9)  # windows ending at frames 5-8 were never classified
        >>> s.skipped, s.last_end
        (4, 9)
    """

    def __init__(self) -> None:
        self.last_end = -1  # end_seq of the last classified window
        self.seq = 0
        self.skipped = 0
        self.rate = RateMeter(horizon_s=10.0)
        self.infer_ms: deque[float] = deque(maxlen=512)
        self.latency_ms: deque[float] = deque(maxlen=512)
        self.last_message: dict[str, Any] | None = None
        self.published = float("-inf")  # time.monotonic() of the last label (the cluster's stride_ms)

    def took(self, end_seq: int) -> None:
        """A window ending at frame ``end_seq`` goes to the model; the window ends in between are skipped."""
        if self.last_end >= 0 and end_seq > self.last_end + 1:
            self.skipped += end_seq - self.last_end - 1
        self.last_end = end_seq

    def record(self, msg: dict[str, Any], now: float) -> None:
        """Count the prediction ``msg`` (built with ``seq`` already advanced), sent at ``now``."""
        self.infer_ms.append(msg["infer_ms"])
        self.latency_ms.append(msg["latency_ms"])
        self.rate.tick(now)
        self.last_message = msg

    def stats(self) -> dict[str, Any]:
        infer, lat = list(self.infer_ms), list(self.latency_ms)
        return {
            "inference_rate": round(self.rate.rate(time.time()), 3),
            "predictions": self.seq,
            "skipped_windows": self.skipped,
            "infer_ms_p50": round(float(np.median(infer)), 2) if infer else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2) if lat else None,
        }


class Camera(LabelStats):
    """One source, end to end up to the classifier (which it shares with other cameras)."""

    def __init__(self, cfg: CameraConfig, classifier: Classifier, smoothing: SmoothingConfig, *,
                 first: Source | None = None, wake: threading.Condition | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.classifier = classifier
        self.spec = SourceSpec.of_camera(cfg)
        self.stop = threading.Event()
        self._wake = wake
        self.ring, self.capture = camera_capture(self.spec, classifier.loaded.spec, stop=self.stop, name=cfg.name,
                                                 loop=bool(cfg.loop), first=first,
                                                 on_frame=self._notify if wake is not None else None)
        self.smoother = LabelSmoother(smoothing)
        # --sports-only: the sport classes' indices in the model's outputs (raises if it has none)
        self.subset = sport_indices(classifier.loaded.classes) if cfg.sports_only else None
        LabelStats.__init__(self)
        self._last_state = "starting"

    def _notify(self, *_: Any) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        self.capture.start()

    def close(self) -> None:
        """Stop capture and release the source (idempotent)."""
        self.stop.set()
        if self.capture.is_alive():
            self.capture.join(JOIN_TIMEOUT_S)
        elif self.capture._first is not None:  # never started: close the pre-opened source
            self.capture._first.close()

    def take_window(self) -> Window | None:
        """The newest window that ends after the last classified one, or None."""
        ms = self.classifier.loaded.spec
        w = self.ring.newest_window(ms.frames, ms.fps, after=self.last_end)
        if w is None or w.end_seq <= self.last_end:
            return None
        self.took(w.end_seq)
        return w

    def reset_if_reconnected(self) -> None:
        """A new stream starts a new label history."""
        state = self.capture.state
        if state == "running" and self._last_state == "reconnecting":
            self.smoother.reset()
        self._last_state = state


class InferenceWorker(threading.Thread):
    """Classifies the newest windows of ``cameras`` (sharing ``classifier``) in batches."""

    def __init__(self, classifier: Classifier, publish: Callable[[list[tuple[Camera, dict[str, Any]]]], None], *,
                 stop: threading.Event, wake: threading.Condition, batch_wait_s: float = 0.01,
                 stride_s: float = 0.0, max_batch: int = 32, clock: Callable[[], float] = time.time,
                 frame_wait_s: float = 0.1, name: str = "inference") -> None:
        super().__init__(name=name, daemon=True)
        self.classifier = classifier
        self.publish = publish
        self.stop_event = stop
        self.wake = wake
        self.batch_wait_s = batch_wait_s
        self.stride_s = stride_s
        self.max_batch = max_batch
        # after a batch, wait (at most this long) for the next frame before taking windows: the
        # newest window then ends with a frame captured moments ago, not up to a frame interval ago
        self.frame_wait_s = frame_wait_s
        self.clock = clock
        self._cameras: dict[str, Camera] = {}
        self._lock = threading.Lock()
        self.errors = 0
        self.batches = 0
        self.assemble_ms: deque[float] = deque(maxlen=512)
        self.post_ms: deque[float] = deque(maxlen=512)
        self.wait_ms: deque[float] = deque(maxlen=512)  # per batch: from the last batch's end to this one's start
        self.batch_sizes: deque[int] = deque(maxlen=512)
        self._last_run: dict[str, float] = {}
        self._turn: dict[str, int] = {}  # when each camera was last classified, counted in windows
        self._turns = 0

    def add(self, cam: Camera) -> None:
        with self._lock:
            self._cameras[cam.name] = cam

    def remove(self, name: str) -> None:
        with self._lock:
            self._cameras.pop(name, None)
        self._last_run.pop(name, None)
        self._turn.pop(name, None)

    @property
    def cameras(self) -> list[Camera]:
        with self._lock:
            return list(self._cameras.values())

    def _collect(self, have: frozenset[str] = frozenset(), limit: int | None = None) -> list[tuple[Camera, Window]]:
        """The newest new window of at most ``limit`` (default ``max_batch``) cameras, those classified
        longest ago first (so that more cameras than ``max_batch`` all get their turn), except those
        named in ``have`` (already in the batch: taking another window from one would skip the
        window it holds there, unclassified). A camera past the limit keeps its window for later."""
        limit = self.max_batch if limit is None else limit
        now = time.monotonic()
        got: list[tuple[Camera, Window]] = []
        for cam in sorted(self.cameras, key=lambda c: self._turn.get(c.name, -1)):
            if len(got) >= limit:
                break
            if cam.name in have:
                continue
            cam.reset_if_reconnected()
            if self.stride_s > 0 and now - self._last_run.get(cam.name, -1e9) < self.stride_s:
                continue
            w = cam.take_window()
            if w is not None:
                got.append((cam, w))
        return got

    def run(self) -> None:
        fresh = False
        t_done = None
        while not self.stop_event.is_set():
            if fresh:  # just finished a batch: start on the next frame, so the window ends with a frame just captured
                with self.wake:
                    self.wake.wait(self.frame_wait_s)
                fresh = False
            batch = self._collect()
            if not batch:
                with self.wake:
                    self.wake.wait(0.1)
                continue
            pending = len(self.cameras) - len(batch)
            if pending > 0 and self.batch_wait_s > 0:  # dynamic batching: a short, bounded wait
                deadline = time.monotonic() + self.batch_wait_s
                while pending > 0 and time.monotonic() < deadline and len(batch) < self.max_batch:
                    with self.wake:
                        self.wake.wait(max(0.0, deadline - time.monotonic()))
                    more = self._collect(frozenset(c.name for c, _ in batch), self.max_batch - len(batch))
                    batch += more
                    pending -= len(more)
            t1 = time.perf_counter()
            x = batch_windows([w.frames for _, w in batch])  # uint8 (B, T, H, W, C); the classifier normalizes
            t2 = time.perf_counter()
            try:
                probs = self.classifier.probs(x)
            except Exception:  # noqa: BLE001 - log, count, keep serving
                self.errors += 1
                logger.exception("inference failed")
                self.stop_event.wait(0.5)
                continue
            t3 = time.perf_counter()
            infer_ms = (t3 - t2) * 1e3
            self._emit(batch, probs, infer_ms)
            self._served(batch)
            self.batches += 1
            fresh = self.frame_wait_s > 0
            self.batch_sizes.append(len(batch))
            self.assemble_ms.append((t2 - t1) * 1e3)
            t_end = time.perf_counter()
            self.post_ms.append((t_end - t3) * 1e3 / len(batch))
            if t_done is not None:
                self.wait_ms.append((t1 - t_done) * 1e3)
            t_done = t_end

    def _served(self, batch: list[tuple[Camera, Window]]) -> None:
        """Note when the cameras of ``batch`` were classified (for ``stride_s`` and for taking turns)."""
        now = time.monotonic()
        for cam, _ in batch:
            self._last_run[cam.name] = now
            self._turns += 1
            self._turn[cam.name] = self._turns  # in batch order: a strict round robin when not all fit

    def _emit(self, batch: list[tuple[Camera, Window]], probs: np.ndarray, infer_ms: float) -> None:
        """Smooth the scores ``(B, K)`` of ``batch``, build one message per camera and publish them
        together: NumPy is called per batch, not per camera (:func:`streamrec.live.smoothing.update_many`),
        and the event loop is handed the batch once."""
        probs = restrict_rows(probs, [cam.subset for cam, _ in batch])  # --sports-only cameras: sport classes only
        smoothed = update_many([cam.smoother for cam, _ in batch], probs)
        tops = top_k_many(probs, self.classifier.loaded.classes)
        out = []
        for (cam, w), sm, top in zip(batch, smoothed, tops):
            cam.seq += 1
            msg = prediction_message(
                seq=cam.seq, smoothed=sm, top=top, classes=self.classifier.loaded.classes,
                start_ts=w.start_ts, end_ts=w.end_ts, frames=len(w.timestamps), infer_ms=infer_ms,
                sent_ts=self.clock(), capture_fps=cam.capture.fps(), camera=cam.name,
                meaningless=self.classifier.loaded.meaningless,
            )
            cam.record(msg, self.clock())
            out.append((cam, msg))
        self.publish(out)
