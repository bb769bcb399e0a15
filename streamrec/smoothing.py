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

import numpy as np

from .validate import check_types

UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class SmoothingConfig:
    """``alpha``: weight of the newest window in the EMA (1 = no smoothing).
    ``margin``: how far a challenger's smoothed score must lead the shown label's.
    ``hold``: consecutive windows the challenger must lead before it is shown.
    ``threshold``: below this smoothed score the state is "uncertain"."""

    alpha: float = 0.4
    margin: float = 0.05
    hold: int = 2
    threshold: float = 0.2

    def __post_init__(self) -> None:
        check_types(self, prefix="smoothing.")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"smoothing.alpha: expected 0 < alpha <= 1, got {self.alpha}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"smoothing.margin: expected 0 <= margin < 1, got {self.margin}")
        if self.hold < 1:
            raise ValueError(f"smoothing.hold: expected >= 1, got {self.hold}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"smoothing.threshold: expected 0 <= threshold < 1, got {self.threshold}")


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
        probs = np.asarray(probs, np.float64)
        cfg = self.config
        if self._ema is None or self._ema.shape != probs.shape:
            self._ema = probs.copy()
        else:
            self._ema = cfg.alpha * probs + (1 - cfg.alpha) * self._ema
        ema = self._ema
        best = int(np.argmax(ema))
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
        raw = int(np.argmax(probs))
        score = float(ema[self._shown])
        return Smoothed(
            label_index=self._shown,
            score=score,
            uncertain=score < cfg.threshold,
            raw_index=raw,
            raw_score=float(probs[raw]),
            scores=ema.copy(),
        )
