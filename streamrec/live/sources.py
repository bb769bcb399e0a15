"""Video sources: webcam index, network URL (RTSP/HTTP) or file, as RGB frames with times.

A source yields ``(rgb, pts)`` pairs: ``rgb`` is a uint8 ``(H, W, 3)`` array decoded once,
``pts`` the frame's presentation time in seconds from the stream (``None`` for a webcam).

Example:
    >>> spec = SourceSpec.parse("rtsp://10.0.0.5/stream1")
    >>> spec.kind, spec.is_live
    ('network', True)
    >>> SourceSpec.parse("0").kind
    'webcam'
"""

from __future__ import annotations

import logging
import os
import time
from urllib.parse import urlsplit
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from streamrec.config import CameraConfig
from streamrec.errors import SourceError
from streamrec.validate import not_a_file
from streamrec.live.decoded import FrameTimes, upright
from streamrec.redact import SECRET_QUERY_KEYS, control_characters, mask_credentials, mask_quoted, printable  # noqa: F401

logger = logging.getLogger(__name__)

DISPLAY_NAME_MAX = 300  # characters of a source's name in logs, pages and errors
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
MAX_WEBCAM_INDEX = 2**31 - 1  # OpenCV takes a C int
PICTURE_TIMEOUTS = 2  # stall timeouts of packets that decode into no picture (past the first keyframe's wait) before a reopen
# Frames up to this size are decoded in the capture thread alone (see decoder_threading).
SINGLE_THREAD_MAX_PIXELS = 640 * 480


