"""Whether a trained model beats chance on its validation clips, and which epoch ``train`` saves.

A model is only worth saving when it does better than guessing: its top-1 above the largest
class's share of the validation windows, and its loss clearly below the loss of always answering
the class shares (ln(classes) when they are balanced). ``train`` saves the epoch with the lowest
validation loss among those that do; ``--allow-chance`` saves the best one anyway.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.fsutil import atomic_torch_save

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chance:
    """What guessing scores on the validation windows: the largest class's share of them
    (top-1) and the loss of always answering the class shares (ln(classes) when balanced).

    Example:
        >>> c = Chance.of([0, 0, 1, 1, 2, 2])
        >>> round(c.top1, 3), round(c.loss, 4)
        (0.333, 1.0986)
        >>> c.beaten_by(top1=0.5, loss=1.0986), c.beaten_by(top1=0.9, loss=0.3)
        (False, True)
    """

    top1: float
    loss: float

    @classmethod
    def of(cls, labels) -> "Chance":
        counts = np.bincount(np.asarray(labels, dtype=np.int64))
        p = counts[counts > 0] / counts.sum()
        return cls(float(p.max()), float(-(p * np.log(p)).sum()))

    def beaten_by(self, *, top1: float, loss: float) -> bool:
        """Better than guessing: top-1 above the largest class's share, and the loss below
        CHANCE_LOSS_SHARE of the guess's (a loss near ln(classes) has learnt nothing)."""
        return top1 > self.top1 + 1e-9 and loss < CHANCE_LOSS_SHARE * self.loss


CHANCE_LOSS_SHARE = 0.95


class Keeper:
    """Early stopping on the validation loss, and the checkpoint: the epoch with the lowest
    validation loss among those that beat chance (among all with ``allow_chance``)."""

    def __init__(self, out: Path, chance: Chance, *, allow_chance: bool, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.out, self.chance, self.allow_chance = out, chance, allow_chance
        self.best, self.stale = st.get("best", float("inf")), st.get("stale", 0)
        self.saved, self.saved_row = st.get("saved", float("inf")), st.get("saved_row")
        if self.saved_row is not None and not Path(out).is_file():  # resumed, the checkpoint deleted or moved since
            logger.warning("%s is gone: the next epoch that beats chance writes it again", out)
            self.saved, self.saved_row = float("inf"), None
        self.best_row = st.get("best_row")
        self.ran = False  # an epoch ran in this run

    def update(self, row: dict[str, Any], checkpoint) -> None:
        """After an epoch: ``row`` its metrics, ``checkpoint()`` the dict to save (never one whose
        validation loss is not a number: it diverged)."""
        self.ran = True
        vl = row["val_loss"]
        if vl < self.best - 1e-4:
            self.best, self.stale, self.best_row = vl, 0, dict(row)
        else:
            self.stale += 1
        useful = self.allow_chance or self.chance.beaten_by(top1=row["val_top1"], loss=vl)
        if useful and vl < self.saved - 1e-4:
            atomic_torch_save(checkpoint(), self.out)
            self.saved, self.saved_row = vl, dict(row)

    @property
    def beats_chance(self) -> bool:
        r = self.saved_row
        return r is not None and self.chance.beaten_by(top1=r["val_top1"], loss=r["val_loss"])

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale, "saved": self.saved, "saved_row": self.saved_row,
                "best_row": self.best_row}

    def warning(self) -> str | None:
        """Two lines for the user when the checkpoint does no better than chance, else None."""
        if self.beats_chance:
            return None
        if self.saved_row is None and self.best_row is None and not math.isfinite(self.best) and self.ran:
            return ("warning: the training diverged: the validation loss was not a number in any epoch (lower --lr; "
                    f"streamrec lr-find suggests one)\nnot saved to {self.out}")
        r = self.saved_row or self.best_row or {}
        got = f"epoch {r['epoch']}: val top-1 {r['val_top1']:.3f}, val loss {r['val_loss']:.4f}" if r else "no epoch ran"
        first = (f"warning: the model does no better than chance on the validation clips ({got}; guessing: "
                 f"top-1 {self.chance.top1:.3f}, loss {self.chance.loss:.4f}): its labels would be guesses")
        if self.saved_row is None:
            return (first + f"\nnot saved to {self.out}: try more clips or --epochs, another --lr (streamrec lr-find), "
                    "or pass --allow-chance to save it anyway")
        return first + f"\nsaved to {self.out} anyway (--allow-chance)"
