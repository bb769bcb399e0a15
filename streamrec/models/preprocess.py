"""Per-frame spatial preprocessing that matches torchvision's ``VideoClassification`` preset.

torchvision resizes (bilinear, ``antialias=False``) a uint8 clip to uint8, center-crops,
scales to [0, 1] and normalizes. Resize and crop are per frame, so streamrec does them once
per frame at capture time and keeps uint8 crops in the ring buffer (a quarter of the bytes
of float32). Scaling and normalizing are one multiply-add per value, done on a whole batch
of windows by :func:`normalize_batch`, on the classifier's device (on a GPU after a uint8
upload), or by :func:`normalize_crops` in NumPy for runtimes with their own thread pool.

Example:
    >>> import numpy as np
    >>> from streamrec.models.registry import model_spec
    >>> pre = FramePreprocessor(model_spec("r2plus1d_18"))
    >>> pre.resize_crop(np.zeros((240, 320, 3), np.uint8)).shape  # (H, W, C), uint8
    (112, 112, 3)
    >>> pre(np.zeros((240, 320, 3), np.uint8)).shape  # (C, H, W), float32, normalized
    (3, 112, 112)
"""

from __future__ import annotations

import functools
from typing import Sequence

import cv2
import numpy as np
import torch

from streamrec.models.spec import ModelSpec


def resized_size(height: int, width: int, resize: tuple[int, ...]) -> tuple[int, int]:
    """Output ``(H, W)`` of torchvision's ``F.resize(size=resize)`` for an input of that size."""
    if len(resize) == 2:
        return int(resize[0]), int(resize[1])
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = int(resize[0]), int(resize[0] * long / short)  # truncation, as torchvision
    return (new_short, new_long) if height <= width else (new_long, new_short)


def center_crop_box(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of torchvision's ``center_crop`` (rounding as torchvision does)."""
    ch, cw = crop
    if ch > height or cw > width:
        raise ValueError(f"crop: expected <= frame size {height}x{width}, got {ch}x{cw}")
    return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))


RESIZED_PIXELS_MAX = 1 << 24  # a resized frame larger than this is never made: only its centre crop is sampled


