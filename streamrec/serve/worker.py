"""The inference worker: one thread per loaded model, batching the newest windows of its cameras' streams.

A labelled stream is a camera's whole frame or one of its zones: every zone is one more window
in the same batch. The worker takes the newest complete window of every stream that has a new
one, waits at most ``batch_wait_s`` for the others, and classifies them all in one forward pass. It never works
through a backlog: windows that ended while the model was busy are skipped (and counted), not
queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from streamrec.live.camera import Camera, Stream
from streamrec.live.labels import Labelled, label_messages
from streamrec.live.ring import Window
from streamrec.models.preprocess import batch_windows
from streamrec.runtime.classifier import Classifier
from streamrec.supervision import Supervisor
from streamrec.zones import stream_key

logger = logging.getLogger(__name__)


class InferenceWorker(threading.Thread):
    """Classifies the newest windows of the streams of ``cameras`` (sharing ``classifier``) in
    batches; ``publish`` gets each batch's ``(stream, message)`` pairs."""

    def __init__(self, classifier: Classifier, publish: Callable[[list[tuple[Stream, dict[str, Any]]]], None], *,
                 stop_event: threading.Event, wake: threading.Condition, batch_wait_s: float = 0.01,
                 stride_s: float = 0.0, max_batch: int = 32, clock: Callable[[], float] = time.time,
                 frame_wait_s: float = 0.1, name: str = "inference", supervisor: Supervisor | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.classifier = classifier
        self.publish = publish
        self.stop_event = stop_event
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
        self.supervisor = supervisor or Supervisor()
        self.batches = 0
        self.assemble_ms: deque[float] = deque(maxlen=512)
        self.post_ms: deque[float] = deque(maxlen=512)
        self.wait_ms: deque[float] = deque(maxlen=512)  # per batch: from the last batch's end to this one's start
        self.batch_sizes: deque[int] = deque(maxlen=512)
        self._last_run: dict[str, float] = {}  # by stream key
        self._turn: dict[str, int] = {}  # when each stream was last classified, counted in windows
        self._turns = 0

    def add(self, cam: Camera) -> None:
        with self._lock:
            self._cameras[cam.name] = cam

    def remove(self, name: str) -> None:
        """Stop classifying camera ``name`` (all its streams)."""
        with self._lock:
            cam = self._cameras.pop(name, None)
        for key in [s.name for s in cam.streams.values()] if cam is not None else [name]:
            self._last_run.pop(key, None)
            self._turn.pop(key, None)

    @property
    def cameras(self) -> list[Camera]:
        with self._lock:
            return list(self._cameras.values())

    @property
    def streams(self) -> list[Stream]:
        """Every labelled stream of every camera: whole frames and zones."""
        return [s for cam in self.cameras for s in cam.streams.values()]

    def collect(self, have: frozenset[str] = frozenset(), limit: int | None = None) -> list[tuple[Stream, Window]]:
        """The newest new window of at most ``limit`` (default ``max_batch``) streams, those classified
        longest ago first (so that more streams than ``max_batch`` all get their turn), except those
        whose stream key is in ``have`` (already in the batch: taking another window from one would
        skip the window it holds there, unclassified). A stream past the limit keeps its window for later."""
        limit = self.max_batch if limit is None else limit
        now = time.monotonic()
        got: list[tuple[Stream, Window]] = []
        for cam in self.cameras:
            cam.reset_if_reconnected()
        for stream in sorted(self.streams, key=lambda s: self._turn.get(s.name, -1)):
            if len(got) >= limit:
                break
            if stream.name in have:
                continue
            if self.stride_s > 0 and now - self._last_run.get(stream.name, -1e9) < self.stride_s:
                continue
            w = stream.take_window()
            if w is not None:
                got.append((stream, w))
        return got

    def run(self) -> None:
        """Batches until stopped, under the supervisor: an exception anywhere in a round (the model,
        building or publishing messages) is logged once, counted and the loop restarted."""
        self.supervisor.run(self.name, self.batch_loop, self.stop_event)

    def batch_loop(self) -> None:
        fresh = False
        t_done = None
        while not self.stop_event.is_set():
            if fresh:  # just finished a batch: start on the next frame, so the window ends with a frame just captured
                with self.wake:
                    self.wake.wait(self.frame_wait_s)
                fresh = False
            batch = self.collect()
            if not batch:
                with self.wake:
                    self.wake.wait(0.1)
                continue
            batch = self.fill(batch)
            t1 = time.perf_counter()
            x = batch_windows([w.frames for _, w in batch])  # uint8 (B, T, H, W, C); the classifier normalizes
            t2 = time.perf_counter()
            probs = self.classifier.probs(x)
            t3 = time.perf_counter()
            infer_ms = (t3 - t2) * 1e3
            self.emit(batch, probs, infer_ms)
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

    def fill(self, batch: list[tuple[Stream, Window]]) -> list[tuple[Stream, Window]]:
        """Dynamic batching: wait at most ``batch_wait_s`` for the other streams' new windows."""
        pending = len(self.streams) - len(batch)
        if pending > 0 and self.batch_wait_s > 0:
            deadline = time.monotonic() + self.batch_wait_s
            while pending > 0 and time.monotonic() < deadline and len(batch) < self.max_batch:
                with self.wake:
                    self.wake.wait(max(0.0, deadline - time.monotonic()))
                more = self.collect(frozenset(c.name for c, _ in batch), self.max_batch - len(batch))
                batch += more
                pending -= len(more)
        return batch

    def _served(self, batch: list[tuple[Stream, Window]]) -> None:
        """Note when the streams of ``batch`` were classified (for ``stride_s`` and for taking turns)."""
        now = time.monotonic()
        for stream, _ in batch:
            self._last_run[stream.name] = now
            self._turns += 1
            self._turn[stream.name] = self._turns  # in batch order: a strict round robin when not all fit

    def emit(self, batch: list[tuple[Stream, Window]], probs: np.ndarray, infer_ms: float) -> None:
        """One message per stream of ``batch`` (scores ``(B, K)``), published together: the event
        loop is handed the batch once."""
        loaded = self.classifier.loaded
        fps = {id(s.camera): s.camera.capture.fps() for s, _ in batch}
        items = [Labelled(s.camera.name, s, s.smoother, s.camera.subset, start_ts=w.start_ts, end_ts=w.end_ts,
                          frames=len(w.timestamps), capture_fps=fps[id(s.camera)], zone=s.zone) for s, w in batch]
        msgs = label_messages(items, probs, loaded.classes, infer_ms=infer_ms, clock=self.clock,
                              meaningless=loaded.meaningless)
        by_key = {s.name: s for s, _ in batch}
        self.publish([(by_key[stream_key(m["camera"], m["zone"])], m) for m in msgs])
