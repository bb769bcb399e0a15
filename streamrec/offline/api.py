"""The notebook API: ``load_recognizer`` -> ``.classes``, ``.preprocess``, ``.predict``.

Example:
    >>> import numpy as np, streamrec
    >>> rec = streamrec.load_recognizer(model="tiny3d", weights="none", device="cpu")
    >>> rec.preprocess(np.zeros((16, 240, 320, 3), np.uint8)).shape
    torch.Size([1, 3, 16, 112, 112])
    >>> len(rec.predict(np.zeros((16, 240, 320, 3), np.uint8), k=3))
    3
    >>> rec.predict(np.zeros((16, 240, 320, 3), np.uint8), k=0)
    Traceback (most recent call last):
    ...
    ValueError: k: expected >= 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from streamrec.runtime.classifier import Classifier
from streamrec.runtime import prepared
from streamrec.models.spec import LoadedModel
from streamrec.models.preprocess import FramePreprocessor


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


class Recognizer:
    """A loaded model with its own preprocessing and class names."""

    def __init__(self, loaded: LoadedModel, *, device: str = "auto", backend: str = "auto") -> None:
        self.loaded = loaded
        self.classifier = Classifier(loaded, device=device, backend=backend)
        self.preprocessor = FramePreprocessor(loaded.spec)

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def meaningless(self) -> bool:
        """True for random weights: predictions carry no information."""
        return self.loaded.meaningless

    def preprocess(self, frames: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """RGB uint8 frames (a list of H x W x 3, or T x H x W x 3) -> ``(1, C, T, H, W)``.

        Applies exactly the weights' spatial transform to exactly these frames (no
        temporal resampling: pass the frames you want classified)."""
        return self.preprocessor.clip(frames)

    def predict(self, frames: Sequence[np.ndarray] | np.ndarray, *, k: int = 5) -> list[Prediction]:
        """Top-``k`` labels with softmax scores for one clip of RGB uint8 frames."""
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        probs = self.classifier.probs(self.preprocess(frames))[0]
        idx = np.argsort(-probs, kind="stable")[:k]
        return [Prediction(self.classes[i], float(probs[i])) for i in idx]


def load_recognizer(
    model: str | None = None, *, weights: str = "DEFAULT", device: str = "auto", backend: str = "auto"
) -> Recognizer:
    """Load ``model`` (default r2plus1d_18) with ``weights`` (DEFAULT, none or a path).

    A model's first CPU start is loaded by a child process (see :func:`streamrec.runtime.prepared.load`),
    so that the notebook's kernel never imports torchvision (and holds its memory) unless it did already."""
    return Recognizer(prepared.load(model, str(weights), device=device, child=True), device=device, backend=backend)
