"""Label smoothing: EMA of softmax scores plus hysteresis and an "uncertain" state.

Example:
    >>> import numpy as np
    >>> s = LabelSmoother(SmoothingConfig(alpha=0.5, margin=0.1, hold=2, threshold=0.3))
    >>> s.update(np.array([0.9, 0.1])).label_index   # first window: adopted at once
    0
    >>> s.update(np.array([0.1, 0.9])).label_index   # EMA 0.5 / 0.5: no lead yet
    0
    >>> s.update(np.array([0.1, 0.9])).label_index   # EMA 0.3 / 0.7: leads once
    0
    >>> s.update(np.array([0.1, 0.9])).label_index   # leads twice by the margin: switch
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from streamrec.config import SmoothingConfig  # noqa: F401 - the smoother's settings, re-exported

from streamrec.catalog import UNCERTAIN  # noqa: F401 - the label of no clear answer, re-exported


@dataclass(frozen=True)
class Smoothed:
    label_index: int  # shown label (may be uncertain: see ``uncertain``)
    score: float  # smoothed score of the shown label
    uncertain: bool
    raw_index: int
    raw_score: float
    scores: np.ndarray  # the smoothed distribution


class LabelSmoother:
    """Stateful smoother, one per camera."""

    def __init__(self, config: SmoothingConfig = SmoothingConfig()) -> None:
        self.config = config
        self._ema: np.ndarray | None = None
        self._shown: int | None = None
        self._challenger: int | None = None
        self._streak = 0

    def reset(self) -> None:
        """Forget the history (after a reconnect or a scene cut)."""
        self._ema, self._shown, self._challenger, self._streak = None, None, None, 0

    def update(self, probs: np.ndarray) -> Smoothed:
        """Feed one window's softmax scores ``(num_classes,)``."""
        return update_many([self], np.asarray(probs, np.float64)[None])[0]  # (K,) -> (1, K)

    def _advance(self, best: int, ema: np.ndarray) -> int:
        """Hysteresis: the label shown after a window whose EMA is ``ema`` (argmax ``best``)."""
        cfg = self.config
        if self._shown is None:
            self._shown = best
        elif best != self._shown and ema[best] - ema[self._shown] >= cfg.margin:
            if best == self._challenger:
                self._streak += 1
            else:
                self._challenger, self._streak = best, 1
            if self._streak >= cfg.hold:
                self._shown, self._challenger, self._streak = best, None, 0
        else:
            self._challenger, self._streak = None, 0
        return self._shown


def update_many(smoothers: Sequence[LabelSmoother], probs: np.ndarray) -> list[Smoothed]:
    """:meth:`LabelSmoother.update` for each of ``smoothers`` with its row of ``probs`` ``(B, K)``.

    NumPy is called a fixed number of times per batch, not per row: with many capture threads
    each call that lets go of the GIL (``argmax`` does, even on 400 numbers) waits to get it
    back, many times longer than the work itself with many cameras on few vCPUs
    (``benchmarks/worker_wait.py``). The EMA rows are read-only views of one array.

    Example:
        >>> a, b = LabelSmoother(), LabelSmoother()
        >>> [s.label_index for s in update_many([a, b], np.array([[0.9, 0.1], [0.2, 0.8]]))]
        [0, 1]
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(smoothers):
        raise ValueError(f"probs: expected ({len(smoothers)}, K) scores, got shape {probs.shape}")
    fresh = [s._ema is None or s._ema.shape != probs.shape[1:] for s in smoothers]
    # a smoother's first window (or a new class count) is adopted as is: weight 1, prior = itself
    alpha = np.array([[1.0 if f else s.config.alpha] for s, f in zip(smoothers, fresh)])  # (B, 1)
    prior = np.stack([row if f else s._ema for s, f, row in zip(smoothers, fresh, probs)])  # (B, K)
    ema = alpha * probs + (1 - alpha) * prior
    ema.flags.writeable = False
    best, raw = ema.argmax(1).tolist(), probs.argmax(1).tolist()
    out = []
    for i, s in enumerate(smoothers):
        s._ema = ema[i]
        shown = s._advance(best[i], s._ema)
        score = float(s._ema[shown])
        out.append(Smoothed(label_index=shown, score=score, uncertain=score < s.config.threshold,
                            raw_index=raw[i], raw_score=float(probs[i, raw[i]]), scores=s._ema))
    return out