def _rgb_options() -> dict[str, int]:
    """Options for converting a decoded frame to RGB in the calling thread.

    PyAV 17 and later convert with ``sws_scale_frame``, which by default (``threads=0``) starts
    a pool of one thread per core for every frame and ends it after: threads created and
    joined for every frame of every camera, each woken on the cores the model is running on,
    for no gain (no faster in wall time, more CPU). Older PyAV converts
    in the calling thread and has no such option (tests/test_live_source.py counts the threads).
    """
    import av

    return {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


def open_container(target: str, **kwargs: Any):
    """PyAV's ``open(target, **kwargs)`` for reading, with metadata that is not UTF-8 (tags written
    by old muxers and cameras, as in HMDB51) decoded with replacement characters: PyAV decodes
    every tag strictly by default, and one bad byte is a ``UnicodeDecodeError`` from ``open``.
    Every place that opens media goes through here (tests/test_hardening_media.py checks)."""
    import av

    return av.open(target, metadata_errors="replace", **kwargs)


@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from, and how to open it."""

    target: str
    kind: str  # "webcam" | "network" | "file"
    rtsp_transport: str = "tcp"
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in ("webcam", "network", "file"):
            raise ValueError(f"kind: expected webcam, network or file, got {self.kind!r}")
        if self.rtsp_transport not in ("tcp", "udp"):
            raise SourceError(f"--rtsp-transport: expected tcp or udp, got {self.rtsp_transport!r}")
        if self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise SourceError(f"timeouts: expected > 0 s, got open {self.open_timeout_s}, read {self.read_timeout_s}")

    @classmethod
    def parse(cls, source: str | int, **kw) -> "SourceSpec":
        text = str(source).strip()
        if not text:
            raise SourceError("--source: expected a webcam index, a URL or a video file, got an empty string")
        if text.isascii() and text.isdigit():  # not "²": str.isdigit() takes it, int() does not
            if len(text) > 10 or int(text) > MAX_WEBCAM_INDEX:  # never converted when longer than an index can be
                shown = text if len(text) <= 40 else text[:40] + "..."
                raise SourceError(f"--source: expected a webcam index 0..{MAX_WEBCAM_INDEX}, got {shown}")
            return cls(text, "webcam", **kw)
        if text.lower().startswith(NETWORK_SCHEMES):
            if control_characters(text):  # a URL holds none; it is logged and shown on one line
                raise SourceError(f"--source: expected a URL without control characters or line breaks, "
                                  f"got {mask_credentials(text)!r} ({control_characters(text)[0]})")
            try:
                host = urlsplit(text).hostname
            except ValueError:  # "rtsp://[::1": a bracket never closed
                host = None
            if not host:
                raise SourceError(f"--source: expected a URL with a host (rtsp://HOST/path), got "
                                  f"{printable(mask_credentials(text), limit=80)!r}")
            return cls(text, "network", **kw)
        if "://" in text:
            raise SourceError(f"--source: expected rtsp://, rtsps://, http:// or https://, got {mask_credentials(text)!r}")
        return cls(text, "file", **kw)

    @classmethod
    def of_camera(cls, cam: CameraConfig) -> "SourceSpec":
        """How to open a configured camera's source (unset timeouts take their defaults)."""
        return cls.parse(cam.source, rtsp_transport=cam.rtsp_transport or "tcp",
                         open_timeout_s=cam.open_timeout or 10.0, read_timeout_s=cam.stall_timeout or 5.0)

    @property
    def is_live(self) -> bool:
        return self.kind != "file"

    @property
    def display_name(self) -> str:
        """The target with any password in a URL hidden and on one line, for logs and pages (cut
        after :data:`DISPLAY_NAME_MAX` characters: a path of megabytes is not an error line)."""
        return printable(mask_credentials(self.target), limit=DISPLAY_NAME_MAX)


class Source:
    """An opened source. Iterate :meth:`frames`; call :meth:`close` (idempotent) when done."""

    fps: float | None = None
    size: tuple[int, int] | None = None  # (W, H)
    # time.perf_counter() when the data of the newest frame came in (None: not known). The
    # capture dates a live frame by it, so decoding and colour conversion count as latency.
    arrived: float | None = None
    # a streamrec.live.packets.PacketRing: where a source that demuxes puts its compressed video
    # packets (event clips); others ignore it
    packet_ring: Any = None

    def frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def named_as(option: str) -> Iterator[None]:
    """Source errors raised inside name ``option``, the argument that gave the file, instead
    of serve's ``--source``.

    Example:
        >>> try:
        ...     with named_as("--clips"):
        ...         PyAVSource(SourceSpec.parse("/no/such/clip.mp4"))
        ... except SourceError as exc:
        ...     print(exc)
        --clips: file not found: /no/such/clip.mp4
    """
    try:
        yield
    except SourceError as exc:
        message = str(exc)
        if not message.startswith("--source:"):
            raise
        raise SourceError(f"{option}:{message.removeprefix('--source:')}") from None


def check_file(spec: SourceSpec) -> None:
    """A :class:`SourceError` unless ``spec.target`` names an existing file (a name the system
    refuses, too long or otherwise, is one that does not exist)."""
    try:
        path = Path(spec.target)
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, a NUL byte: no such file can exist
        raise SourceError(f"--source: file not found: {spec.display_name} ({exc.__class__.__name__})") from None
    if not exists:
        if path.is_symlink():  # one that loops, or names nothing
            raise SourceError(f"--source: {spec.display_name} is a symbolic link that never reaches a file")
        raise SourceError(f"--source: file not found: {spec.display_name}")
    if is_dir:
        raise SourceError(f"--source: expected a video file, got a directory: {spec.display_name}")
    if not path.is_file():  # a FIFO, a socket, a device: reading one may never end
        raise SourceError(f"--source: expected a video file, got {spec.display_name} ({not_a_file(path)})")


class PyAVSource(Source):
    """A file or network stream decoded by PyAV (FFmpeg), with open and read timeouts."""

    def __init__(self, spec: SourceSpec, *, packet_ring: Any = None) -> None:
        import av

        self.spec = spec
        self.packet_ring = packet_ring
        self.decode_errors = 0
        options = {}
        if spec.kind == "network":
            if spec.target.lower().startswith(("rtsp://", "rtsps://")):
                options["rtsp_transport"] = spec.rtsp_transport
        else:
            check_file(spec)
        try:
            self._container = open_container(
                spec.target, options=options, timeout=(spec.open_timeout_s, spec.read_timeout_s)
            )
        except (av.error.FFmpegError, OSError, UnicodeError) as exc:
            if spec.kind != "network":
                what = "not a readable video file"
            elif isinstance(exc, av.error.InvalidDataError):  # it answered, with something else than video
                what = "not a video stream at"
            else:
                what = "cannot connect to"
            raise SourceError(f"--source: {what} {spec.display_name}: {printable(mask_quoted(_av_reason(exc), spec.target))}") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"--source: {spec.display_name} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type, threads = decoder_threading(
            self._stream.codec_context.width, self._stream.codec_context.height, live=spec.is_live)
        if threads:
            self._stream.codec_context.thread_count = threads
        self.packets = 0  # data packets read so far (with frames yielded: what the decoder holds)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.size = (self._stream.codec_context.width, self._stream.codec_context.height)
        self._closed = False

    @property
    def decoder_threads(self) -> tuple[int, str]:
        """The decoder's thread count and threading kind (``"NONE"``, ``"SLICE"``, ``"FRAME"``, ``"AUTO"``)."""
        return self._stream.codec_context.thread_count, str(self._stream.thread_type)
    def frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        import av

        rgb = _rgb_options()
        tap = self.packet_ring
        if tap is not None:
            tap.new_stream(self._stream)
        times = FrameTimes(self.fps, self.spec.display_name)
        video_at = pictured_at = time.monotonic()  # the last video packet, the last picture decoded from one
        errors_then = self.decode_errors
        # every stream's packets come back here (FFmpeg's read timeout is reset by each of them, and
        # its own filtering would drop audio without returning): a live stream whose video stopped
        # while its audio goes on is a stall, as a silent one is
        for packet in self._container.demux() if self.spec.is_live else self._container.demux(self._stream):
            if packet.stream.index != self._stream.index:
                if time.monotonic() - video_at > self.spec.read_timeout_s:
                    raise SourceError(f"{self.spec.display_name}: no video for {self.spec.read_timeout_s:g} s "
                                      "while its other streams go on (stall_timeout)")
                continue
            video_at = time.monotonic()
            self.packets += packet.size > 0  # not the empty packet that flushes the decoder at the end
            arrived = time.perf_counter()
            if tap is not None and packet.size:
                tap.push(packet)  # compressed, before decoding: copied as is into event clips
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError as exc:  # a corrupt packet: count, skip, go on
                self.decode_errors += 1
                logger.debug("decode error in %s: %s", self.spec.display_name, exc)
                decoded = []
            if decoded:
                pictured_at, errors_then = time.monotonic(), self.decode_errors
            elif self.spec.is_live and self.decode_errors > errors_then \
                    and time.monotonic() - pictured_at > PICTURE_TIMEOUTS * self.spec.read_timeout_s:
                raise SourceError(f"{self.spec.display_name}: packets arrive but none decodes into a picture "
                                  f"({self.decode_errors - errors_then} decode errors in "
                                  f"{time.monotonic() - pictured_at:.0f} s): opened again")
            for frame in decoded:
                pts = times.of(frame.time)
                self.arrived = arrived
                yield upright(frame.to_ndarray(format="rgb24", **rgb), getattr(frame, "rotation", 0)), pts

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


