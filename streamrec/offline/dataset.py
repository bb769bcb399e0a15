"""Labelled clip folders: their layout, and the training clip dataset (catalog and contact sheet:
:mod:`streamrec.offline.inventory`).

Layout (the Kinetics/torchvision convention)::

    DATA/train/<class>/*.mp4
    DATA/valid/<class>/*.mp4      # or one folder DATA/<class>/*.mp4 with --val-split 0.2

Clips are decoded with PyAV, resized once (the model's resize, before the crop, so that
training can crop randomly), and cached on disk keyed by the file's content and the
preprocessing settings. Windows are sampled with the live path's
:func:`~streamrec.live.ring.sample_indices`: random temporal jitter for training, evenly spaced
for validation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamrec.errors import SourceError, StreamrecError
from streamrec.fsutil import atomic_write
from streamrec.redact import shown
from streamrec.models.spec import ModelSpec, class_names_problem
from streamrec.models.preprocess import FramePreprocessor
from streamrec.live.ring import sample_indices
from streamrec.live.sources import PyAVSource, SourceSpec, open_container

logger = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}


def video_files(paths: Sequence[str | os.PathLike], *, option: str = "--clips") -> list[Path]:
    """The video files among ``paths``, folders searched recursively (sorted, hidden ones skipped);
    a one-line error naming ``option`` for a missing path or when there are none."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise StreamrecError(f"{option}: no such file or folder: {p}")
    if not out:
        raise StreamrecError(f"{option}: expected video files or folders holding them, found none in {', '.join(map(str, paths))}")
    return out


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int


def probe(path: str | os.PathLike) -> VideoInfo | None:
    """A video file's first video stream, from its headers (nothing is decoded); None when the
    file cannot be opened or holds no video. A length the headers do not give reads 0."""
    import av

    try:
        with open_container(str(path)) as c:
            v = c.streams.video[0]
            rate = float(v.average_rate or v.guessed_rate or 0)
            d = float(v.duration * v.time_base) if v.duration else (c.duration or 0) / 1e6
            return VideoInfo(duration_s=d, fps=rate, frames=v.frames or int(round(d * rate)),
                             width=v.codec_context.width, height=v.codec_context.height)
    except (av.error.FFmpegError, IndexError, OSError, UnicodeError):
        return None


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Split:
    name: str
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)


def class_dirs(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise StreamrecError(f"dataset: expected a folder of class folders, got {folder} (not a folder)")
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # hidden files (macOS's ._clip.mp4) are no clips; clips in sub-folders are not read: said once
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTS and not f.name.startswith("."))
        nested = sorted(sub.name for sub in d.iterdir() if sub.is_dir() and not sub.name.startswith("."))
        if not files and nested and d.name in ("train", "valid"):  # DATA given where DATA/valid was meant
            raise StreamrecError(f"dataset: {folder} holds the split folder {d.name}/, not class folders; expected "
                                 f"a folder of class folders ({folder / 'valid'}, say)")
        if nested:
            logger.warning("dataset: class folder %s has sub-folders (%s): clips in them are not read (a class's "
                           "clips lie in its folder itself)", shown(str(d)), shown(", ".join(nested[:3])))
        if not files:
            raise StreamrecError(f"dataset: class folder {d} is empty (no {', '.join(sorted(VIDEO_EXTS))} files)")
        name = shown(d.name)  # class names are printed, written to CSV and saved with the model
        if name in out:  # two folders whose names are no text alike (bytes that are no UTF-8): one class
            raise StreamrecError(f"dataset: class folders of {folder}: two folders read as the class {name!r} "
                                 "(their names are not UTF-8 text); expected distinct names (rename the folder)")
        out[name] = files
    if not out:
        raise StreamrecError(f"dataset: no class folders in {folder}")
    problem = class_names_problem(list(out))  # checked now: a model trained on them could not be loaded
    if problem is not None:
        raise StreamrecError(f"dataset: class folders of {folder}: {problem} (rename the folder)")
    return out


def too_few_classes(root: str | os.PathLike, classes: Sequence[str]) -> str | None:
    """Why a dataset with these training classes cannot be trained on (fewer than two), or None.

    Example:
        >>> too_few_classes("data", ["squat"])
        "dataset data: expected at least 2 class folders to tell apart, got ['squat']"
    """
    if len(classes) < 2:
        return f"dataset {root}: expected at least 2 class folders to tell apart, got {list(classes)}"
    return None


def unreadable_class(root: str | os.PathLike, split: Split) -> str | None:
    """Why ``split`` cannot be trained on: a class none of whose clips can be read (by their
    headers, :func:`probe`; a model would learn a class it never saw), or None."""
    for label, cls in enumerate(split.classes):
        files = [s.path for s in split.samples if s.label == label]
        if files and all(probe(f) is None for f in files):  # stops at the first readable clip
            return (f"dataset {root}: class {cls!r} of {split.name} has no clip this machine can read "
                    f"({len(files)} unreadable, e.g. {shown(str(files[0]))}); streamrec dataset {root} lists them")
    return None


