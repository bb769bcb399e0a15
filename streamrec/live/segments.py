"""Label segments: :class:`SegmentTracker` turns one labelled stream's labels (a camera's whole
frame, or one zone of it) into closed segments (camera, label, start, end, mean and peak score,
zone) for the activity history
(:class:`~streamrec.live.history.HistoryStore`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from streamrec.zones import stream_key

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Segment:
    camera: str
    label: str
    start: float
    end: float
    mean_score: float
    peak_score: float
    windows: int
    zone: str | None = None  # None: the camera's whole frame

    @property
    def key(self) -> str:
        """The labelled stream's key: ``camera`` or ``camera/zone``."""
        return stream_key(self.camera, self.zone)


STALE_FLOOR_S = 2.0  # labels that stop for this long (at least) end their segment: an outage
STALE_FACTOR = 3.0  # ...or for this many of the camera's usual intervals between labels


class Cadence:
    """How often one stream's labels come (the lower quartile of the last 16 intervals: outages
    among them do not stretch it, an odd pair of labels close together does not shrink it), and so
    how long a pause of them is an outage: :data:`STALE_FACTOR` usual intervals,
    :data:`STALE_FLOOR_S` at least. One notion of an outage for the history's segments and the
    rules' events.

    >>> c = Cadence()
    >>> c.stale_after()
    3.0
    >>> for gap in (0.5, 0.5, 4.0):
    ...     c.add(gap)
    >>> c.stale_after()
    2.0
    """

    def __init__(self) -> None:
        self._gaps: deque[float] = deque(maxlen=16)  # seconds between labels

    def add(self, gap: float) -> None:
        if gap > 0:
            self._gaps.append(gap)

    def stale_after(self) -> float:
        """Seconds without a label after which the stream's labels have stopped."""
        usual = sorted(self._gaps)[len(self._gaps) // 4] if self._gaps else 1.0
        return max(STALE_FLOOR_S, STALE_FACTOR * usual)


class SegmentTracker:
    """Turns one labelled stream's (label, score, time) into closed segments: the whole frame of
    ``camera``, or its ``zone``.

    A segment closes when the label changes, when the labels stop (an outage: no label for
    ``STALE_FACTOR`` usual intervals, ``STALE_FLOOR_S`` at least; or :meth:`interrupt` when the
    camera is not running): then it ends at its last label, never counting the outage as
    activity. ``live(key, segment, fresh_until)`` hears of the open segment at each label
    (``key`` is the stream's key, ``camera`` or ``camera/zone``; ``segment`` ends at its last
    label; ``None`` once it closed).

    Example:
        >>> closed = []
        >>> t = SegmentTracker("gate", closed.append)
        >>> for ts in (10.0, 11.0, 12.0, 40.0):  # the camera was away from 12 s to 40 s
        ...     t.update("walking", 0.9, ts)
        >>> [(s.start, s.end) for s in closed]
        [(10.0, 12.0)]
    """

    def __init__(self, camera: str, sink: Callable[[Segment], None],
                 live: Callable[[str, Segment | None, float], None] | None = None, *,
                 zone: str | None = None) -> None:
        self.camera = camera
        self.zone = zone
        self.key = stream_key(camera, zone)
        self.sink = sink
        self.live = live
        self._label: str | None = None
        self._start = self._end = 0.0
        self._sum = self._peak = 0.0
        self._n = 0
        self._last: float | None = None  # the time of the last label, of any segment
        self.cadence = Cadence()

    def stale_after(self) -> float:
        """Seconds without a label after which the open segment has ended at its last label."""
        return self.cadence.stale_after()

    def update(self, label: str, score: float, ts: float) -> None:
        """``label`` scored ``score`` at ``ts``; a time before the last label's (the clock stepped
        back) counts as the last label's, so segments never overlap."""
        if self._last is not None:
            ts = max(ts, self._last)
            gap = ts - self._last
            if gap > self.stale_after():
                self.close()  # the labels stopped meanwhile: it ended at its last label
            self.cadence.add(gap)
        self._last = ts
        if label != self._label:
            self.close(ts)
            self._label, self._start, self._sum, self._peak, self._n = label, ts, 0.0, 0.0, 0
        self._end = ts
        self._sum += score
        self._peak = max(self._peak, score)
        self._n += 1
        if self.live is not None:
            self.live(self.key, self._segment(self._end), self._end + self.stale_after())

    def interrupt(self) -> None:
        """The camera is not running (disconnected, reconnecting, ended): the open segment ends
        at its last label."""
        self.close()

    def close(self, ts: float | None = None) -> None:
        """Write the open segment and forget it: it ends at ``ts`` when its last label is recent
        (within :meth:`stale_after`), else (or without ``ts``) at its last label."""
        if self._label is not None and self._n:
            recent = ts is not None and ts - self._end <= self.stale_after()
            self.sink(self._segment(max(self._end, ts) if recent else self._end))
            if self.live is not None:
                self.live(self.key, None, 0.0)
        self._label = None

    def _segment(self, end: float) -> Segment:
        return Segment(self.camera, self._label or "", self._start, end, round(self._sum / self._n, 5),
                       round(self._peak, 5), self._n, self.zone)
