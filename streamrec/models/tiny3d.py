"""``tiny3d``: a small 3D CNN of our own (0.43 M parameters) that trains on a laptop CPU.

Factorised (2+1)D blocks as in R(2+1)D, with few channels, on 16 x 112 x 112 clips.

Example:
    >>> import torch
    >>> m = Tiny3D(num_classes=5)
    >>> m(torch.zeros(2, 3, 16, 112, 112)).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.models.spec import ModelSpec

# Kinetics statistics at the r2plus1d_18 geometry, so clips preprocessed for one fit both.
TINY3D_SPEC = ModelSpec(
    resize=(128, 171),
    crop=(112, 112),
    mean=(0.43216, 0.394666, 0.37645),
    std=(0.22803, 0.22145, 0.216989),
    frames=16,
    fps=15.0,
)


def _block(cin: int, cout: int, *, stride: tuple[int, int, int]) -> nn.Sequential:
    mid = max(cout // 2, 8)
    return nn.Sequential(
        # spatial 1x3x3 then temporal 3x1x1: the (2+1)D factorisation
        nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, stride[1], stride[2]), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (3, 1, 1), stride=(stride[0], 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class Tiny3D(nn.Module):
    """A 4-stage (2+1)D CNN; input ``(B, C, T, H, W)``, output logits ``(B, num_classes)``."""

    def __init__(self, *, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        w = width
        self.stem = nn.Sequential(
            nn.Conv3d(3, w // 2, (1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2), bias=False),
            nn.BatchNorm3d(w // 2),
            nn.ReLU(inplace=True),
        )
        self.features = nn.Sequential(
            _block(w // 2, w, stride=(1, 2, 2)),
            _block(w, 2 * w, stride=(2, 2, 2)),
            _block(2 * w, 4 * w, stride=(2, 2, 2)),
            _block(4 * w, 8 * w, stride=(2, 2, 2)),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        x = self.pool(x).flatten(1)  # (B, C, 1, 1, 1) -> (B, C)
        return self.fc(self.dropout(x))