VAL_SPLIT_MIN = 0.001  # a class of 500 clips holds one out; below it, one side of the split is all but empty


def splits(clips: int, val_split: float) -> bool:
    """Whether ``clips`` clips of a class split: ``round(clips * val_split)`` of them held out, one
    at least, and one at least left to train on."""
    return 1 <= round(clips * val_split) < clips


def clips_to_split(val_split: float) -> int:
    """The fewest clips of a class that ``--val-split`` leaves at least one of on each side: it
    holds out ``round(clips * val_split)`` of them.

    Example:
        >>> [clips_to_split(v) for v in (0.1, 0.2, 0.5, 0.9)]
        [6, 3, 2, 5]
    """
    least = max(2, int(0.5 / min(val_split, 1 - val_split)))
    for n in range(least, least + 4):
        if splits(n, val_split):
            return n
    return int(np.ceil(1 / min(val_split, 1 - val_split)))  # rates so small that floats cannot tell n from n + 1


def held_out(files: Sequence[Path], n: int) -> list[Path]:
    """The ``n`` clips of a class that ``--val-split`` holds out for validation: chosen by a hash
    of their file names, so ``dataset``, ``train`` (whatever its ``--seed``) and ``evaluate`` hold
    out the same ones, and adding a clip moves at most one other.

    Example:
        >>> held_out([Path("a.mp4"), Path("b.mp4"), Path("c.mp4"), Path("d.mp4")], 1)
        [PosixPath('a.mp4')]
    """
    return sorted(sorted(files, key=lambda f: hashlib.sha1(os.fsencode(f.name)).hexdigest())[:n])


def discover(root: str | os.PathLike, *, val_split: float | None = None) -> dict[str, Split]:
    """The ``train`` and ``valid`` splits of ``root`` (``valid`` may be empty; with
    ``val_split``, the clips :func:`held_out` of each class)."""
    root = Path(root)
    if not root.exists():
        raise StreamrecError(f"dataset: folder not found: {root}")
    if val_split is not None and not VAL_SPLIT_MIN <= val_split <= 1 - VAL_SPLIT_MIN:
        raise StreamrecError(f"--val-split: expected a share of the clips from {VAL_SPLIT_MIN} to {1 - VAL_SPLIT_MIN}, "
                             f"got {val_split}")
    if (root / "train").is_dir() and (root / "valid").is_dir():
        if val_split is not None:
            raise StreamrecError(f"--val-split: {root} is split already (train/ and valid/); leave --val-split out")
        train, valid = class_dirs(root / "train"), class_dirs(root / "valid")
        if valid and set(valid) != set(train):
            only_t, only_v = sorted(set(train) - set(valid)), sorted(set(valid) - set(train))
            raise StreamrecError(f"dataset: train and valid classes differ: only in train {only_t}, only in valid {only_v}")
    else:  # one folder of classes (DATA/<class>/ or DATA/train/<class>/), split by --val-split
        everything = class_dirs(root / "train" if (root / "train").is_dir() else root)
        if val_split is None:
            train, valid = everything, {}
        else:
            train, valid = {}, {}
            for cls, files in everything.items():
                if not splits(len(files), val_split):
                    raise StreamrecError(
                        f"--val-split {val_split}: class {cls!r} has {len(files)} clip{'s' * (len(files) != 1)}, too few to split "
                        f"(needs at least {clips_to_split(val_split)})"
                    )
                valid[cls] = held_out(files, round(len(files) * val_split))
                train[cls] = [f for f in files if f not in valid[cls]]
    classes = sorted(train)
    index = {c: i for i, c in enumerate(classes)}
    return {
        "train": Split("train", classes, [Sample(f, index[c]) for c, fs in train.items() for f in fs]),
        "valid": Split("valid", classes, [Sample(f, index[c]) for c, fs in valid.items() for f in fs]),
    }


# -- decoding and cache -------------------------------------------------------------

@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 (N, H, W, 3), resized (not cropped)
    times: np.ndarray  # float (N,), seconds, ascending


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_resized(path: Path, spec: ModelSpec) -> DecodedClip:
    """Every frame of ``path``, resized as the model's preset resizes (one resize per frame)."""
    pre = FramePreprocessor(spec)
    frames, times = [], []
    with PyAVSource(SourceSpec.parse(str(path))) as src:
        for rgb, pts in src.frames():
            frames.append(pre.resize(rgb))
            times.append(float(pts or 0.0))
    if not frames:
        raise SourceError(f"{path}: no decodable video frames")
    order = np.argsort(times, kind="stable")
    return DecodedClip(np.stack(frames)[order], np.asarray(times)[order])


