"""What a labelled clip folder holds: a catalog per split and class (``dataset``), and a contact
sheet of the first and last frame of some clips per class (``dataset --sheet``)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.errors import SourceError, StreamrecError
from streamrec.fsutil import atomic_write, save_figure
from streamrec.live.sources import PyAVSource, SourceSpec
from streamrec.offline.dataset import Split, probe, shown
from streamrec.offline.plotting import pyplot

logger = logging.getLogger(__name__)

CATALOG_FIELDS = ("split", "class", "clips", "frames", "duration_s", "fps_min", "fps_max", "resolutions", "unreadable")


def catalog(splits: dict[str, Split]) -> list[dict[str, Any]]:
    """One row per split and class (probing headers only; nothing is decoded)."""
    rows = []
    for split in splits.values():
        for ci, cls in enumerate(split.classes):
            files = [s.path for s in split.samples if s.label == ci]
            if not files:
                continue
            frames, dur, fps, res, bad = 0, 0.0, [], set(), 0
            for f in files:
                info = probe(f)
                if info is None:
                    logger.warning("unreadable clip %s (no video stream this machine can decode): train and evaluate "
                                   "skip it", f)
                    bad += 1
                    continue
                frames += info.frames
                dur += info.duration_s
                fps.append(info.fps)
                res.add(f"{info.width}x{info.height}")
            rows.append({
                "split": split.name, "class": cls, "clips": len(files), "frames": frames, "duration_s": round(dur, 2),
                "fps_min": round(min(fps), 2) if fps else None, "fps_max": round(max(fps), 2) if fps else None,
                "resolutions": " ".join(sorted(res)), "unreadable": bad,
            })
    return rows


def write_catalog_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    def write(fh) -> None:
        w = csv.DictWriter(fh, fieldnames=CATALOG_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write, mode="w")


def first_last_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    first = last = None
    with PyAVSource(SourceSpec.parse(str(path))) as src:
        for rgb, _ in src.frames():
            if first is None:
                first = rgb
            last = rgb
    if first is None:
        raise SourceError(f"{path}: no decodable video frames")
    return first, last


def contact_sheet(split: Split, path: str | os.PathLike, *, per_class: int = 2) -> int:
    """A PNG of the first and last frame of up to ``per_class`` clips per class ; returns how many clips it shows."""
    plt = pyplot("--sheet")

    picks = []
    for ci, cls in enumerate(split.classes):
        for s in [s for s in split.samples if s.label == ci][:per_class]:
            try:
                picks.append((cls, s.path, *first_last_frames(s.path)))
            except (SourceError, OSError):
                logger.warning("contact sheet: skipping unreadable %s", s.path)
    if not picks:
        raise StreamrecError("--sheet: no readable clips to show")
    fig, axes = plt.subplots(len(picks), 2, figsize=(6, 2.2 * len(picks)), squeeze=False)
    try:
        for row, (cls, p, first, last) in zip(axes, picks):
            for ax, img, title in ((row[0], first, "start"), (row[1], last, "end")):
                ax.imshow(img)
                ax.set_axis_off()
                ax.set_title(f"{cls} / {shown(p.name)} ({title})", fontsize=7)
        fig.tight_layout()
        save_figure(fig, path, dpi=80)
    finally:
        plt.close(fig)
    return len(picks)
