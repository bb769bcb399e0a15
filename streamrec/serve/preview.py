"""Preview frames for the page: downscaled JPEGs with the camera's name in front.

Example:
    >>> import numpy as np
    >>> jpeg = encode_preview(np.zeros((480, 640, 3), np.uint8), 320)
    >>> jpeg[:2], frame_message("pool", b"\\xff\\xd8")
    (b'\\xff\\xd8', b'\\x04pool\\xff\\xd8')
"""

from __future__ import annotations

import struct

import cv2

from streamrec.config import ServeConfig


def preview_width(config: ServeConfig, cameras: int) -> int:
    """Preview width: ``display_width`` for one camera, at most 320 px for a dashboard of several."""
    return config.display_width if cameras == 1 else min(config.display_width, 320)


def frame_message(camera: str, jpeg: bytes) -> bytes:
    r"""A preview frame for the page: 1 byte name length, the camera name (UTF-8), then the JPEG.

    >>> frame_message("pool", b"\xff\xd8")
    b'\x04pool\xff\xd8'
    """
    tag = camera.encode()
    return struct.pack("B", len(tag)) + tag + jpeg


def encode_preview(rgb, width: int) -> bytes:
    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    return buf.tobytes() if ok else b""