class ClipCache:
    """Decoded, resized clips on disk, keyed by file content + preprocessing settings."""

    def __init__(self, folder: str | os.PathLike | None, spec: ModelSpec) -> None:
        self.folder = Path(folder) if folder else None
        self.spec = spec
        self._key = hashlib.sha1(repr((spec.resize, "bilinear-noaa-v1")).encode()).hexdigest()[:12]
        self._digests: dict[Path, str] = {}

    def load(self, path: Path) -> DecodedClip:
        if self.folder is None:
            return decode_resized(path, self.spec)
        digest = self._digests.get(path) or self._digests.setdefault(path, file_digest(path))
        file = self.folder / self._key / f"{digest}.npz"
        if file.is_file():
            try:
                with np.load(file) as z:
                    return DecodedClip(z["frames"], z["times"])
            except (OSError, ValueError, KeyError):
                logger.warning("cache entry %s unreadable; decoding again", file)
        clip = decode_resized(path, self.spec)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, lambda fh: np.savez(fh, frames=clip.frames, times=clip.times))  # workers never see half a file
        except OSError as exc:  # a full disk, a read-only folder: the clip itself is fine, the cache goes
            logger.warning("cannot write the clip cache in %s (%s): clips are decoded again each epoch", self.folder, exc)
            self.folder = None
        return clip


# -- augmentation -------------------------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """Training augmentation. ``scale``: area range of the random resized crop."""

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color: float = 0.0  # brightness/contrast/saturation jitter strength, 0 = off

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale: expected 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 <= self.color < 1:
            raise ValueError(f"color: expected 0 <= color < 1, got {self.color}")


def random_resized_crop(frames: np.ndarray, out: tuple[int, int], aug: Augment, rng: random.Random) -> np.ndarray:
    """The same random crop on every frame of ``(T, H, W, 3)``, resized to ``out``."""
    import cv2

    t, h, w, _ = frames.shape
    for _ in range(10):
        area = h * w * rng.uniform(*aug.scale)
        ratio = np.exp(rng.uniform(np.log(aug.ratio[0]), np.log(aug.ratio[1])))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch, cw = min(h, w), min(h, w)
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    return np.stack([cv2.resize(f[top : top + ch, left : left + cw], (out[1], out[0]), interpolation=cv2.INTER_LINEAR) for f in frames])


class ClipDataset(torch.utils.data.Dataset):
    """``(clip (C, T, H, W) float32, label)`` pairs for training or validation.

    ``train=True``: one clip per video per epoch, at a random time, randomly cropped and
    (unless disabled) flipped. ``train=False``: ``clips_per_video`` evenly spaced windows,
    preprocessed exactly as at inference (resize, centre crop, normalize).
    """

    def __init__(self, samples: Sequence[Sample], spec: ModelSpec, *, train: bool, augment: Augment = Augment(),
                 cache: ClipCache | None = None, clips_per_video: int = 2, seed: int = 0) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.train = train
        self.augment = augment
        self.cache = cache or ClipCache(None, spec)
        self.clips_per_video = 1 if train else clips_per_video
        self.pre = FramePreprocessor(spec)
        self.seed = seed
        self.epoch = 0
        self.unreadable: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples) * self.clips_per_video

    def _window(self, clip: DecodedClip, end_ts: float | None) -> np.ndarray:
        idx = sample_indices(clip.times, self.spec.frames, self.spec.fps, end_ts=end_ts)
        if idx is None:
            idx = sample_indices(clip.times, self.spec.frames, self.spec.fps, pad=True)
        return clip.frames[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i // self.clips_per_video]
        try:
            clip = self.cache.load(sample.path)
        except (SourceError, OSError) as exc:
            self.unreadable.add(sample.path)  # in this process: a loader's worker tells the main one by the label
            logger.warning("skipping unreadable clip %s: %s", sample.path, exc)
            return torch.empty(0), -1 - i // self.clips_per_video  # dropped by collate(), noted by taken()
        span = self.spec.span_s
        first, last = float(clip.times[0]), float(clip.times[-1])
        rng = random.Random(hash((self.seed, self.epoch, i)))
        if last - first <= span:
            end = None
        elif self.train:
            end = rng.uniform(first + span, last)
        else:
            k = i % self.clips_per_video
            end = first + span + (last - first - span) * (k + 1) / (self.clips_per_video + 1)
        frames = self._window(clip, end)  # (T, H, W, 3) uint8, resized
        if self.train:
            frames = random_resized_crop(frames, self.spec.crop, self.augment, rng)
            if self.augment.flip and rng.random() < 0.5:
                frames = frames[:, :, ::-1]
        else:
            frames = [self.pre.crop(f) for f in frames]
        x = np.stack([self.pre.normalize(np.ascontiguousarray(f)) for f in frames])  # (T, C, H, W)
        if self.train and self.augment.color > 0:
            x = _color_jitter(x, self.augment.color, rng)
        return torch.from_numpy(x).permute(1, 0, 2, 3).contiguous(), sample.label  # (T,C,H,W) -> (C,T,H,W)


def _color_jitter(x: np.ndarray, strength: float, rng: random.Random) -> np.ndarray:
    """Brightness and contrast jitter in normalized space, the same for every frame."""
    b = rng.uniform(-strength, strength)
    c = rng.uniform(1 - strength, 1 + strength)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    return ((x - mean) * c + mean + b).astype(np.float32)
