"""What a loaded model carries: the preprocessing its weights expect (:class:`ModelSpec`) and
the module with its class names (:class:`LoadedModel`).

Example:
    >>> spec = ModelSpec(resize=(128, 171), crop=(112, 112), mean=(0.43, 0.39, 0.38), std=(0.23, 0.22, 0.22))
    >>> round(spec.span_s, 3), ModelSpec.from_dict(spec.to_dict()) == spec
    (1.0, True)
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from streamrec.catalog import CLASS_NAME_MAX_CHARS, UNCERTAIN
from streamrec.errors import WeightsError
from streamrec.redact import control_characters, printable


def class_names_problem(classes: Any) -> str | None:
    """Why ``classes`` (a checkpoint's or an exported model's) cannot be a model's class names, else
    ``None``: each is logged, shown, stored and published, as one line, drawn as written, told apart
    from the others and from the ``uncertain`` of no clear answer.

    Example:
        >>> class_names_problem(["squat", "deadlift"]) is None, class_names_problem(["a", "a"])
        (True, "expected distinct names, got 'a' more than once")
        >>> class_names_problem(["squat", "squat "])
        "expected distinct names, got 'squat ' and 'squat', which read as one"
    """
    if not isinstance(classes, list) or not classes:
        return f"expected a list of names, got {str(classes)[:40]!r}"
    for c in classes:
        if not isinstance(c, str) or not c.strip() or control_characters(c) or len(c) > CLASS_NAME_MAX_CHARS:
            return (f"expected names of 1-{CLASS_NAME_MAX_CHARS} characters without control characters or line "
                    f"breaks, got {str(c)[:40]!r}")
        if c.strip().lower() == UNCERTAIN:
            return f"expected names other than {UNCERTAIN!r} (the label shown when no class is clear), got {c!r}"
    seen: dict[str, str] = {}
    for c in classes:
        key = unicodedata.normalize("NFKC", c).strip()  # "squat" and "squat ", a composed and a decomposed é
        if key in seen:
            same = "more than once" if seen[key] == c else f"and {seen[key]!r}, which read as one"
            return f"expected distinct names, got {c!r} {same}"
        seen[key] = c
    return None


SPEC_MAX_PIXELS = 1024  # a resize or crop side: the largest models take 224
SPEC_MAX_FRAMES = 256  # frames in a window (the largest models take 32)
SPEC_MAX_FPS = 240.0  # the frame rate a window is sampled at


@dataclass(frozen=True)
class ModelSpec:
    """Spatial and temporal preprocessing a model's weights expect.

    ``resize`` is ``(H, W)`` for an exact resize or ``(S,)`` to resize the short side to S,
    exactly as torchvision's ``VideoClassification`` preset.
    """

    resize: tuple[int, ...]
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frames: int = 16
    fps: float = 15.0

    def __post_init__(self) -> None:
        if len(self.resize) not in (1, 2) or not all(0 < v <= SPEC_MAX_PIXELS for v in self.resize):
            raise ValueError(f"resize: expected (H, W) or (short_side,) of 1..{SPEC_MAX_PIXELS}, got {self.resize}")
        if len(self.crop) != 2 or not all(0 < v <= SPEC_MAX_PIXELS for v in self.crop):
            raise ValueError(f"crop: expected (H, W) of 1..{SPEC_MAX_PIXELS}, got {self.crop}")
        fits = self.crop[0] <= self.resize[0] and self.crop[1] <= self.resize[-1] if len(self.resize) == 2 \
            else max(self.crop) <= self.resize[0]  # the short side: every frame's resized size holds the crop
        if not fits:
            raise ValueError(f"crop: expected at most the resized size {self.resize}, got {self.crop}")
        if (len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in self.mean + self.std)
                or min(self.std) <= 0):
            raise ValueError(f"mean/std: expected 3 finite values each, std > 0, got {self.mean}/{self.std}")
        if not 1 <= self.frames <= SPEC_MAX_FRAMES:
            raise ValueError(f"frames: expected 1..{SPEC_MAX_FRAMES}, got {self.frames}")
        if not (math.isfinite(self.fps) and 0 < self.fps <= SPEC_MAX_FPS):
            raise ValueError(f"fps: expected > 0 and at most {SPEC_MAX_FPS}, got {self.fps}")

    @property
    def span_s(self) -> float:
        """Seconds between the first and the last frame of a window."""
        return (self.frames - 1) / self.fps

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def read(cls, d: Any, source: str) -> "ModelSpec":
        """:meth:`from_dict` of the ``preprocess`` table of the weights file ``source``, whatever
        it holds: a one-line :class:`WeightsError` naming what is wrong, never a ``KeyError``.

        Example:
            >>> ModelSpec.read({"resize": [128], "crop": [112, 112]}, "m.pt")
            Traceback (most recent call last):
            ...
            streamrec.errors.WeightsError: --weights m.pt: preprocess: expected 'mean', got none
        """
        try:
            return cls._read(d)
        except ValueError as exc:
            raise WeightsError(f"--weights {source}: {exc}") from None

    @classmethod
    def _read(cls, d: Any) -> "ModelSpec":
        if not isinstance(d, dict):
            raise ValueError(f"preprocess: expected a table of resize, crop, mean, std, got {type(d).__name__}")
        for key in ("resize", "crop", "mean", "std"):
            if key in d and not isinstance(d[key], (list, tuple)):  # "12" would read as (1, 2)
                raise ValueError(f"preprocess: {key}: expected a list of numbers, got {printable(repr(d[key]), limit=40)}")
        try:
            return cls.from_dict(d)
        except KeyError as exc:
            raise ValueError(f"preprocess: expected {exc.args[0]!r}, got none") from None
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"preprocess: expected numbers for resize, crop, mean, std, frames, fps ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"preprocess: {exc}") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(
            resize=tuple(int(x) for x in d["resize"]),
            crop=tuple(int(x) for x in d["crop"]),  # type: ignore[arg-type]
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            frames=int(d.get("frames", 16)),
            fps=float(d.get("fps", 15.0)),
        )


@dataclass
class LoadedModel:
    """A model in eval mode with the class names and preprocessing that belong to it."""

    name: str
    module: nn.Module
    classes: list[str]
    spec: ModelSpec
    weights: str  # "DEFAULT", "none" or the path
    meaningless: bool = False  # random weights: labels carry no information
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prebuilt(self) -> bool:
        """An exported model (a TorchScript file, an ONNX Runtime session): it runs as it is,
        with nothing in it to trace, fold or rewrite."""
        return isinstance(self.module, torch.jit.ScriptModule) or not any(True for _ in self.module.parameters())
