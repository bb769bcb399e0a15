"""A recorded clip's segments: runs of windows with the same label as serve would show it.

Each window's scores go through serve's own smoothing (:class:`~streamrec.live.smoothing.LabelSmoother`
with the default :class:`~streamrec.config.SmoothingConfig`: EMA, hysteresis, and "uncertain"
below its threshold), and consecutive windows with the same shown label make one segment,
like the segments of serve's activity history. A window stands for the time it adds to the
timeline (from the previous window's end to its own), so a segment runs from the end of the
previous segment's last window (the clip's first segment: from the clip's start) to the end
of its own last window, and the segments tile the clip. Also how the segments are shown: their
times (:func:`clock`) and a colour per label (:func:`class_colors`).

Example:
    >>> import numpy as np
    >>> b = SegmentBuilder(["jump", "run"])  # serve's smoothing: "run" shown once it led for 2 windows
    >>> for end, p in [(1, [0.9, 0.1]), (2, [0.9, 0.1]), (3, [0.1, 0.9]), (4, [0.05, 0.95]), (5, [0.05, 0.95])]:
    ...     _ = b.add(np.array(p), start=end - 1.0, end=float(end))
    >>> [(s.label, s.start, s.end, s.windows) for s in b.finish()]
    [('jump', 0.0, 4.0, 4), ('run', 4.0, 5.0, 1)]
    >>> summary(b.finish())
    '2 segments: jump 0.0-4.0 s, run 4.0-5.0 s'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamrec.config import SmoothingConfig
from streamrec.live.smoothing import UNCERTAIN, LabelSmoother
from streamrec.offline.plotting import colormap


@dataclass(frozen=True)
class ClipSegment:
    """One run of windows with the same shown label (``uncertain`` where serve shows that)."""

    label: str
    start: float  # seconds, the file's own timestamps
    end: float
    score: float  # mean smoothed score of the label over the segment's windows
    peak: float
    windows: int


class SegmentBuilder:
    """Feed each window's scores in order (:meth:`add`); :meth:`finish` gives the segments."""

    def __init__(self, classes: list[str], config: SmoothingConfig = SmoothingConfig()) -> None:
        self.classes = classes
        self.smoother = LabelSmoother(config)
        self._runs: list[dict] = []  # label, start, end, scores
        self._last_end: float | None = None

    def add(self, probs: np.ndarray, *, start: float, end: float) -> int:
        """One window's scores ``(num_classes,)``; the index of the segment it falls in."""
        smoothed = self.smoother.update(probs)
        label = UNCERTAIN if smoothed.uncertain else self.classes[smoothed.label_index]
        if not self._runs or self._runs[-1]["label"] != label:
            begin = start if self._last_end is None else self._last_end  # what this window adds to the timeline
            self._runs.append({"label": label, "start": begin, "scores": []})
        run = self._runs[-1]
        run["end"] = end
        run["scores"].append(smoothed.score)
        self._last_end = end
        return len(self._runs) - 1

    def finish(self) -> list[ClipSegment]:
        """The segments so far."""
        return [ClipSegment(r["label"], r["start"], r["end"], round(float(np.mean(r["scores"])), 5),
                            round(max(r["scores"]), 5), len(r["scores"])) for r in self._runs]


def summary(segments: list[ClipSegment]) -> str:
    """One line: the segments, with their times.

    Example:
        >>> summary([ClipSegment("run", 0.0, 9.5, 0.8, 0.9, 10)])
        '1 segment: run 0.0-9.5 s'
    """
    parts = ", ".join(f"{s.label} {s.start:.1f}-{s.end:.1f} s" for s in segments)
    return f"{len(segments)} segment{'s' if len(segments) != 1 else ''}: {parts}"


def clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour), to the nearest second (as the summary's ``12.0 s``).

    Example:
        >>> clock(0.0), clock(65.4), clock(11.96), clock(600), clock(3725.2)
        ('00:00', '01:05', '00:12', '10:00', '1:02:05')
    """
    s = round(max(0.0, seconds))
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def class_colors(labels: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinct colour for each label, grey for "uncertain": tab20's 18 colours that are not
    grey (the strong ten first), then evenly spaced hues for more.

    Example:
        >>> cols = class_colors([f"c{i}" for i in range(30)] + ["uncertain"])
        >>> len(set(cols.values())), cols["uncertain"]
        (31, (0.6, 0.6, 0.6, 1.0))
    """
    tab = colormap("tab20", "--plot")
    palette = [tuple(tab(i)) for i in [*range(0, 20, 2), *range(1, 20, 2)] if i not in (14, 15)]  # 14, 15: greys
    names = [label for label in dict.fromkeys(labels) if label != UNCERTAIN]
    extra = len(names) - len(palette)
    if extra > 0:
        hsv = colormap("hsv", "--plot")
        palette += [tuple(hsv((i + 0.5) / extra)[:3]) + (1.0,) for i in range(extra)]
    out = dict(zip(names, palette))
    if UNCERTAIN in labels:
        out[UNCERTAIN] = (0.6, 0.6, 0.6, 1.0)
    return out
