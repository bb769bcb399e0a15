"""int8 models for the CPU: post-training quantization with NNCF, checked against fp32.

``streamrec quantize`` calibrates an OpenVINO int8 model on windows of the user's own clips
(through the live sampling and preprocessing), then compares it with fp32 on windows it was
not calibrated on: how often the top-1 labels are the same, and the largest softmax score
difference. It keeps the model only when they agree on at least ``min_agreement`` of those
windows and no score moved by more than ``max_score_diff``; ``--backend openvino-int8`` then serves it, faster than
OpenVINO fp32 (see docs/performance.md).

The model is kept in the OpenVINO cache folder next to the fp32 ones, keyed by the weights'
digest like them (:func:`streamrec.runtime.openvino.int8_path`), with the report as a JSON file
beside it, and pruned with them. Random weights are refused: their agreement says nothing
about a trained model's.

Example:
    >>> split_windows(list(range(7)))
    ([0, 2, 4, 6], [1, 3, 5])
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import torch

from streamrec.runtime import backends

from streamrec.runtime import openvino

from streamrec.runtime import onnx

from streamrec.runtime import autopick
from streamrec.offline.bench import clip_windows
from streamrec.errors import StreamrecError
from streamrec.models.spec import LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")
MIN_WINDOWS = 4  # two to calibrate on, two to check on
# windows held at once, float32 (r2plus1d_18: 2.4 MB each): a folder of long clips widens the stride
MAX_WINDOWS = 300


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize` measured; ``saved`` is the int8 model's path, or None when refused."""

    model: str
    weights: str
    clips: tuple[str, ...]
    stride_s: float  # seconds between windows: --stride, or wider to keep to max_windows
    calibration_windows: int
    checked_windows: int
    top1_agree: int
    max_abs_score_diff: float  # softmax scores, int8 vs fp32, over the checked windows
    fp32_ms: float  # OpenVINO fp32, one window, best of 3
    int8_ms: float
    min_agreement: float
    max_score_diff: float
    saved: str | None

    @property
    def agreement(self) -> float:
        return self.top1_agree / self.checked_windows

    @property
    def accepted(self) -> bool:
        """Agreement and score differences within the limits asked for."""
        return self.agreement >= self.min_agreement and self.max_abs_score_diff <= self.max_score_diff

    def lines(self) -> list[str]:
        out = [f"model {self.model}, weights {self.weights}",
               f"calibrated on {self.calibration_windows} windows of {len(self.clips)} clip(s) (one every "
               f"{self.stride_s:g} s); checked on {self.checked_windows} other windows",
               f"top-1 same as fp32: {self.top1_agree}/{self.checked_windows} ({self.agreement:.0%}); "
               f"largest score difference {self.max_abs_score_diff:.3f}",
               f"one window: fp32 {self.fp32_ms:.1f} ms, int8 {self.int8_ms:.1f} ms "
               f"({self.fp32_ms / self.int8_ms:.2f}x)"]
        if self.saved:
            out.append(f"saved {self.saved}; serve it with --backend openvino-int8")
        return out


def split_windows(windows: Sequence[T]) -> tuple[list[T], list[T]]:
    """Alternate windows: even ones calibrate, odd ones check (both sets span every clip)."""
    return list(windows[0::2]), list(windows[1::2])


def stride_for(durations: Sequence[float], stride: float, max_windows: int = MAX_WINDOWS) -> float:
    """``stride``, or the wider one that gives about ``max_windows`` windows over clips of these
    lengths (seconds; 0 for one whose headers do not say).

    Example:
        >>> stride_for([30.0, 10.0], 1.0), stride_for([3600.0], 1.0, max_windows=300)
        (1.0, 12.0)
    """
    return max(stride, sum(durations) / max_windows)


def check_args(*, stride: float, min_agreement: float, max_score_diff: float, threads: int | None = None) -> None:
    from streamrec.config import MAX_THREADS

    if threads is not None and not 1 <= threads <= MAX_THREADS:  # OpenVINO refuses -1 after the model loaded
        raise StreamrecError(f"--threads: expected 1..{MAX_THREADS}, got {threads}")
    if not 0.0 <= min_agreement <= 1.0:
        raise StreamrecError(f"--min-agreement: expected a fraction from 0 to 1, got {min_agreement}")
    if not 0.0 <= max_score_diff <= 1.0:
        raise StreamrecError(f"--max-score-diff: expected a score difference from 0 to 1, got {max_score_diff}")
    from streamrec.offline.classify import MAX_STRIDE_S, MIN_STRIDE_S

    if not MIN_STRIDE_S <= stride <= MAX_STRIDE_S:
        raise StreamrecError(f"--stride: expected {MIN_STRIDE_S} to {MAX_STRIDE_S:g} seconds between windows, got {stride}")


