"""``streamrec lr-find``: the learning-rate range test, and a rate to train with.

The rate rises exponentially from ``start`` to ``end`` over ``steps`` optimizer steps on the
training clips (the layers ``train`` would train, with its weight decay) while the smoothed loss
is recorded; the test stops once the loss has blown up. The suggestion is the steepest descent
of the loss before its minimum, but at most a third of the rate at the minimum (the minimum is
already on the edge of divergence), kept within :data:`SUGGESTION_RANGE`.
"""

from __future__ import annotations

import logging

import numpy as np
from torch import nn

from streamrec.errors import StreamrecError
from streamrec.fsutil import save_figure
from streamrec.offline.batches import taken
from streamrec.offline.train import TrainConfig, base_model, make_loaders, make_optimizer, seed_everything, training_classes
from streamrec.runtime.classifier import resolve_device
from streamrec.validate import LR_FIND_STEPS, LR_FIND_STEPS_RANGE
from streamrec.offline.plotting import pyplot

logger = logging.getLogger(__name__)

SUGGESTION_RANGE = (1e-5, 5e-3)  # from 1e-2, AdamW sends tiny3d's validation loss far above ln(classes)
MIN_SHARE = 1 / 3  # the suggestion is at most this share of the rate at the loss's minimum


def suggest(lrs, losses) -> float:
    """The rate to train with, from the smoothed loss curve of a range test.

    Example:
        >>> lrs = np.logspace(-6, 0, 13)
        >>> losses = [1.1, 1.1, 1.1, 1.09, 1.05, 0.95, 0.8, 0.6, 0.5, 0.45, 1.5, 4.0, 9.0]
        >>> f"{suggest(lrs, losses):.1e}"  # the steepest descent: below a third of the minimum's (3.2e-2)
        '1.0e-03'
        >>> f"{suggest([1e-5, 1e-4, 1e-3, 1e-2], [1.0, 0.98, 0.5, 3.0]):.1e}"  # a third of the minimum's
        '3.3e-04'
        >>> f"{suggest([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.98, 0.5, 3.0]):.1e}"  # never above 5e-3
        '5.0e-03'
    """
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    lo = int(np.argmin(losses))
    if lo == 0 or len(lrs) < 3:
        return float(np.clip(lrs[lo] * MIN_SHARE, *SUGGESTION_RANGE))
    grads = np.gradient(losses[: lo + 1], np.log(lrs[: lo + 1]))
    steepest = float(lrs[int(np.argmin(grads))])
    return float(np.clip(min(steepest, lrs[lo] * MIN_SHARE), *SUGGESTION_RANGE))


def range_test(cfg: TrainConfig, *, start: float, end: float, steps: int) -> tuple[list[float], list[float]]:
    """The rates tried and the smoothed loss after each step."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    loaded = base_model(cfg, training_classes(cfg))
    _, _, _, train_dl, _ = make_loaders(cfg, loaded)
    model = loaded.module.to(device).train()
    opt = make_optimizer(cfg, model, lr=start)  # the layers train would train
    crit = nn.CrossEntropyLoss()
    lrs, losses, avg = [], [], None
    mult = (end / start) ** (1 / max(1, steps - 1))
    lr = start
    it = iter(train_dl)
    for i in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train_dl)
            batch = next(it)
        batch = taken(batch, train_dl.dataset)
        if batch is None:
            continue
        for g in opt.param_groups:
            g["lr"] = lr
        loss = crit(model(batch[0].to(device)), batch[1].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.item()
        avg = value if avg is None else 0.8 * avg + 0.2 * value
        lrs.append(lr)
        losses.append(avg)
        if i > 5 and (avg > 4 * min(losses) or not np.isfinite(avg)):
            break
        lr *= mult
    return lrs, losses


def lr_find(cfg: TrainConfig, *, start: float = 1e-6, end: float = 1.0, steps: int = LR_FIND_STEPS,
            plot: str | None = None) -> float:
    """The range test on ``cfg``'s data and model over ``steps`` optimizer steps (fewer: quicker,
    a coarser curve); the suggested peak ``--lr`` (see :func:`suggest`)."""
    least, most = LR_FIND_STEPS_RANGE
    if isinstance(steps, bool) or not isinstance(steps, int) or not least <= steps <= most:
        raise StreamrecError(f"--steps: expected a whole number from {least} to {most}, got {steps!r}")
    lrs, losses = range_test(cfg, start=start, end=end, steps=steps)
    if not losses:  # every batch was skipped: no clip of the training split could be read
        raise StreamrecError(f"lr-find: no training batch could be read from {cfg.data} (every clip unreadable); "
                             "streamrec dataset DATA lists them")
    suggestion = suggest(lrs, losses)
    logger.info("range test: %d of %d steps, rates %.1e to %.1e%s", len(lrs), steps, lrs[0], lrs[-1],
                " (stopped: the loss blew up)" if len(lrs) < steps else "")
    if plot:
        plot_range_test(lrs, losses, suggestion, plot)
    return suggestion


def plot_range_test(lrs: list[float], losses: list[float], suggestion: float, path: str) -> None:
    plt = pyplot("lr-find --plot")

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(lrs, losses)
        ax.axvline(suggestion, color="r", ls="--", label=f"suggested {suggestion:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, path, dpi=90)
    finally:
        plt.close(fig)
