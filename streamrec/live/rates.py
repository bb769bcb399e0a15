"""Rates of events (frames, labels) per second over a sliding window of time."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Events per second over a sliding window of the last ``horizon_s`` seconds: once it has run
    that long, the events in the window over its whole length (a burst, frames a reconnect or a
    busy link bunched up, is not read as thousands a second); a clock that goes back starts it over.

    Example:
        >>> m = RateMeter(horizon_s=2.0)
        >>> for i in range(100): m.tick(100.0 + i / 25)
        >>> round(m.rate(104.0), 1)
        25.0
        >>> for i in range(30): m.tick(110.0 + i * 1e-6)  # a burst after 6 s without a frame
        >>> m.rate(110.0) < 30
        True
    """

    def __init__(self, horizon_s: float = 2.0) -> None:
        self.horizon_s = horizon_s
        self._times: deque[float] = deque()
        self._since: float | None = None  # the first event's time (of this run of the clock)

    def tick(self, now: float) -> None:
        if self._times and now < self._times[-1] - self.horizon_s:  # the clock went back: start over
            self._times.clear()
            self._since = None
        self._since = now if self._since is None else self._since
        self._times.append(now)
        while self._times and self._times[0] < now - self.horizon_s:
            self._times.popleft()

    def rate(self, now: float) -> float:
        while self._times and self._times[0] < now - self.horizon_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        if self._since is not None and now - self._since >= self.horizon_s:
            return len(self._times) / self.horizon_s  # the events of the whole window
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0