class WebcamSource(Source):
    """A local camera through OpenCV.

    ``device`` opens the capture for a camera index (``cv2.VideoCapture``); anything with
    OpenCV's capture interface will do (the tests give it ``cv2.VideoCapture`` on a file)."""

    def __init__(self, spec: SourceSpec, *, device: Callable[[int], Any] | None = None) -> None:
        import cv2

        self.spec = spec
        self.decode_errors = 0
        # OpenCV logs its own WARN lines for a missing camera (one per backend it tries, on
        # every reconnect); the SourceError below says it once, in streamrec's words
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._cap = (device or cv2.VideoCapture)(int(spec.target))
        except cv2.error as exc:  # an index OpenCV refuses
            raise SourceError(f"--source: cannot open webcam {spec.target}: {str(exc).strip().splitlines()[0]}") from None
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"--source: cannot open webcam {spec.target} (no such device, or it is busy)")
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        self.size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self._closed = False

    def frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        import cv2

        while True:
            ok = self._cap.grab()  # read() is grab() + retrieve(): the frame is dated in between
            self.arrived = time.perf_counter()
            ok, bgr = self._cap.retrieve() if ok else (False, None)
            if not ok:
                raise SourceError(f"webcam {self.spec.target}: read failed (unplugged?)")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cap.release()


def decoder_threading(width: int, height: int, *, live: bool) -> tuple[str, int]:
    """FFmpeg's threading for a stream of ``width`` x ``height``: ``(thread_type, thread_count)``,
    a count of 0 meaning FFmpeg's own choice (one thread per core, plus one).

    * Small frames (up to :data:`SINGLE_THREAD_MAX_PIXELS`): one thread. Handing a 340x256
      frame to another thread costs about what decoding it does, and every decoder starts its
      own threads: 64 cameras on a 16-core machine started 64 x 17. (A size not known
      when the stream opens counts as large.)
    * Larger live streams: slice threading. Frame threading keeps up to (threads - 1) frames
      inside the decoder, on a 2-core machine 1-2 frame periods (up to 67 ms at 30 fps) before
      a frame is even seen and dated; slice threading splits each frame and holds none back.
    * Larger files: frame + slice threading. Files are paced by their own timestamps, so
      frames held in the decoder cost no latency.

    Example:
        >>> decoder_threading(340, 256, live=False), decoder_threading(1920, 1080, live=True)
        (('SLICE', 1), ('SLICE', 0))
    """
    if 0 < width * height <= SINGLE_THREAD_MAX_PIXELS:  # 0: size not known before the first frame
        return "SLICE", 1
    return ("SLICE" if live else "AUTO"), 0


def open_source(spec: SourceSpec, *, packet_ring: Any = None) -> Source:
    """Open ``spec``; raises :class:`SourceError` with a one-line reason when it cannot.
    ``packet_ring`` receives a PyAV source's compressed video packets (a webcam has none)."""
    if spec.kind == "webcam":
        return WebcamSource(spec)
    return PyAVSource(spec, packet_ring=packet_ring)


def _av_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if os.sep in text else text.strip()
