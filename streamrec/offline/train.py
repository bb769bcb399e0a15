"""Fine-tuning on your own clips: ``train``, ``lr-find``, ``evaluate`` and ``export``.

Transfer learning replaces the classification head with one for the user's classes.
AdamW with linear warm-up then cosine decay; AMP on CUDA; gradient clipping; early
stopping on validation loss; ``--resume``; ``--seed``. The checkpoint carries the model
name, class names, preprocessing and the training arguments, so ``serve`` and
``classify`` need no other flag.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamrec.offline.chance import Chance, Keeper
from streamrec.offline.resume import meta, resume_state, run_options
from streamrec.offline.batches import collate, default_workers, taken
from streamrec.offline.dataset import (Augment, ClipCache, ClipDataset, discover, too_few_classes,
                                       unreadable_class)
from streamrec.config import check_device
from streamrec.runtime.classifier import resolve_device
from streamrec.errors import StreamrecError
from streamrec.fsutil import atomic_torch_save, atomic_write_text
from streamrec.models.spec import LoadedModel
from streamrec.models.registry import build_model, load_model, make_checkpoint

logger = logging.getLogger(__name__)
LR_MAX = 10.0  # --lr: no optimizer step of a video model trains at more (lr-find sweeps up to 1)

# The default peak learning rates: a head on a pretrained backbone, and every layer (random
# weights, --finetune-all). 1e-3 for every layer of tiny3d leaves a small dataset at chance.
DEFAULT_LR = {"head": 1e-3, "all": 3e-3}


@dataclass(frozen=True)
class TrainConfig:
    data: str
    model: str = "r2plus1d_18"
    weights: str = "DEFAULT"
    epochs: int = 10
    batch_size: int = 8
    lr: float | None = None  # None: DEFAULT_LR, by what is trained (see peak_lr)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float = 1.0
    freeze_backbone: bool | None = None  # None: head only on pretrained weights, every layer on random ones
    val_split: float | None = None
    patience: int = 5
    flip: bool = True
    color_jitter: float = 0.0
    workers: int | None = None
    cache_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    out: str = "model.pt"
    resume: bool = False
    quiet: bool = False  # no progress bar (there is none when stderr is not a terminal)
    allow_chance: bool = False  # save a model that does no better than chance on the validation clips

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise StreamrecError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(self, name)}")
        if self.lr is not None and not 0 < self.lr <= LR_MAX:  # 1e39 overflows the optimizer's float32 mid-epoch
            raise StreamrecError(f"--lr: expected > 0 and at most {LR_MAX:g}, got {self.lr:g}")
        if self.patience < 1:
            raise StreamrecError(f"--patience: expected >= 1, got {self.patience}")
        if not 0 <= self.color_jitter < 1:
            raise StreamrecError(f"--color-jitter: expected 0 <= strength < 1, got {self.color_jitter}")
        if not 0 <= self.seed <= 2**32 - 1:
            raise StreamrecError(f"--seed: expected 0..{2**32 - 1}, got {self.seed}")
        if self.workers is not None and self.workers < 0:
            raise StreamrecError(f"--workers: expected >= 0, got {self.workers}")
        check_device(self.device)  # before a dataset is read or a model loaded
        if self.freeze_backbone and self.random_start:
            raise StreamrecError(
                f"--freeze-backbone: the backbone of {self.model} would keep random weights "
                f"({'--weights none' if self.weights.strip().lower() == 'none' else 'tiny3d has no pretrained ones'}), "
                "and a head on a frozen random backbone learns from noise; train every layer "
                "(--finetune-all, the default for random weights) or start from pretrained weights or a checkpoint")

    @property
    def random_start(self) -> bool:
        """True when training starts from random weights (``--weights none``, or tiny3d's DEFAULT)."""
        w = self.weights.strip()
        return w.lower() == "none" or (self.model == "tiny3d" and w.upper() == "DEFAULT")

    @property
    def head_only(self) -> bool:
        """Whether only the new head trains: ``--freeze-backbone``, the default on pretrained weights."""
        return not self.random_start if self.freeze_backbone is None else self.freeze_backbone

    @property
    def peak_lr(self) -> float:
        """``--lr``, or the default for what is trained (:data:`DEFAULT_LR`)."""
        return self.lr if self.lr is not None else DEFAULT_LR["head" if self.head_only else "all"]


def replace_head(module: nn.Module, num_classes: int) -> nn.Module:
    """Swap the final classifier of any supported model for a ``num_classes``-way one."""
    for attr in ("fc", "head"):
        old = getattr(module, attr, None)
        if isinstance(old, nn.Linear):
            setattr(module, attr, nn.Linear(old.in_features, num_classes))
            return module
        if isinstance(old, nn.Sequential) and isinstance(old[-1], nn.Linear):
            old[-1] = nn.Linear(old[-1].in_features, num_classes)
            return module
    cls = getattr(module, "classifier", None)  # s3d: Sequential(Dropout, Conv3d 1x1x1)
    if isinstance(cls, nn.Sequential) and isinstance(cls[-1], nn.Conv3d):
        cls[-1] = nn.Conv3d(cls[-1].in_channels, num_classes, kernel_size=1, stride=1, bias=True)
        return module
    raise StreamrecError(f"cannot find the classification head of {type(module).__name__}")


def head_parameters(module: nn.Module) -> list[nn.Parameter]:
    for attr in ("fc", "head", "classifier"):
        part = getattr(module, attr, None)
        if isinstance(part, nn.Module):
            return list(part.parameters())
    return list(module.parameters())


def base_model(cfg: TrainConfig, classes: list[str]) -> LoadedModel:
    """The model to fine-tune, with a fresh head for ``classes``. ``DEFAULT`` weights of
    tiny3d (which has no pretrained weights) mean random ones; a checkpoint is fine-tuned."""
    weights = "none" if cfg.random_start else cfg.weights
    if weights == "none":
        loaded = load_model(cfg.model, weights="none", warn_random=False)  # random until trained: no warning
        loaded.module = build_model(cfg.model, num_classes=len(classes))
    else:
        loaded = load_model(cfg.model, weights=weights)
        if loaded.prebuilt:
            raise StreamrecError(f"--weights {weights}: an exported model (TorchScript, ONNX) cannot be trained "
                                 "further; start from the checkpoint it was exported from")
        loaded.module = replace_head(loaded.module, len(classes))
    loaded.classes, loaded.meaningless = list(classes), False
    return loaded


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` then cosine decay to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum())


def training_classes(cfg: TrainConfig) -> list[str]:
    """The class names of ``cfg.data``: at least two, each with a clip that can be read, or there is
    nothing to learn."""
    split = discover(cfg.data, val_split=cfg.val_split)["train"]
    problem = too_few_classes(cfg.data, split.classes) or unreadable_class(cfg.data, split)
    if problem:
        raise StreamrecError(problem)
    return split.classes


def make_loaders(cfg: TrainConfig, loaded: LoadedModel):
    splits = discover(cfg.data, val_split=cfg.val_split)
    if not splits["valid"].samples:
        raise StreamrecError(f"dataset {cfg.data}: no validation clips; add DATA/valid/<class>/ or pass --val-split 0.2")
    cache = ClipCache(cfg.cache_dir or Path(cfg.data) / ".streamrec-cache", loaded.spec)
    aug = Augment(flip=cfg.flip, color=cfg.color_jitter)
    train_ds = ClipDataset(splits["train"].samples, loaded.spec, train=True, augment=aug, cache=cache, seed=cfg.seed)
    val_ds = ClipDataset(splits["valid"].samples, loaded.spec, train=False, cache=cache)
    workers = default_workers() if cfg.workers is None else cfg.workers
    g = torch.Generator().manual_seed(cfg.seed)
    kw = dict(batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
    return splits, train_ds, val_ds, torch.utils.data.DataLoader(train_ds, shuffle=True, generator=g, **kw), \
        torch.utils.data.DataLoader(val_ds, shuffle=False, **kw)


def top_k(num_classes: int) -> int:
    """The k of the top-k accuracy reported: 5, or the number of classes when fewer (top-5 of
    3 classes is always 1).

    Example:
        >>> top_k(400), top_k(3)
        (5, 3)
    """
    return min(5, num_classes)


def progress_bar(items, *, desc: str, quiet: bool = False):
    """``items`` with a tqdm bar on stderr (count, rate, elapsed and ETA), only when stderr is
    a terminal and not ``quiet``."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, file=sys.stderr, disable=quiet or not sys.stderr.isatty())


def run_epoch(model, loader, device, *, optimizer=None, scaler=None, schedule=None, clip_grad=1.0, bar_desc="",
              k: int = 5, quiet: bool = False):
    """One pass; trains when ``optimizer`` is given. Returns (loss, top1, top-``k``, n)."""
    train = optimizer is not None
    model.train(train)
    crit = nn.CrossEntropyLoss()
    tot_loss = top1 = topk = n = 0
    bar = progress_bar(loader, desc=bar_desc, quiet=quiet)
    for batch in bar:
        batch = taken(batch, loader.dataset)
        if batch is None:
            continue
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device)
        with torch.set_grad_enabled(train), torch.autocast(device.type, enabled=device.type == "cuda"):
            try:
                logits = model(x)
            except torch.OutOfMemoryError:
                raise StreamrecError("out of memory in a batch: lower --batch-size") from None
            loss = crit(logits.float(), y)
        if train:
            if schedule is not None:
                schedule()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        b = len(y)
        tot_loss += loss.item() * b
        top1 += topk_correct(logits, y, 1)
        topk += topk_correct(logits, y, k)
        n += b
        bar.set_postfix(loss=f"{tot_loss / n:.3f}")
    if n == 0:
        raise StreamrecError("no readable clips in this split")
    return tot_loss / n, top1 / n, topk / n, n


def make_optimizer(cfg: "TrainConfig", model: torch.nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW over the head only (:attr:`TrainConfig.head_only`) or over every layer."""
    if cfg.head_only:
        head = {id(p) for p in head_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.peak_lr if lr is None else lr, weight_decay=cfg.weight_decay)


def announce(cfg: TrainConfig) -> None:
    """One line on stderr saying what trains, and at which learning rate."""
    what = "the new head only (--freeze-backbone)" if cfg.head_only else "every layer"
    why = " (from random initial weights: a frozen random backbone would leave the head only noise)" \
        if cfg.random_start else ""
    lr = f"--lr {cfg.peak_lr:g}" + ("" if cfg.lr is not None else " (the default for this)")
    print(f"training {what}{why}, {lr}", file=sys.stderr)


def log_epoch(path: Path, row: dict[str, Any], header: str | None) -> None:
    """One epoch's ``row`` added to the log at ``path``; with ``header`` (a new run's first epoch)
    the log is replaced, whole, by the header and the row."""
    line = ",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n"
    if header is not None:
        atomic_write_text(path, header + line)
        return
    with path.open("a") as fh:
        fh.write(line)


def side_files(out: str | Path) -> tuple[Path, Path]:
    """The files training writes beside its model ``out``: the log (a row per epoch) and the
    state ``--resume`` continues from.

    >>> [p.name for p in side_files("runs/model.pt")]
    ['model.pt.log.csv', 'model.pt.state']
    """
    out = Path(out)
    return out.with_name(out.name + ".log.csv"), out.with_name(out.name + ".state")


def start_state(cfg: TrainConfig, state_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                saved_for: dict[str, Any]) -> dict[str, Any]:
    """The state a run starts from: ``<out>.state`` with ``--resume`` (the model and optimizer
    loaded from it), else epoch -1, step 0."""
    if not cfg.resume:
        return {"epoch": -1, "step": 0}
    st = resume_state(state_path, model, optimizer, saved_for)
    if st["epoch"] + 1 < cfg.epochs:
        logger.info("resuming at epoch %d of %d", st["epoch"] + 2, cfg.epochs)
    return st


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train and write ``cfg.out`` (lowest validation loss among the epochs that beat chance),
    ``<out>.state`` (for ``--resume``) and ``<out>.log.csv`` (a row per epoch); the result names
    them in ``files``, and ``beats_chance`` is False (with a ``warning``) when no epoch did."""
    seed_everything(cfg.seed)
    device, classes = resolve_device(cfg.device), training_classes(cfg)
    loaded = base_model(cfg, classes)
    splits, train_ds, val_ds, train_dl, val_dl = make_loaders(cfg, loaded)
    model = loaded.module.to(device)
    optimizer = make_optimizer(cfg, model)
    announce(cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    out = Path(cfg.out)
    log_path, state_path = side_files(out)
    saved_for = {**meta(cfg.model, classes, cfg.head_only), "val_split": cfg.val_split, "run": run_options(cfg)}
    st = start_state(cfg, state_path, model, optimizer, saved_for)  # --resume checks saved_for
    chance = Chance.of([s.label for s in val_ds.samples for _ in range(val_ds.clips_per_video)])
    keeper = Keeper(out, chance, allow_chance=cfg.allow_chance, state=st)
    steps_per_epoch = max(1, len(train_dl))
    total, warmup, step = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch), st["step"]
    k = top_k(len(classes))

    def schedule() -> None:
        nonlocal step
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, total, warmup, cfg.peak_lr)
        step += 1

    history = []
    # a new run's log replaces the last run's once its first epoch is done (an interrupted start keeps it)
    header = None if cfg.resume else f"epoch,train_loss,train_top1,train_top{k},val_loss,val_top1,val_top{k},lr\n"
    for epoch in range(st["epoch"] + 1, cfg.epochs):
        train_ds.epoch = epoch
        tl, t1, tk, _ = run_epoch(model, train_dl, device, optimizer=optimizer, scaler=scaler, schedule=schedule,
                                  clip_grad=cfg.clip_grad, bar_desc=f"epoch {epoch + 1}/{cfg.epochs}", k=k, quiet=cfg.quiet)
        with torch.no_grad():
            vl, v1, vk, _ = run_epoch(model, val_dl, device, bar_desc="valid", k=k, quiet=cfg.quiet)
        row = {"epoch": epoch + 1, "train_loss": tl, "train_top1": t1, f"train_top{k}": tk, "val_loss": vl,
               "val_top1": v1, f"val_top{k}": vk, "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        log_epoch(log_path, row, header)
        header = None
        print(f"epoch {epoch + 1:>3}: train loss {tl:.4f} top1 {t1:.3f} top{k} {tk:.3f} | "
              f"val loss {vl:.4f} top1 {v1:.3f} top{k} {vk:.3f}", file=sys.stderr)
        keeper.update(row, lambda: make_checkpoint(model, model=cfg.model, classes=classes, spec=loaded.spec,
                                                   train_args={**asdict(cfg), "data": os.path.abspath(cfg.data)},
                                                   metrics=row))  # the data's own path: evaluate runs elsewhere
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                           "step": step, **keeper.state(), **saved_for}, state_path)
        if keeper.stale >= cfg.patience:
            print(f"early stop: validation loss has not improved for {cfg.patience} epochs", file=sys.stderr)
            break
    skipped = len(train_ds.unreadable | val_ds.unreadable)
    if skipped:
        print(f"warning: {skipped} unreadable clips were skipped", file=sys.stderr)
    files = {"the checkpoint": str(out)} if keeper.saved_row is not None else {}
    files.update({"the training state, for --resume": str(state_path), "the log, a row per epoch": str(log_path)})
    return {"history": history, "best_val_loss": keeper.best, "out": str(out), "unreadable": skipped, "files": files,
            "checkpoint_metrics": keeper.saved_row, "chance": asdict(chance), "beats_chance": keeper.beats_chance,
            "warning": keeper.warning()}
