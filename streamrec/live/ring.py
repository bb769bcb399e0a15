"""A fixed-size ring of preprocessed frames with capture timestamps, and window sampling.

The capture thread writes; the inference loop reads the newest window. Writing never
waits on a reader: when the ring is full the oldest frame is overwritten and, if no
window ever used it, counted as dropped.

Windows are sampled by timestamp, not by index: frame ``k`` of a ``T``-frame window at
``fps`` is the ring's frame nearest to ``end_ts - (T - 1 - k) / fps``. A 25, 30 or 60 fps
camera therefore gives the same temporal span.

Example:
    >>> import numpy as np
    >>> ring = FrameRing(capacity=64, frame_shape=(1,))
    >>> for i in range(40):
    ...     _ = ring.write(np.array([i], np.float32), ts=i / 30)
    >>> w = ring.newest_window(frames=4, fps=15)
    >>> [int(x) for x in w.frames[:, 0]]  # every other frame of a 30 fps source
    [33, 35, 37, 39]
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """``frames`` ``(T, *frame_shape)`` with their capture timestamps (Unix seconds)."""

    frames: np.ndarray
    timestamps: np.ndarray
    end_seq: int  # sequence number of the window's last frame

    @property
    def start_ts(self) -> float:
        return float(self.timestamps[0])

    @property
    def end_ts(self) -> float:
        return float(self.timestamps[-1])


SOURCE_FPS_MAX = 240.0  # the fastest source a ring is sized for (a high-speed camera)


def capacity_for(frames: int, fps: float, *, source_fps: float = 60.0, margin: int = 8) -> int:
    """Ring size that holds one window of ``frames`` at ``fps`` from a ``source_fps`` source.

    A rate above :data:`SOURCE_FPS_MAX` counts as that: files and cameras that state 1,000 or
    90,000 frames a second (a time base read as a rate) would otherwise reserve gigabytes.

    Example:
        >>> capacity_for(16, 15.0, source_fps=30.0), capacity_for(16, 15.0, source_fps=90_000.0)
        (39, 249)
    """
    span = (frames - 1) / fps
    return int(math.ceil(span * max(min(source_fps, SOURCE_FPS_MAX), fps))) + 1 + margin


class FrameRing:
    """Thread-safe ring buffer of ``capacity`` frames of ``frame_shape`` (``dtype``)."""

    def __init__(self, capacity: int, frame_shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> None:
        if capacity < 2:
            raise ValueError(f"capacity: expected >= 2, got {capacity}")
        self.capacity = capacity
        self._frames = np.zeros((capacity, *frame_shape), dtype)
        self._ts = np.full(capacity, -np.inf)
        self._used = np.zeros(capacity, bool)  # slot was part of a returned window
        self._seq = 0  # frames written so far; the newest is _seq - 1
        self._lock = threading.Lock()
        self.dropped = 0  # frames overwritten before any window used them

    @property
    def written(self) -> int:
        return self._seq

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The shape of one frame the ring holds (what :meth:`write` takes)."""
        return self._frames.shape[1:]

    @property
    def dtype(self) -> np.dtype:
        """The element type of the frames the ring holds."""
        return self._frames.dtype

    def write(self, frame: np.ndarray, ts: float) -> int:
        """Store ``frame`` captured at ``ts``; returns its sequence number. Never blocks on readers."""
        with self._lock:
            if self._seq > 0 and ts < self._ts[(self._seq - 1) % self.capacity]:
                raise ValueError(f"ts: expected non-decreasing timestamps, got {ts} after {self._ts[(self._seq - 1) % self.capacity]}")
            slot = self._seq % self.capacity
            if self._seq >= self.capacity and not self._used[slot]:
                self.dropped += 1
            self._frames[slot] = frame
            self._ts[slot] = ts
            self._used[slot] = False
            seq = self._seq
            self._seq += 1
            return seq

    def clear(self) -> None:
        """Forget every frame (after a reconnect: old frames must not join new ones)."""
        with self._lock:
            self._ts[:] = -np.inf
            self._used[:] = True  # empty slots are not frames: overwriting them is no drop
            self._seq += self.capacity  # keeps sequence numbers rising; slots now read as empty
            # the jump is not a drop: slots holding -inf are skipped by sampling

    def newest_window(
        self, frames: int, fps: float, *, end_ts: float | None = None, pad: bool = False, after: int = -1
    ) -> Window | None:
        """The window of ``frames`` at ``fps`` ending at the newest frame, or ending at time
        ``end_ts`` (frame times nearest to ``end_ts - k / fps``). ``None`` while the ring
        does not yet span it, unless ``pad``: then the window starts at the oldest frame and
        repeats the last one to fill up. ``None`` at once, with no work done, when no frame
        newer than sequence number ``after`` has been written (a window ending after it is
        wanted: a camera's next window, checked for every camera many times a second)."""
        if self._seq - 1 <= after:  # an int read: atomic; the seq only grows
            return None
        with self._lock:
            n = min(self._seq, self.capacity)
            if n == 0:
                return None
            newest = self._seq - 1
            seqs = np.arange(newest - n + 1, newest + 1)
            slots = seqs % self.capacity
            ts = self._ts[slots]  # ascending by construction
            valid = np.isfinite(ts)
            seqs, slots, ts = seqs[valid], slots[valid], ts[valid]
            if len(ts) == 0:
                return None
            idx = sample_indices(ts, frames, fps, end_ts=end_ts, pad=pad)
            if idx is None:
                return None
            chosen = slots[idx]
            self._used[chosen] = True
            return Window(self._frames[chosen], ts[idx], int(seqs[idx[-1]]))  # indexing by arrays copies


def sample_indices(
    ts: np.ndarray, frames: int, fps: float, *, end_ts: float | None = None, pad: bool = False
) -> np.ndarray | None:
    """Indices into ascending frame times ``ts`` of a ``frames``-frame window at ``fps``.

    The window ends at the last frame, or at time ``end_ts``; frame k is the one nearest to
    ``end - (frames - 1 - k) / fps``. ``None`` when ``ts`` does not span the window, unless
    ``pad``: then it starts at the first frame and repeats the last one to fill up. Live
    capture, file classification and training clips all sample through this function.

    Example:
        >>> sample_indices(np.arange(10) / 30, 4, 15.0).tolist()
        [3, 5, 7, 9]
    """
    if len(ts) == 0:
        return None
    # half a source frame of slack at either end: a window exactly one span long fits
    half = 0.5 * (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else 0.0
    anchor = ts[-1]
    if end_ts is not None:
        n = int(np.searchsorted(ts, end_ts + half + 1e-6, side="right"))
        if n == 0:
            return None
        ts, anchor = ts[:n], end_ts
    targets = anchor - (frames - 1 - np.arange(frames)) / fps
    if targets[0] < ts[0] - half - 1e-6:
        if not pad:
            return None
        targets = ts[0] + np.arange(frames) / fps  # beyond the last frame: nearest = last
    return _nearest(ts, targets)


def _nearest(sorted_ts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index into ``sorted_ts`` of the value nearest each target (ties to the earlier)."""
    right = np.clip(np.searchsorted(sorted_ts, targets), 1, len(sorted_ts) - 1) if len(sorted_ts) > 1 else np.zeros(len(targets), int)
    if len(sorted_ts) == 1:
        return right
    left = right - 1
    choose_right = np.abs(sorted_ts[right] - targets) < np.abs(targets - sorted_ts[left])
    return np.where(choose_right, right, left)
