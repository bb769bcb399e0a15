"""The inference loop: newest complete window -> classifier -> smoother -> publish.

It never works through a backlog: each pass takes the newest window in the ring, and
windows that ended while the model was busy are skipped (and counted), not queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from .capture import RateMeter
from .engine import Classifier
from .messages import prediction_message
from .preprocess import stack_window
from .ring import FrameRing
from .smoothing import LabelSmoother

logger = logging.getLogger(__name__)


class InferenceLoop(threading.Thread):
    """Classifies the newest window of ``ring`` until ``stop`` is set; hands each message
    to ``publish`` (called from this thread: it must not block)."""

    def __init__(
        self,
        ring: FrameRing,
        classifier: Classifier,
        smoother: LabelSmoother,
        publish: Callable[[dict[str, Any]], None],
        *,
        stop: threading.Event,
        capture_fps: Callable[[], float] = lambda: 0.0,
        stride_s: float = 0.0,
        camera: str = "default",
        clock: Callable[[], float] = time.time,
        name: str = "inference",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.ring = ring
        self.classifier = classifier
        self.smoother = smoother
        self.publish = publish
        self.stop_event = stop
        self.capture_fps = capture_fps
        self.stride_s = stride_s
        self.camera = camera
        self.clock = clock
        self.spec = classifier.loaded.spec
        self.seq = 0
        self.skipped = 0  # window ends that arrived while the model was busy
        self.errors = 0
        self._rate = RateMeter(horizon_s=10.0)
        self.infer_ms: deque[float] = deque(maxlen=512)
        self.assemble_ms: deque[float] = deque(maxlen=512)
        self.post_ms: deque[float] = deque(maxlen=512)
        self.latency_ms: deque[float] = deque(maxlen=512)
        self.last_message: dict[str, Any] | None = None

    def rate(self) -> float:
        return self._rate.rate(self.clock())

    def run(self) -> None:
        last_end = -1
        last_start = 0.0
        classes = self.classifier.loaded.classes
        while not self.stop_event.is_set():
            newest = self.ring.wait_newer(last_end, timeout=0.2)
            if newest <= last_end:
                continue
            if self.stride_s > 0:
                wait = last_start + self.stride_s - time.monotonic()
                if wait > 0:
                    self.stop_event.wait(wait)
                    continue
            t0 = time.perf_counter()
            window = self.ring.newest_window(self.spec.frames, self.spec.fps)
            if window is None or window.end_seq <= last_end:
                self.stop_event.wait(0.01)
                continue
            if last_end >= 0 and window.end_seq > last_end + 1:
                self.skipped += window.end_seq - last_end - 1
            last_end = window.end_seq
            last_start = time.monotonic()
            batch = stack_window(window.frames)  # (T, C, H, W) -> (1, C, T, H, W)
            t1 = time.perf_counter()
            try:
                probs = self.classifier.probs(batch)[0]
            except Exception:  # noqa: BLE001 - log, count, keep serving
                self.errors += 1
                logger.exception("inference failed")
                self.stop_event.wait(0.5)
                continue
            t2 = time.perf_counter()
            smoothed = self.smoother.update(probs)
            self.seq += 1
            msg = prediction_message(
                seq=self.seq,
                smoothed=smoothed,
                probs=probs,
                classes=classes,
                start_ts=window.start_ts,
                end_ts=window.end_ts,
                frames=len(window.timestamps),
                infer_ms=(t2 - t1) * 1e3,
                sent_ts=self.clock(),
                capture_fps=self.capture_fps(),
                camera=self.camera,
                meaningless=self.classifier.loaded.meaningless,
            )
            self.publish(msg)
            t3 = time.perf_counter()
            self.assemble_ms.append((t1 - t0) * 1e3)
            self.infer_ms.append((t2 - t1) * 1e3)
            self.post_ms.append((t3 - t2) * 1e3)
            self.latency_ms.append(msg["latency_ms"])
            self._rate.tick(self.clock())
            self.last_message = msg

    def stats(self) -> dict[str, Any]:
        infer = list(self.infer_ms)
        return {
            "inference_rate": round(self.rate(), 3),
            "predictions": self.seq,
            "skipped_windows": self.skipped,
            "inference_errors": self.errors,
            "infer_ms_p50": round(float(np.median(infer)), 2) if infer else None,
        }
