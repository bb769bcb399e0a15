"""One labelled stream's labels: the counts behind ``/healthz`` and the one builder of prediction messages.

A labelled stream is a camera's whole frame or one of its zones. :func:`label_messages` turns
one batch's scores into one message per stream, for ``serve``'s
inference worker and the cluster's driver alike: sport-class restriction, smoothing (NumPy
called once per batch), top-5, the message, and the stream's counts. A window whose scores are
not finite (a broken model or export) gets no message: it is counted in ``nonfinite``.

Example:
    >>> import numpy as np
    >>> from streamrec.live.smoothing import LabelSmoother
    >>> stats = LabelStats()
    >>> item = Labelled("gate", stats, LabelSmoother(), None, start_ts=0.0, end_ts=1.0, frames=16, capture_fps=15.0)
    >>> [m["label"] for m in label_messages([item], np.array([[0.1, 0.9]]), ["run", "walk"],
    ...                                      infer_ms=5.0, clock=lambda: 1.5, meaningless=False)]
    ['walk']
    >>> label_messages([item], np.array([[np.nan, 0.5]]), ["run", "walk"], infer_ms=5.0,
    ...                clock=lambda: 1.6, meaningless=False), stats.nonfinite, stats.seq
    ([], 1, 1)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from streamrec.live.rates import RateMeter
from streamrec.live.messages import prediction_message, top_k_many
from streamrec.live.smoothing import LabelSmoother, update_many
from streamrec.models.kinetics import restrict_rows
from streamrec.zones import stream_key

logger = logging.getLogger(__name__)


class LabelStats:
    """One labelled stream's labels so far: how many (``seq``), how fast, their inference time and latency,
    and the windows skipped while the model was busy. Each labelled stream of a
    :class:`~streamrec.live.camera.Camera` is one; the cluster's driver keeps one per remote camera.

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
        self.nonfinite = 0  # windows whose scores were NaN or infinite: no message
        self.last_nonfinite: float | None = None  # clock() of the last one
        self.last_at: float | None = None  # clock() of the last message
        self.gaps: deque[float] = deque(maxlen=64)  # seconds between messages

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
        if self.last_at is not None:
            self.gaps.append(now - self.last_at)
        self.last_at = now
        self.last_message = msg

    def stats(self) -> dict[str, Any]:
        infer, lat = list(self.infer_ms), list(self.latency_ms)
        return {
            "inference_rate": round(self.rate.rate(time.time()), 3),
            "predictions": self.seq,
            "skipped_windows": self.skipped,
            "nonfinite_windows": self.nonfinite,
            "infer_ms_p50": round(float(np.median(infer)), 2) if infer else None,
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2) if lat else None,
        }


    def problems(self, now: float, *, frames_arriving: bool, started: float, stall_factor: float = 10.0,
                 stall_floor_s: float = 10.0, first_label_s: float = 180.0, recent_s: float = 60.0) -> list[str]:
        """Why this camera's labels are not healthy at ``now`` (empty: they are): no label for
        ``stall_factor`` times the usual gap (at least ``stall_floor_s``; ``first_label_s`` for the
        first) while frames arrive, or windows with non-finite scores within ``recent_s``.

        Example:
            >>> s = LabelStats()
            >>> for t in (1.0, 1.5, 2.0):
            ...     s.record({"infer_ms": 1.0, "latency_ms": 1.0}, t)
            >>> s.problems(5.0, frames_arriving=True, started=0.0)
            []
            >>> s.problems(30.0, frames_arriving=True, started=0.0)
            ['no label for 28 s while frames arrive (usually one every 0.5 s)']
            >>> s.problems(30.0, frames_arriving=False, started=0.0)
            []
        """
        out = []
        if frames_arriving:
            if self.last_at is None:
                if now - started > first_label_s:
                    out.append(f"no label in {now - started:.0f} s while frames arrive")
            else:
                usual = float(np.median(self.gaps)) if self.gaps else 1.0
                if now - self.last_at > max(stall_factor * usual, stall_floor_s):
                    out.append(f"no label for {now - self.last_at:.0f} s while frames arrive "
                               f"(usually one every {usual:.1f} s)")
        if self.last_nonfinite is not None and now - self.last_nonfinite <= recent_s:
            out.append(f"{self.nonfinite} windows with non-finite scores (NaN or infinity) from the model: skipped")
        return out

class StreamLabels(LabelStats):
    """One labelled stream of camera ``camera``: its whole frame (``zone`` None) or one zone, with
    its own smoother and label counts; ``name`` is its stream key (``camera`` or ``camera/zone``).
    A :class:`~streamrec.live.camera.Camera`'s streams add their ring; the cluster's driver holds
    these for its remote cameras."""

    def __init__(self, camera: str, zone: str | None, smoothing: Any) -> None:
        LabelStats.__init__(self)
        self.zone = zone
        self.name = stream_key(camera, zone)
        self.smoother = LabelSmoother(smoothing)


@dataclass
class Labelled:
    """One labelled stream's window in a batch, with what its message needs: ``name`` is the
    camera's, ``zone`` the zone's (``None``: the whole frame)."""

    name: str
    stats: LabelStats
    smoother: LabelSmoother
    subset: Sequence[int] | None  # --sports-only: the sport classes' indices
    start_ts: float
    end_ts: float
    frames: int
    capture_fps: float
    zone: str | None = None


def label_messages(items: list[Labelled], probs: np.ndarray, classes: Sequence[str], *, infer_ms: float,
                   clock: Callable[[], float], meaningless: bool) -> list[dict[str, Any]]:
    """The prediction messages of one batch: ``probs`` is ``(B, K)`` softmax scores in the order of
    ``items``. Rows that are not finite are left out (and counted on their camera)."""
    finite = np.isfinite(probs).all(axis=1)
    for item in (it for it, ok in zip(items, finite) if not ok):
        item.stats.nonfinite += 1
        item.stats.last_nonfinite = clock()
        if item.stats.nonfinite == 1:  # once per stream: /healthz and the page keep saying it
            logger.warning("camera %s: the model gave non-finite scores (NaN or infinity); such windows are skipped",
                           stream_key(item.name, item.zone))
    if not finite.all():
        items, probs = [it for it, ok in zip(items, finite) if ok], probs[finite]
        if not items:
            return []
    probs = restrict_rows(probs, [it.subset for it in items])
    smoothed = update_many([it.smoother for it in items], probs)
    out = []
    for it, sm, top in zip(items, smoothed, top_k_many(probs, classes)):
        it.stats.seq += 1
        msg = prediction_message(seq=it.stats.seq, smoothed=sm, top=top, classes=classes, start_ts=it.start_ts,
                                 end_ts=it.end_ts, frames=it.frames, infer_ms=infer_ms, sent_ts=clock(),
                                 capture_fps=it.capture_fps, camera=it.name, zone=it.zone,
                                 meaningless=meaningless)
        it.stats.record(msg, clock())
        out.append(msg)
    return out
