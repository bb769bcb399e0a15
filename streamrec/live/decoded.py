"""A decoded frame as the live path takes it: its time fixed up where the stream's timestamps do
not rise (:class:`FrameTimes`), and its picture turned upright (:func:`upright`)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


class FrameTimes:
    """The times of a stream's decoded frames, fixed up where they do not rise. A frame whose
    timestamp repeats or goes back once in a while (a variable-rate file's glitch) comes one frame
    time after the last; a stream whose timestamps keep coming out of order (AVI and other formats
    without presentation times label frames in decode order, 1, 2, 4, 3, ...: :data:`DISORDER_MAX`
    within :data:`DISORDER_SPAN` frames) is timed by frame index from then on, the true clock of a
    constant-rate stream. A frame without a time is timed by its index.

    >>> t = FrameTimes(10.0)
    >>> [round(t.of(x), 2) for x in (0.0, 0.1, 0.1, 0.3, 0.4)]  # one repeated time
    [0.0, 0.1, 0.2, 0.3, 0.4]
    """

    DISORDER_MAX = 3
    DISORDER_SPAN = 100

    def __init__(self, fps: float | None, name: str = "the stream") -> None:
        self.fps, self.name = fps, name
        self.first: float | None = None
        self.last = -float("inf")
        self.index = 0
        self.by_index = False
        self.disorder: list[int] = []  # the indices of the latest out-of-order frames

    def of(self, pts: float | None) -> float | None:
        if self.first is None:
            self.first = pts if pts is not None else 0.0
        if self.fps and not self.by_index and pts is not None and pts <= self.last:
            self.disorder = [i for i in self.disorder if i > self.index - self.DISORDER_SPAN] + [self.index]
            if len(self.disorder) >= self.DISORDER_MAX:
                logger.debug("%s: timestamps out of order; timing frames by index", self.name)
                self.by_index = True
            else:
                pts = self.last + 1.0 / self.fps
        if self.fps and (self.by_index or pts is None):
            pts = self.first + self.index / self.fps
        self.index += 1
        self.last = pts if pts is not None else self.last
        return pts


def upright(rgb: np.ndarray, rotation: int | float | None) -> np.ndarray:
    """``rgb`` turned as its stream's display matrix says (a phone's portrait video is stored
    sideways, ``rotation`` 90 or -90: counter-clockwise degrees), as players and FFmpeg show it.

    >>> upright(np.arange(6).reshape(2, 3), 90).tolist(), upright(np.arange(6).reshape(2, 3), 0).shape
    ([[2, 5], [1, 4], [0, 3]], (2, 3))
    """
    turns = round((rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
