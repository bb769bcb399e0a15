"""``streamrec evaluate`` (top-1/5, per-class precision and recall, confusion matrix) and
``streamrec export`` (TorchScript or ONNX files that carry their class names)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.models.exported import EXPORT_META, torchscript_quiet
from streamrec.runtime.onnx import example_input, export_onnx
from streamrec.offline.batches import collate, default_workers, taken
from streamrec.offline.dataset import ClipCache, ClipDataset, Sample, class_dirs, discover
from streamrec.runtime.classifier import Classifier
from streamrec.errors import StreamrecError, install_hint
from streamrec.fsutil import atomic_write, save_figure
from streamrec.models.registry import load_model
from streamrec.offline.plotting import pyplot

logger = logging.getLogger(__name__)



def clips_to_evaluate(folder: str | Path, val_split: float | None) -> dict[str, list[Path]]:
    """The clips of each class: every clip of ``folder/<class>/*``, or with ``val_split`` only
    those that ``train --val-split`` held out of the same folder for validation."""
    if val_split is None:
        return class_dirs(Path(folder))
    valid = discover(folder, val_split=val_split)["valid"]
    out: dict[str, list[Path]] = {c: [] for c in valid.classes}
    for s in valid.samples:
        out[valid.classes[s.label]].append(s.path)
    return out


def training_clips_among(loaded, paths: list[Path]) -> int:
    """How many of ``paths`` the checkpoint was trained on (its ``train_args`` name the data
    folder and split); 0 when that cannot be told (an exported file, a folder since moved)."""
    args = loaded.extra.get("train_args") or {}
    if not args.get("data"):
        return 0
    try:
        trained = discover(args["data"], val_split=args.get("val_split"))["train"].samples
    except StreamrecError:
        return 0
    seen = {s.path.resolve() for s in trained}
    return sum(p.resolve() in seen for p in paths)


def evaluate(folder: str | Path, *, weights: str, model: str | None = None, device: str = "auto",
             batch_size: int = 8, confusion: str | None = None, clips_per_video: int = 2,
             val_split: float | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on ``folder/<class>/*`` (class names must be the checkpoint's), or
    with ``val_split`` on the clips ``train --val-split`` held out of ``folder`` (``"paths"``
    lists the clips evaluated, ``"training_clips"`` counts those the model was trained on): top-1 and top-k with k = min(5, classes) (``"top_k"`` says
    which, ``"top{k}"`` holds it), per-class precision and recall, and the confusion matrix,
    also written to ``confusion`` (a ``.csv`` of the counts, else an image)."""
    if batch_size < 1:
        raise StreamrecError(f"--batch-size: expected >= 1, got {batch_size}")
    dirs = clips_to_evaluate(folder, val_split)  # before the model loads: a bad folder fails at once
    loaded = load_model(model, weights=weights)
    unknown = sorted(set(dirs) - set(loaded.classes))
    if unknown:
        known = loaded.classes if len(loaded.classes) <= 12 else loaded.classes[:10] + ["..."]
        raise StreamrecError(f"evaluate: classes {unknown} are not among the model's {len(loaded.classes)} classes "
                             f"({', '.join(known)})")
    index = {c: i for i, c in enumerate(loaded.classes)}
    samples = [Sample(f, index[c]) for c, fs in dirs.items() for f in fs]
    ds = ClipDataset(samples, loaded.spec, train=False, cache=ClipCache(None, loaded.spec), clips_per_video=clips_per_video)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=default_workers(), collate_fn=collate)
    clf = Classifier(loaded, device=device, backend="torch", warmup=0)
    k = len(loaded.classes)
    matrix = np.zeros((k, k), np.int64)
    topk, kk = 0, min(5, k)
    n = 0
    for batch in dl:
        batch = taken(batch, ds)
        if batch is None:
            continue
        logits = clf.logits(batch[0])
        y = batch[1]
        pred = logits.argmax(1)
        for t, p in zip(y.tolist(), pred.tolist()):
            matrix[t, p] += 1
        topk += int((logits.topk(kk, 1).indices == y[:, None]).any(1).sum())
        n += len(y)
    if n == 0:
        raise StreamrecError(f"evaluate: no readable clips in {folder}")
    result = {
        "clips": len(samples), "windows": n, "top1": float(np.diag(matrix).sum() / n), "top_k": kk,
        f"top{kk}": float(topk / n), "per_class": class_metrics(matrix, loaded.classes),
        "confusion": matrix.tolist(), "classes": loaded.classes, "unreadable": len(ds.unreadable),
        "paths": [str(s.path) for s in samples],
        "training_clips": training_clips_among(loaded, [s.path for s in samples]),
    }
    if confusion:
        write_confusion(matrix, loaded.classes, confusion)
    return result


def class_metrics(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Precision, recall and support per class from a confusion matrix (a row per true class, a
    column per prediction). A rate with nothing to count is ``None``, not 0: precision of a class
    never predicted, recall of a class with no clip.

    Example:
        >>> class_metrics(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), ["a", "b", "c"])["b"]
        {'precision': 0.6666666666666666, 'recall': 1.0, 'support': 2}
        >>> class_metrics(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), ["a", "b", "c"])["c"]
        {'precision': None, 'recall': None, 'support': 0}
    """
    tp, predicted, support = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    return {c: {"precision": float(tp[i] / predicted[i]) if predicted[i] else None,
                "recall": float(tp[i] / support[i]) if support[i] else None, "support": int(support[i])}
            for i, c in enumerate(classes)}


def write_confusion(confusion: np.ndarray, classes: list[str], path: str | Path) -> None:
    """The matrix as a CSV of counts (``path`` ends in ``.csv``: a row per true class, a column
    per predicted one) or as an image."""
    if Path(path).suffix.lower() != ".csv":
        plot_confusion(confusion, classes, str(path))
        return

    def write(fh) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["true \\ predicted", *classes])
        w.writerows([c, *map(int, row)] for c, row in zip(classes, confusion))

    atomic_write(path, write, mode="w")


def text_colors(confusion: np.ndarray) -> np.ndarray:
    """White numbers on the dark cells (over half the largest count), black on the light ones.

    Example:
        >>> text_colors(np.array([[9, 1], [4, 5]])).tolist()
        [['white', 'black'], ['black', 'white']]
    """
    dark = confusion > confusion.max() / 2 if confusion.size and confusion.max() > 0 else np.zeros(confusion.shape, bool)
    return np.where(dark, "white", "black")


PLOT_NUMBERS_MAX = 40  # classes drawn with a number in each cell; more are drawn as colours only
PLOT_INCHES_MAX = 24.0


def plotted(confusion: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """The rows and columns of the classes the clips hold or the model answered (a Kinetics model
    on a dataset of three classes: a few of its 400), each class once on both axes.

    Example:
        >>> plotted(np.array([[2, 0, 1], [0, 0, 0], [0, 0, 3]]), ["a", "b", "c"])[1]
        ['a', 'c']
    """
    keep = np.flatnonzero((confusion.sum(axis=0) > 0) | (confusion.sum(axis=1) > 0))
    if keep.size == 0:
        return confusion, classes
    return confusion[np.ix_(keep, keep)], [classes[i] for i in keep]


def plot_confusion(confusion: np.ndarray, classes: list[str], path: str) -> None:
    plt = pyplot("evaluate --plot")

    confusion, classes = plotted(confusion, classes)
    size = min(max(4, 0.5 * len(classes) + 2), PLOT_INCHES_MAX)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(confusion, cmap="Blues", vmin=0)
        colors = text_colors(confusion)
        font = 8 if len(classes) <= PLOT_NUMBERS_MAX else max(2, 8 * PLOT_NUMBERS_MAX // len(classes))
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=font)
        ax.set_yticks(range(len(classes)), classes, fontsize=font)
        for (i, j), v in np.ndenumerate(confusion) if len(classes) <= PLOT_NUMBERS_MAX else ():
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=colors[i, j])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        save_figure(fig, path, dpi=90)
    finally:
        plt.close(fig)


def export(weights: str, out: str, *, fmt: str) -> Path:
    """Write a TorchScript or ONNX file with the class names and preprocessing inside."""
    loaded = load_model(None, weights=weights)
    if loaded.prebuilt and not isinstance(loaded.module, torch.jit.ScriptModule):  # an ONNX Runtime session: traced,
        # it would keep one answer as a constant (a TorchScript file exports again as it is)
        raise StreamrecError(f"--weights {weights}: an ONNX model; export the checkpoint (or TorchScript file) it was exported from")
    meta = json.dumps({"model": loaded.name, "classes": loaded.classes, "preprocess": loaded.spec.to_dict()})
    example = example_input(loaded)
    module = loaded.module.eval()
    path = Path(out)
    # both formats are built in memory and written with atomic_write: a failed write (disk
    # full) leaves no half file, and torch.jit.save's own file writer aborts the process on one
    buf = io.BytesIO()
    if fmt == "torchscript":
        with torch.no_grad(), torchscript_quiet():
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, buf, _extra_files={EXPORT_META: meta})
        data = buf.getbuffer()
    elif fmt == "onnx":
        try:
            import onnx
        except ImportError:
            raise StreamrecError("--format onnx: the onnx package is not installed; " + install_hint("onnx")) from None
        export_onnx(loaded, buf)
        proto = onnx.load_from_string(buf.getvalue())
        entry = proto.metadata_props.add()
        entry.key, entry.value = EXPORT_META, meta
        data = proto.SerializeToString()
    else:
        raise StreamrecError(f"--format: expected torchscript or onnx, got {fmt!r}")
    atomic_write(path, lambda fh: fh.write(data))
    return path


