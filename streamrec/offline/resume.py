"""``streamrec train --resume``: the training state ``<out>.state``, read back and checked.

The state names what it was saved for (``arch``, ``classes``, ``head_only``): a state of another
``--model``, of other classes or of ``--freeze-backbone`` against every layer is one line naming
the file, what it holds and what was asked, as is a file that is not a training state at all
(corrupt, truncated, something else saved there).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from streamrec.errors import StreamrecError
from streamrec.redact import printable

logger = logging.getLogger(__name__)
KEYS = ("model", "optimizer", "epoch", "step")


def meta(arch: str | None, classes: list[str], head_only: bool) -> dict[str, Any]:
    """What a state is saved for, kept in it beside the weights."""
    return {"arch": arch, "classes": list(classes), "head_only": bool(head_only)}


def describe(m: dict[str, Any]) -> str:
    """``model tiny3d (every layer) with 3 classes (a, b, c)``.

    Example:
        >>> describe(meta("tiny3d", ["left", "right"], False))
        'model tiny3d (every layer) with 2 classes (left, right)'
    """
    classes = [printable(str(c))[:40] for c in m["classes"]]
    names = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    what = "the head only" if m["head_only"] else "every layer"
    return f"model {printable(str(m['arch']))} ({what}) with {len(classes)} classes ({names})"


def _first_line(exc: BaseException) -> str:
    return printable((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]


def read_state(state_path: Path) -> dict[str, Any]:
    """The saved state, or a one-line :class:`StreamrecError` when there is none or it is no training state."""
    where = printable(str(state_path))
    if not state_path.is_file():
        raise StreamrecError(f"--resume: no training state at {where}")
    try:
        st = torch.load(state_path, map_location="cpu", weights_only=True)  # tensors and plain values: no code runs
    except OSError as exc:
        raise StreamrecError(f"--resume: cannot read {where}: {exc.strerror or _first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated file fails in many ways (zip, pickle, EOF)
        raise StreamrecError(f"--resume: {where} is not a readable training state (corrupt or truncated: "
                             f"{_first_line(exc)}); train afresh without --resume") from None
    ok = isinstance(st, dict) and all(k in st for k in KEYS) and all(
        isinstance(st[k], int) and not isinstance(st[k], bool) and st[k] >= -1 for k in ("epoch", "step"))
    if not ok:
        got = f"a dict with keys {', '.join(map(str, list(st)[:8]))}" if isinstance(st, dict) else type(st).__name__
        raise StreamrecError(f"--resume: {where} is not a training state (expected {', '.join(KEYS)} with whole-number "
                             f"epoch and step; got {printable(got)[:200]}); train afresh without --resume")
    problem = value_problem(st)
    if problem is not None:
        raise StreamrecError(f"--resume: {where} is not a training state ({problem}); train afresh without --resume")
    return st


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


ROW_KEYS = ("epoch", "val_loss", "val_top1")  # of an epoch's row, as the early stopping keeps it


def value_problem(st: dict[str, Any]) -> str | None:
    """What is wrong with the values of a state beside the weights (early stopping, what it was
    saved for), as ``expected ..., got ...``; ``None`` when they are what training writes."""
    checks = {"best": _number, "saved": _number, "stale": lambda v: _number(v) and math.isfinite(v) and v >= 0 and v == int(v),
              "val_split": lambda v: v is None or (_number(v) and 0 < v < 1),
              "arch": lambda v: v is None or isinstance(v, str), "head_only": lambda v: isinstance(v, bool),
              "classes": lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v)),
              "model": lambda v: isinstance(v, dict), "optimizer": lambda v: isinstance(v, dict),
              "run": lambda v: isinstance(v, dict)}
    row = lambda v: v is None or (isinstance(v, dict) and all(_number(v.get(k)) for k in ROW_KEYS))  # noqa: E731
    checks.update(saved_row=row, best_row=row)
    for key, fits in checks.items():
        if key in st and not fits(st[key]):
            return f"expected {key} as training writes it, got {printable(repr(st[key]))[:60]}"
    return None


RUN_OPTIONS = ("model", "weights", "batch_size", "lr", "weight_decay", "warmup_epochs", "freeze_backbone", "flip",
               "color_jitter", "seed")  # what shapes a run (its steps, its schedule): the same when it goes on


def run_options(cfg: Any) -> dict[str, Any]:
    """The :data:`RUN_OPTIONS` of a :class:`~streamrec.offline.train.TrainConfig`, kept in its state."""
    return {k: getattr(cfg, k) for k in RUN_OPTIONS}


def run_of(state_path: Path, asked: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``--resume`` before any model is loaded: the options of the run ``<out>.state`` goes on
    with. Each of ``asked`` (:func:`run_options` of the command) left at its default (``defaults``)
    is the saved run's; one given with another value than the run's is one line naming the
    options that differ (only ``--epochs`` may change). A state saved without its options gives
    ``asked`` as it is. The state must be there and readable."""
    saved = read_state(state_path).get("run") or {}
    run = {k: saved[k] if k in saved and asked.get(k) == defaults.get(k) else asked.get(k) for k in asked}
    shown = lambda k, v: f"--{k.replace('_', '-')} {'(default)' if v is None else v}"  # noqa: E731
    differ = [k for k in RUN_OPTIONS if k in saved and saved[k] != run.get(k)]
    if differ:
        raise StreamrecError(f"--resume: {printable(str(state_path))} goes on with a run of "
                             f"{', '.join(shown(k, saved[k]) for k in differ)}, but this run asks for "
                             f"{', '.join(shown(k, asked.get(k)) for k in differ)}; resume with the run's options (only "
                             "--epochs may change), or train afresh without --resume")
    taken = [k for k in RUN_OPTIONS if run.get(k) != asked.get(k)]
    if taken:
        logger.info("--resume: going on with the run's %s", ", ".join(shown(k, run[k]) for k in taken))
    return run


def resume_state(state_path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 asked: dict[str, Any]) -> dict[str, Any]:
    """``--resume``: the model and optimizer as saved after the last epoch; the rest of the
    state (``epoch``, ``step`` and the early stopping's). ``asked``: :func:`meta` of this run."""
    st = read_state(state_path)
    where = printable(str(state_path))
    saved = {k: st.get(k) for k in ("arch", "classes", "head_only")}
    mismatch = (f"--resume: {where} holds the training state of {{holds}}, but this run asked for {describe(asked)}; "
                "resume with the same --model, classes and --freeze-backbone, or train afresh without --resume")
    if st.get("classes") is not None and saved != {k: asked.get(k) for k in saved}:
        raise StreamrecError(mismatch.format(holds=describe(saved)))
    if "val_split" in st and st["val_split"] != asked.get("val_split"):  # its validation clips would be others
        split = lambda v: "no --val-split" if v is None else f"--val-split {v:g}"  # noqa: E731
        raise StreamrecError(f"--resume: {where} was trained with {split(st['val_split'])}, but this run asks for "
                             f"{split(asked.get('val_split'))}: clips it trained on would be validated on; resume "
                             "with the same --val-split, or train afresh without --resume")
    try:
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise StreamrecError(mismatch.format(holds=f"another model ({_first_line(exc)})")) from None
    return st
