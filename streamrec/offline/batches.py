"""Batches of training and evaluation clips for a ``DataLoader``: :func:`collate` stacks them,
dropping unreadable clips, and :func:`taken` reads a batch in the main process, noting the
unreadable clips a worker process met (its own copy of the dataset is never seen)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from streamrec.offline.dataset import ClipDataset


def collate(batch: list[tuple[torch.Tensor, int]]):
    """Stack a batch, dropping unreadable clips (label ``-1 - sample``): ``(x, y, dropped samples)``,
    ``x`` and ``y`` ``None`` when none was readable. Read it with :func:`taken`."""
    kept = [(x, y) for x, y in batch if y >= 0]
    dropped = tuple(-1 - y for _, y in batch if y < 0)
    if not kept:
        return None, None, dropped
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]), dropped


def taken(batch, dataset: "ClipDataset"):
    """``(x, y)`` of a :func:`collate` batch, or ``None`` when none of its clips was readable; the
    unreadable ones are noted in ``dataset.unreadable`` (a loader's worker processes note them in
    their own copies, which the main process never sees)."""
    x, y, dropped = batch
    dataset.unreadable.update(dataset.samples[j].path for j in dropped)
    return None if x is None else (x, y)


def default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n <= 2 else min(8, n - 1)