class FramePreprocessor:
    """Turns one RGB uint8 ``(H, W, 3)`` frame into a normalized float32 ``(C, H, W)`` frame.

    Also usable in two halves: :meth:`resize_crop` (uint8 out, for caching decoded clips)
    and :meth:`normalize`.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        scale, bias = affine(tuple(spec.mean), tuple(spec.std))
        self._scale = scale.reshape(1, 1, 3)
        self._bias = bias.reshape(1, 1, 3)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """Shape of a normalized frame ``(C, H, W)``."""
        return (3, *self.spec.crop)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Shape of a uint8 crop ``(H, W, C)``, as the ring buffer stores it."""
        return (*self.spec.crop, 3)

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """The preset's resize of one RGB uint8 ``(H, W, 3)`` frame (no crop)."""
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"frame: expected a uint8 (H, W, 3) NumPy array, got {type(frame).__name__}")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame: expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        rh, rw = resized_size(h, w, self.spec.resize)
        if (rh, rw) == (h, w):
            return frame
        # cv2's INTER_LINEAR uses half-pixel centres with no antialias filter, like
        # torchvision's bilinear with antialias=False: same sampling grid.
        return cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The preset's centre crop of a resized ``(h, w, 3)`` frame."""
        ch, cw = self.spec.crop
        top, left = center_crop_box(frame.shape[0], frame.shape[1], self.spec.crop)
        return frame[top : top + ch, left : left + cw]

    def resize_crop(self, frame: np.ndarray) -> np.ndarray:
        """Resize + centre crop of one RGB uint8 ``(H, W, 3)`` frame; uint8 ``(h, w, 3)`` out. A frame
        whose resized size would pass :data:`RESIZED_PIXELS_MAX` (a 16384 x 2 strip, resized by its
        short side to 256 x 2,097,152) has only the crop's pixels sampled, at the same points."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            return self.crop(self.resize(frame))  # which says what is wrong with it
        rh, rw = resized_size(*frame.shape[:2], self.spec.resize)
        h, w = frame.shape[:2]
        if rh * rw <= RESIZED_PIXELS_MAX:
            return self.crop(self.resize(frame))
        (ch, cw), (top, left) = self.spec.crop, center_crop_box(rh, rw, self.spec.crop)
        ys = ((np.arange(top, top + ch) + 0.5) * (h / rh) - 0.5).astype(np.float32)  # resize's half-pixel grid
        xs = ((np.arange(left, left + cw) + 0.5) * (w / rw) - 0.5).astype(np.float32)
        map_x, map_y = np.meshgrid(xs, ys)
        return cv2.remap(frame, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def normalize(self, crop: np.ndarray) -> np.ndarray:
        """uint8 ``(h, w, 3)`` -> normalized float32 ``(3, h, w)``."""
        out = crop.astype(np.float32) * self._scale + self._bias
        return np.ascontiguousarray(out.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.normalize(self.resize_crop(frame))

    def clip(self, frames: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Exactly these RGB uint8 frames -> model input ``(1, C, T, H, W)``."""
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"frames: expected T x H x W x 3 or a list of H x W x 3, got an array of shape {frames.shape}")
        if isinstance(frames, (str, bytes)) or not hasattr(frames, "__iter__"):
            raise TypeError(f"frames: expected RGB uint8 frames (T x H x W x 3, or a list of H x W x 3), "
                            f"got {type(frames).__name__}")
        crops = [self.resize_crop(f) for f in frames]
        if not crops:
            raise ValueError("frames: expected at least one frame, got none")
        return self.window(np.stack(crops))

    def window(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 crops ``(T, H, W, C)`` of one window -> normalized model input ``(1, C, T, H, W)``."""
        return normalize_batch(torch.from_numpy(np.ascontiguousarray(crops))[None], self.spec)


def batch_windows(windows: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 crops, one ``(T, H, W, C)`` array per window -> one uint8 tensor ``(B, T, H, W, C)``."""
    return torch.from_numpy(np.stack(windows))


def normalize_batch(crops: torch.Tensor, spec: ModelSpec, *, dtype: torch.dtype = torch.float32,
                    channels_last: bool = False) -> torch.Tensor:
    """uint8 crops ``(B, T, H, W, C)`` -> normalized ``(B, C, T, H, W)`` in ``dtype``, on their device.

    Computes ``(x / 255 - mean) / std`` in float32 (as torchvision does), then casts. With
    ``channels_last`` the result keeps the input's memory order (``channels_last_3d``, what
    the GPU path wants, with no copy for the permute); otherwise it is contiguous.

    Example:
        >>> from streamrec.models.registry import model_spec
        >>> x = normalize_batch(torch.full((2, 16, 112, 112, 3), 255, dtype=torch.uint8), model_spec("r3d_18"))
        >>> tuple(x.shape), round(float(x[0, 0, 0, 0, 0]), 4)  # (1 - 0.43216) / 0.22803
        ((2, 3, 16, 112, 112), 2.4902)
    """
    _check_crops(crops.dtype == torch.uint8, crops.dtype, crops.shape)
    scale, bias = _affine_on(tuple(spec.mean), tuple(spec.std), str(crops.device))
    x = crops.float() * scale + bias  # per channel: C is the last axis
    x = x.to(dtype).permute(0, 4, 1, 2, 3)  # (B, T, H, W, C) -> (B, C, T, H, W), a view
    return x if channels_last else x.contiguous()


def normalize_crops(crops: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """:func:`normalize_batch` in NumPy, in the calling thread: the same float32 values, bit for bit.

    For runtimes with their own thread pool (OpenVINO, ONNX Runtime): torch's pool, woken for
    this multiply-add, keeps spinning on the cores the runtime is about to use.

    Example:
        >>> from streamrec.models.registry import model_spec
        >>> x = normalize_crops(np.full((2, 16, 112, 112, 3), 255, np.uint8), model_spec("r3d_18"))
        >>> x.shape, x.dtype, round(float(x[0, 0, 0, 0, 0]), 4)
        ((2, 3, 16, 112, 112), dtype('float32'), 2.4902)
    """
    _check_crops(crops.dtype == np.uint8, crops.dtype, crops.shape)
    scale, bias = affine(tuple(spec.mean), tuple(spec.std))
    x = crops.astype(np.float32)
    x *= scale  # per channel: C is the last axis; in place, as it runs once per window on the hot path
    x += bias
    return np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))  # (B, T, H, W, C) -> (B, C, T, H, W)


def _check_crops(is_uint8: bool, dtype, shape) -> None:
    if not is_uint8 or len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"crops: expected uint8 (B, T, H, W, 3), got {dtype} {tuple(shape)}")


@functools.lru_cache(maxsize=16)
def affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(x / 255 - mean) / std == x * scale + bias``: float32 ``scale`` and ``bias`` per channel.

    Example:
        >>> scale, bias = affine((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> float(255 * scale[0] + bias[0])  # (1 - 0.5) / 0.25
        2.0
    """
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    scale, bias = (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)
    scale.flags.writeable = bias.flags.writeable = False  # cached: shared by every caller
    return scale, bias


@functools.lru_cache(maxsize=16)
def _affine_on(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`affine` as tensors on ``device``, made once per model and device (not copied to the GPU
    again for every batch)."""
    scale, bias = affine(mean, std)
    return torch.tensor(scale).to(device), torch.tensor(bias).to(device)
