"""When a live frame was taken: its stream timestamp, placed on the local clock by its arrival.

A network camera's frames do not arrive evenly: a large key frame, a busy link or a decoder
that works in bursts delays some and bunches others up. Dated by arrival alone, the frames of
a window (sampled by time, :func:`streamrec.live.ring.sample_indices`) would move with that
jitter: the same stream sent twice would give windows of different frames. The stream's own
presentation times (``pts``) are even, so a frame is dated ``pts + offset``, where ``offset``
places the stream's clock on the local one:

- it follows the least-delayed frames (a frame that arrives sooner than ``pts + offset`` lowers
  it at once), so a frame is never dated after its data came in and the latency counted from its
  date is never less than the true one;
- it rises slowly towards later arrivals (``RISE`` of the difference per frame), which follows a
  camera clock that runs slower than this machine's without passing jitter on;
- a jump of more than ``RESYNC_S`` (a stream that restarted its timestamps, or a stall) starts
  over from the arrival; after ``DISTRUST_AFTER`` of them (timestamps that run far slower than
  real time), the stream's frames are dated by arrival, as a webcam's are.

Dates never go back: a frame is dated at least ``MIN_STEP_S`` after the one before it, unless the
local clock itself went back by more than ``RESYNC_S`` (an NTP correction): then the frames are
dated by that clock from there (the capture starts its windows anew), not held at the old date.
Frames without a ``pts`` (webcams) are dated by arrival.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

RESYNC_S = 1.0
DISTRUST_AFTER = 3
RISE = 0.002
MIN_STEP_S = 1e-6


class StreamClock:
    """Dates the frames of one live stream. One per opened source: a reopened stream starts anew.

    Example:
        >>> clock = StreamClock()
        >>> [round(clock.date(arrival, pts), 3) for arrival, pts in [(10.03, 0.0), (10.04, 0.04), (10.15, 0.08)]]
        [10.03, 10.04, 10.08]
    """

    def __init__(self, name: str = "stream") -> None:
        self.name = name
        self.offset: float | None = None
        self.last: float | None = None
        self.resyncs = 0

    @property
    def trusted(self) -> bool:
        """Whether the stream's timestamps date its frames (else their arrival does)."""
        return self.resyncs < DISTRUST_AFTER

    def date(self, arrival: float, pts: float | None) -> float:
        """The date of a frame whose data came in at ``arrival`` (local clock) with stream time ``pts``."""
        if pts is None or not self.trusted:
            ts = arrival
        else:
            seen = arrival - pts
            if self.offset is None or abs(seen - self.offset) > RESYNC_S:
                self.resyncs += self.offset is not None
                self.offset = seen
                if not self.trusted:
                    logger.warning("%s: its timestamps jumped %d times; its frames are dated by arrival from now on",
                                   self.name, self.resyncs)
            elif seen < self.offset:
                self.offset = seen
            else:
                self.offset += RISE * (seen - self.offset)
            ts = min(pts + self.offset, arrival)
        if self.last is not None and ts < self.last - RESYNC_S:  # the local clock stepped back (NTP): dated anew
            logger.warning("%s: the clock went back %.1f s; its frames are dated from it anew", self.name, self.last - ts)
        elif self.last is not None and ts <= self.last:
            ts = self.last + MIN_STEP_S
        self.last = ts
        return ts
