"""Factorized 3-D convolutions run as 2-D ones: the same arithmetic, faster kernels on GPU.

R(2+1)D and S3D split each 3-D convolution into a spatial ``(1, kh, kw)`` one and a
temporal ``(kt, 1, 1)`` one. cuDNN's 3-D kernels for such shapes are much slower than its
2-D kernels, yet both are 2-D convolutions in disguise:

- spatial ``(1, kh, kw)``, temporal stride 1: a ``Conv2d`` over ``N * T`` frames;
- temporal ``(kt, 1, 1)``, spatial stride 1: a ``Conv2d`` with kernel ``(kt, 1)`` over a
  ``(T, H * W)`` plane.

In ``channels_last_3d`` memory (``N, T, H, W, C``) both reshapes are free views. Batch norms
are folded into the convolutions first (``torch.fx``), since a norm after a reshape can no
longer be folded by TorchScript's freezing.

Example:
    >>> import torch
    >>> from torchvision.models.video import r2plus1d_18
    >>> net = r2plus1d_18().eval()
    >>> fast = factorize(net)
    >>> x = torch.randn(1, 3, 8, 64, 64)
    >>> bool((fast(x) - net(x)).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


class SpatialConv(nn.Module):
    """A ``Conv3d`` with kernel ``(1, kh, kw)`` and temporal stride 1, as a ``Conv2d`` per frame."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if conv.kernel_size[0] != 1 or conv.stride[0] != 1 or conv.padding[0] != 0:
            raise ValueError(f"conv: expected kernel (1, kh, kw), temporal stride 1, no temporal padding, got {conv}")
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[1:], stride=conv.stride[1:],
                              padding=conv.padding[1:], dilation=conv.dilation[1:], groups=conv.groups,
                              bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[:, :, 0])  # (O, I, 1, kh, kw) -> (O, I, kh, kw)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        y = self.conv(x.transpose(1, 2).reshape(n * t, c, h, w))  # (N, C, T, H, W) -> (N*T, C, H, W)
        return y.reshape(n, t, *y.shape[1:]).transpose(1, 2)  # (N*T, C', H', W') -> (N, C', T, H', W')


class TemporalConv(nn.Module):
    """A ``Conv3d`` with kernel ``(kt, 1, 1)`` and spatial stride 1, as a ``Conv2d`` over ``(T, H*W)``."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        if k[1:] != (1, 1) or s[1:] != (1, 1) or p[1:] != (0, 0):
            raise ValueError(f"conv: expected kernel (kt, 1, 1), spatial stride 1, no spatial padding, got {conv}")
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, (k[0], 1), stride=(s[0], 1), padding=(p[0], 0),
                              dilation=(conv.dilation[0], 1), groups=conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[..., 0])  # (O, I, kt, 1, 1) -> (O, I, kt, 1)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        y = self.conv(x.reshape(n, c, t, h * w))  # (N, C, T, H, W) -> (N, C, T, H*W)
        return y.reshape(n, y.shape[1], y.shape[2], h, w)  # (N, C', T', H*W) -> (N, C', T', H, W)


def _replacement(conv: nn.Conv3d) -> nn.Module | None:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if conv.padding_mode != "zeros" or isinstance(p, str):
        return None
    if k[0] == 1 and s[0] == 1 and p[0] == 0 and k[1:] != (1, 1):
        return SpatialConv(conv)
    if k[1:] == (1, 1) and s[1:] == (1, 1) and p[1:] == (0, 0) and k[0] > 1:
        return TemporalConv(conv)
    return None


def channels_last(module: nn.Module) -> nn.Module:
    """Lay out every 5-D weight ``channels_last_3d`` and every 4-D one ``channels_last`` (in place)."""
    for p in module.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        elif p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return module


def factorize(module: nn.Module) -> nn.Module | None:
    """An equivalent copy of ``module`` (eval mode, same device and dtype) with its factorized 3-D
    convolutions as 2-D ones, batch norms folded; None when it has none or cannot be traced by ``torch.fx``."""
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.Conv3d) and _replacement(m) is not None for m in module.modules()):
        return None
    try:
        fused = fuse(copy.deepcopy(module).eval().float())  # conv + batch norm -> one conv
    except Exception as exc:  # noqa: BLE001 - not fx-traceable: keep the 3-D model
        logger.info("cannot fold batch norms of %s (%s); 3-D convolutions kept", type(module).__name__, exc)
        return None
    swapped = 0
    for name, sub in list(fused.named_modules()):
        if isinstance(sub, nn.Conv3d):
            new = _replacement(sub)
            if new is not None:
                owner, _, attr = name.rpartition(".")
                setattr(fused.get_submodule(owner) if owner else fused, attr, new)
                swapped += 1
    logger.info("%d factorized 3-D convolutions run as 2-D ones", swapped)
    param = next(module.parameters())
    return fused.to(param.device, param.dtype).eval()