def compare(pairs) -> tuple[int, float]:
    """``(windows whose top-1 is the same, largest score difference)`` of ``(fp32 scores, int8
    scores)`` pairs; a window whose scores are not all finite agrees with nothing and makes the
    difference infinite (``max`` would drop a NaN, and a model that gives NaN would pass).

    Example:
        >>> same = (torch.tensor([0.9, 0.1]), torch.tensor([0.8, 0.2]))
        >>> nan = (torch.tensor([0.5, 0.5]), torch.tensor([float("nan"), float("nan")]))
        >>> [(agree, round(worst, 3)) for agree, worst in (compare([same]), compare([same, nan]))]
        [(1, 0.1), (1, inf)]
    """
    agree, worst = 0, 0.0
    for a, b in pairs:
        diff = float((a - b).abs().max())
        finite = math.isfinite(diff)
        agree += int(finite and bool(a.argmax() == b.argmax()))
        worst = max(worst, diff) if finite else math.inf
    return agree, worst


def quantize(loaded: LoadedModel, clips: Sequence[Path], *, stride: float = 1.0, min_agreement: float = 0.9,
             max_score_diff: float = 0.1, threads: int | None = None, save: bool = True,
             max_windows: int = MAX_WINDOWS) -> QuantizeReport:
    """Quantize ``loaded`` to OpenVINO int8 on windows of ``clips`` every ``stride`` seconds (wider
    where that would make more than about ``max_windows``: :func:`stride_for`) and
    check it against OpenVINO fp32 on the other half; saved (``save``) when the top-1 labels agree
    on at least ``min_agreement`` of the checked windows and no softmax score differs by more
    than ``max_score_diff``."""
    check_args(stride=stride, min_agreement=min_agreement, max_score_diff=max_score_diff)
    if loaded.meaningless:
        raise StreamrecError("--weights none: random weights; quantize a trained model (DEFAULT or a checkpoint)")
    from streamrec.offline.dataset import probe

    stride = stride_for([(info.duration_s if (info := probe(c)) else 0.0) for c in clips], stride, max_windows)
    windows: list[torch.Tensor] = []  # each (1, C, T, H, W) float32
    for clip in clips:
        try:
            windows += clip_windows([clip], loaded, stride=stride)
        except StreamrecError as exc:  # said of the option that named the file (clip_windows names its own)
            message = str(exc)
            raise StreamrecError(message if message.startswith("--clips:") else f"--clips: {message}") from None
    if len(windows) < MIN_WINDOWS:
        raise StreamrecError(f"--clips: expected at least {MIN_WINDOWS} windows to calibrate and check on, "
                             f"got {len(windows)} (use more or longer clips, or a smaller --stride)")
    calibration, checked = split_windows(windows)
    digest = openvino.weights_digest(loaded.module)
    fp32 = backends.build("openvino", loaded, threads=threads)
    int8, model = openvino.openvino_int8(loaded, calibration, threads=threads, subset_size=len(calibration),
                                         with_model=True)
    with torch.no_grad():
        agree, worst = compare((fp32(x).softmax(-1), int8(x).softmax(-1)) for x in checked)
    x1 = onnx.example_input(loaded)
    report = QuantizeReport(
        model=loaded.name, weights=loaded.weights, clips=tuple(map(str, clips)), stride_s=stride,
        calibration_windows=len(calibration), checked_windows=len(checked), top1_agree=agree,
        max_abs_score_diff=worst, fp32_ms=autopick.best_seconds(lambda: fp32(x1)) * 1e3,
        int8_ms=autopick.best_seconds(lambda: int8(x1)) * 1e3, min_agreement=min_agreement,
        max_score_diff=max_score_diff, saved=None)
    if save and report.accepted:
        path = openvino.int8_path(loaded, digest)
        report = QuantizeReport(**{**asdict(report), "saved": str(path)})
        openvino.save_int8(model, path, json.dumps({**asdict(report), "created": time.time()}, indent=1))
    return report
