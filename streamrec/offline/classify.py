"""``streamrec classify FILE``: a timeline of windows over a recorded video, and a verdict.

The file is decoded once, streaming, with PyAV. Each frame goes through the same
:class:`~streamrec.models.preprocess.FramePreprocessor` into the same
:class:`~streamrec.live.ring.FrameRing` as the live path, and windows are sampled from it by
timestamp exactly as live. Windows run in batches. Consecutive windows with the same label
as serve would show it (its smoothing and "uncertain" threshold) make the clip's segments
(:mod:`streamrec.offline.segments`); the verdict averages the window scores over the whole
clip (torchvision's multi-clip evaluation).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import av

import numpy as np

from streamrec.runtime.classifier import Classifier, resolve_device
from streamrec.errors import SourceError, StreamrecError, install_hint
from streamrec.fsutil import save_figure
from streamrec.models.kinetics import restrict, sport_indices
from streamrec.live.messages import top_k, top_k_many
from streamrec.runtime import prepared
from streamrec.models.spec import LoadedModel
from streamrec.models.preprocess import FramePreprocessor, batch_windows
from streamrec.live.ring import FrameRing, Window, capacity_for
from streamrec.live.sources import PyAVSource, SourceSpec, named_as
from streamrec.redact import shown
from streamrec.offline.segments import ClipSegment, SegmentBuilder, class_colors, clock, summary
from streamrec.zones import ZoneConfig, upscale_warnings
from streamrec.offline.plotting import pyplot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowResult:
    index: int
    start: float  # seconds, the file's own timestamps of the first and last sampled frame
    end: float
    label: str
    score: float
    top: list[dict[str, Any]]
    padded: bool = False


@dataclass
class Timeline:
    """The result of :func:`classify_file`."""

    file: str
    model: str
    weights: str
    meaningless: bool
    stride: float
    first_ts: float
    last_ts: float
    windows: list[WindowResult] = field(default_factory=list)
    verdict: list[dict[str, Any]] = field(default_factory=list)  # the average of the window scores over the clip
    segments: list[ClipSegment] = field(default_factory=list)
    padded: bool = False  # the clip was shorter than one window
    sports_only: bool = False
    packets: int = 0  # video packets read from the file
    decode_errors: int = 0  # of them, the ones that did not decode (a damaged file): skipped
    device: str = "cpu"
    backend: str = "torch"  # what computed the scores: openvino-bf16 and -int8 differ from fp32 a little
    zone: dict[str, Any] | None = None  # the region classified (--zone: its fractions and pixel box); None: all

    @property
    def damage_note(self) -> str | None:
        """A line for the user when packets were skipped, else None."""
        if not self.decode_errors:
            return None
        return (f"{self.decode_errors} of {self.packets} video packets could not be decoded (a damaged file?); "
                f"the timeline covers the frames that could")

    @property
    def duration(self) -> float:
        return self.last_ts - self.first_ts

    @property
    def summary(self) -> str:
        """One line naming the segments: ``2 segments: jump 0.0-6.0 s, run 6.0-12.0 s``."""
        return summary(self.segments)

    def segment_of(self, window: WindowResult) -> int:
        """The index of the segment that ``window`` falls in (the first that ends at or after its end)."""
        return next((i for i, seg in enumerate(self.segments) if window.end <= seg.end), len(self.segments) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration"] = self.duration
        d["summary"] = self.summary
        d["verdict_is"] = "the average of the window scores over the clip"
        if self.meaningless:
            d["warning"] = "random weights (--weights none): labels are meaningless"
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    CSV_FIELDS = ("index", "start", "end", "label", "score", "top", "segment", "segment_label", "segment_start",
                  "segment_end", "random_weights")

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.CSV_FIELDS)
        for win in self.windows:
            tops = ";".join(f"{t['label']}:{t['score']:.5f}" for t in win.top)
            i = self.segment_of(win)
            seg = self.segments[i]
            w.writerow([win.index, f"{win.start:.3f}", f"{win.end:.3f}", win.label, f"{win.score:.5f}", tops,
                        i, seg.label, f"{seg.start:.3f}", f"{seg.end:.3f}", "true" if self.meaningless else "false"])
        return buf.getvalue()

    def to_table(self, *, windows: bool = False) -> str:
        """The segments (times as mm:ss on the file's own clock, the label, its mean score), the
        summary and the average; with ``windows`` a row per window too."""
        lines = []
        if self.meaningless:
            lines.append("WARNING: random weights (--weights none): labels are meaningless")
        if self.padded:
            lines.append("note: the clip is shorter than one window; its last frame was repeated to fill it")
        if self.damage_note:
            lines.append(f"note: {self.damage_note}")
        if self.zone:
            z = self.zone
            lines.append(f"zone {z['name']}: x={z['x']:g} y={z['y']:g} w={z['w']:g} h={z['h']:g} (pixels "
                         f"{z['box'][0]},{z['box'][1]} to {z['box'][2]},{z['box'][3]})")
        lines.append("segments (labels as serve shows them, smoothed; uncertain where serve says so):")
        lines.append(f"{'#':>4}  {'start-end':<15}  {'mean score':>10}  {'windows':>7}  label")
        for i, seg in enumerate(self.segments):
            span = f"{clock(seg.start)}-{clock(seg.end)}"
            lines.append(f"{i:>4}  {span:<15}  {seg.score:>10.3f}  {seg.windows:>7}  {seg.label}")
        if windows:
            lines.append("windows (seconds):")
            lines.append(f"{'#':>4}  {'start':>8}  {'end':>8}  {'score':>6}  label")
            for w in self.windows:
                lines.append(f"{w.index:>4}  {w.start:>8.2f}  {w.end:>8.2f}  {w.score:>6.3f}  {w.label}")
        lines.append(self.summary)
        lines.append("average over the clip: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in self.verdict))
        return "\n".join(lines) + "\n"

    def to_dataframe(self):
        """The windows as a pandas DataFrame (``pip install -e '.[pandas]'`` in the streamrec folder), with
        the CSV's ``random_weights`` column (True on every row when the labels mean nothing)."""
        try:
            import pandas as pd
        except ImportError:
            raise StreamrecError("to_dataframe: pandas is not installed; " + install_hint("pandas")) from None
        return pd.DataFrame([{**asdict(w), "random_weights": self.meaningless} for w in self.windows])


class WindowClassifier:
    """Batches windows, runs them, and turns scores into :class:`WindowResult` rows."""

    def __init__(self, classifier: Classifier, *, top: int, batch_size: int, subset: list[int] | None) -> None:
        self.classifier = classifier
        self.classes = classifier.loaded.classes
        self.top = top
        self.batch_size = batch_size
        self.subset = np.asarray(subset) if subset else None
        self.pending: list[tuple[Window, bool]] = []
        self.results: list[WindowResult] = []
        self.prob_sum: np.ndarray | None = None
        self.segments = SegmentBuilder(self.classes)  # serve's smoothing and uncertainty threshold

    def add(self, window: Window, *, padded: bool = False) -> None:
        self.pending.append((window, padded))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        probs = self.classifier.probs(batch_windows([w.frames for w, _ in self.pending]))  # uint8 (B, T, H, W, C)
        if self.subset is not None:
            probs = restrict(probs, self.subset)
        for (w, padded), p, tops in zip(self.pending, probs, top_k_many(probs, self.classes, self.top)):
            self.results.append(
                WindowResult(len(self.results), w.start_ts, w.end_ts, tops[0]["label"], tops[0]["score"], tops, padded)
            )
            self.prob_sum = p.astype(np.float64) if self.prob_sum is None else self.prob_sum + p
            self.segments.add(p, start=w.start_ts, end=w.end_ts)
        self.pending.clear()


@dataclass
class FileSpan:
    """What :func:`iter_windows` saw of the file."""

    first_ts: float = 0.0
    last_ts: float = 0.0
    padded: bool = False


def iter_windows(
    source: PyAVSource,
    spec,
    *,
    stride: float,
    span: FileSpan | None = None,
    progress: Callable[[float], None] | None = None,
    zone: ZoneConfig | None = None,
) -> Iterator[tuple[Window, bool]]:
    """``(window, padded)`` every ``stride`` seconds over a file, decoded once, streaming.

    Frames pass through the live path's per-frame preprocessing and ring buffer; each
    window is sampled by timestamp. The last window ends at the last frame, so the
    windows cover the whole file; a file shorter than one window gives one padded window.
    ``zone``: only its pixels, cut out before the resize and centre crop (as live capture does).
    A ``stride`` below :data:`MIN_STRIDE_S` is taken as that (a smaller step would never move
    the next window's end on: the loop would not end).
    """
    stride = max(stride, MIN_STRIDE_S)
    span = span if span is not None else FileSpan()
    pre = FramePreprocessor(spec)
    ring = FrameRing(capacity_for(spec.frames, spec.fps, source_fps=max(source.fps or 30.0, 30.0) * 1.5), pre.crop_shape, np.uint8)
    first_ts: float | None = None
    last_ts = 0.0
    next_end = 0.0
    last_window_end = -np.inf
    try:
        for rgb, pts in source.frames():
            ts = float(pts if pts is not None else 0.0)
            if first_ts is None:
                first_ts = ts
                next_end = ts + spec.span_s
            if ts < last_ts:  # out-of-order timestamps: skip the frame, as live capture would
                continue
            last_ts = ts
            if zone is not None:
                x0, y0, x1, y1 = zone.box(rgb.shape[1], rgb.shape[0])
                rgb = rgb[y0:y1, x0:x1]
            ring.write(pre.resize_crop(rgb), ts)
            while ts >= next_end:
                w = ring.newest_window(spec.frames, spec.fps, end_ts=next_end)
                if w is not None and w.end_ts > last_window_end:
                    last_window_end = w.end_ts
                    yield w, False
                next_end += stride
            if progress is not None:
                progress(ts - first_ts)
    except (av.error.FFmpegError, OSError) as exc:  # a decode failure mid-file: say where
        raise SourceError(f"{source.spec.display_name}: decoding failed at {last_ts:.2f} s: {exc}") from None
    if first_ts is None:
        raise SourceError(f"{source.spec.display_name}: no decodable video frames")
    span.first_ts, span.last_ts = first_ts, last_ts
    if last_window_end < last_ts:  # the tail, or a clip shorter than one window
        w = ring.newest_window(spec.frames, spec.fps)
        if w is None:
            w = ring.newest_window(spec.frames, spec.fps, pad=True)
            span.padded = True
        yield w, span.padded


MIN_STRIDE_S = 0.01  # seconds between windows: below a frame's time, windows repeat
MAX_STRIDE_S = 86400.0


def check_options(*, stride: float, batch_size: int | None, top: int, threads: int | None) -> None:
    """Refuse options that cannot work, naming the option (one line, exit 2)."""
    if not MIN_STRIDE_S <= stride <= MAX_STRIDE_S:
        raise StreamrecError(f"--stride: expected {MIN_STRIDE_S} to {MAX_STRIDE_S:g} seconds between windows, got {stride}")
    if batch_size is not None and batch_size < 1:
        raise StreamrecError(f"--batch-size: expected >= 1, got {batch_size}")
    if top < 1:
        raise StreamrecError(f"--top: expected >= 1, got {top}")
    from streamrec.config import MAX_THREADS

    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise StreamrecError(f"--threads: expected 1..{MAX_THREADS}, got {threads}")  # torch takes a C int


def classify_file(
    path: str | Path,
    *,
    model: str | None = None,
    weights: str = "DEFAULT",
    device: str = "auto",
    backend: str | None = None,
    stride: float = 1.0,
    top: int = 5,
    batch_size: int | None = None,
    threads: int | None = None,
    sports_only: bool = False,
    loaded: LoadedModel | None = None,
    progress: Callable[[float], None] | None = None,
    zone: ZoneConfig | None = None,
) -> Timeline:
    """Classify a video file window by window.

    Args:
        backend: ``None`` means ``torch`` on CPU (a file is a batch job: eager PyTorch with the
            exact rewrites of :mod:`streamrec.runtime.graphs` needs the least memory) and ``auto`` on CUDA.
        stride: seconds between window ends.
        batch_size: windows per forward pass; default 8 on CUDA, 1 on CPU (where batching adds
            little speed and much memory).
        threads: CPU threads for inference (default: all cores but one; both of two).
        sports_only: restrict scores to Kinetics sport classes, renormalized.
        progress: called with the seconds decoded so far.
        zone: classify only this region of the frame (``ZoneConfig.parse_rect("x,y,w,h")``).

    Example:
        >>> tl = classify_file("clip.mp4", weights="none")  # doctest: +SKIP
        >>> tl.windows[0].start, tl.verdict[0]["label"]      # doctest: +SKIP
    """
    check_options(stride=stride, batch_size=batch_size, top=top, threads=threads)
    spec = SourceSpec.parse(str(path))
    if spec.kind != "file":
        raise StreamrecError(f"classify: expected a video file, got {spec.display_name}")
    with named_as("classify"):  # the file is the command's argument, not serve's --source
        source = PyAVSource(spec)  # validates: exists, is a video, has a video stream
    try:
        loaded = loaded or prepared.load(model, weights, device=device, child=True)  # first start: in a child process
        if backend is None:
            backend = "auto" if resolve_device(device).type == "cuda" else "torch"
        clf = Classifier(loaded, device=device, backend=backend, threads=threads)
        runner = WindowClassifier(clf, top=top, batch_size=batch_size or (8 if clf.cuda else 1),
                                  subset=sport_indices(loaded.classes) if sports_only else None)
        span = FileSpan()
        for window, padded in iter_windows(source, loaded.spec, stride=stride, span=span, progress=progress, zone=zone):
            runner.add(window, padded=padded)
        runner.flush()
    finally:
        source.close()
    first_ts, last_ts, padded = span.first_ts, span.last_ts, span.padded
    mean = runner.prob_sum / len(runner.results)
    return Timeline(file=str(path), model=loaded.name, weights=loaded.weights, meaningless=loaded.meaningless,
                    stride=stride, first_ts=first_ts, last_ts=last_ts, windows=runner.results,
                    verdict=top_k(mean, loaded.classes, top), segments=runner.segments.finish(), padded=padded,
                    sports_only=sports_only, packets=source.packets, decode_errors=source.decode_errors, device=str(clf.device),
                    backend=clf.backend, zone=zone_info(zone, source.size, loaded.spec.crop))


def zone_info(zone: ZoneConfig | None, size: tuple[int, int], crop: tuple[int, int]) -> dict[str, Any] | None:
    """``zone`` as the timeline names it (with its pixel box), after a warning where it is upscaled."""
    if zone is None:
        return None
    for line in upscale_warnings([zone], *size, min(crop), camera="classify"):
        logger.warning("%s", line.split(": ", 1)[1])  # the zone's size, not the camera's name
    return {**zone.to_json(), "box": list(zone.box(*size))}


def plot_timeline(tl: Timeline, path: str | Path) -> None:
    """A PNG: the segments as shaded bands (grey where uncertain) over the top-1 score curve of
    the windows, with the average over the clip in the title."""
    plt = pyplot("--plot")

    labels = list(dict.fromkeys(seg.label for seg in tl.segments))
    colors = class_colors(labels)

    def color(label: str):
        return colors[label]

    fig, (ax_band, ax_score) = plt.subplots(2, 1, figsize=(10, 4), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    try:
        for seg in tl.segments:
            ax_band.axvspan(seg.start, seg.end, color=color(seg.label), alpha=0.7, lw=0)
            ax_score.axvspan(seg.start, seg.end, color=color(seg.label), alpha=0.15, lw=0)
        ax_band.set_yticks([])
        handles = [plt.Rectangle((0, 0), 1, 1, color=color(label)) for label in labels]
        ax_band.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
        title = (f"{shown(Path(tl.file).name)}: {tl.model}, {tl.summary.split(':')[0]}; average over the clip: "
                 f"{tl.verdict[0]['label']} ({tl.verdict[0]['score']:.2f})")
        if tl.meaningless:
            title += "  [random weights: labels meaningless]"
        ax_band.set_title(title, fontsize=9)
        mids = [(w.start + w.end) / 2 for w in tl.windows]
        ax_score.plot(mids, [w.score for w in tl.windows], marker="o", ms=3)
        ax_score.set_ylim(0, 1)
        ax_score.set_xlabel("time (s)")
        ax_score.set_ylabel("top-1 score")
        fig.tight_layout()
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
