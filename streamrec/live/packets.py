"""A camera's recent COMPRESSED video packets, as the source demuxed them, for event clips that
are remuxed (copied into MP4) instead of decoded and encoded again.

:class:`PacketRing` keeps each packet's payload (one ``bytes`` copy, so that it outlives the
source's container), its ``pts``/``dts``/``time_base``, whether it is a keyframe, and its
wall-clock arrival time (``time.time()``: the clock the capture dates frames by). It is bounded
in bytes: the oldest packets go first, a whole group of pictures at a time (a packet before the
first keyframe cannot be decoded), and the drops are counted. Each (re)opened source starts a new
*generation* with the stream's codec parameters (:class:`StreamTemplate`): a clip never mixes
packets of two stream configurations. Packets that come with a ``pts`` but no ``dts`` (the first
ones of a Matroska stream with B-frames) are held back until a packet with a ``dts`` comes, and
get decode times before it, one frame apart, in the order they came: no packet is lost and the
decode times stay increasing.

Example:
    >>> import av
    >>> from fractions import Fraction
    >>> ring = PacketRing(max_bytes=250, keep_s=1.0, clock=lambda: 10.0)
    >>> for i in range(4):
    ...     p = av.Packet(bytes(100))
    ...     p.pts = p.dts = i
    ...     p.time_base, p.is_keyframe = Fraction(1, 30), i % 2 == 0
    ...     ring.push(p)
    >>> [p.pts for p in ring.after(-1)], ring.total_bytes, ring.dropped_packets
    ([2, 3], 200, 2)
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Callable

from streamrec.live.sources import open_container

logger = logging.getLogger(__name__)

MAX_UNTIMED = 32  # packets with a pts and no dts held back for a dts at most (more: they go in without one)
# the codecs a browser's <video> plays from an MP4; a clip of another (HEVC, MJPEG, MPEG-4 Part 2)
# plays in a desktop player (VLC, mpv) and the page offers it as a download
PLAYS_IN_BROWSERS = ("h264", "vp9", "av1")


@dataclass(frozen=True, slots=True)
class TappedPacket:
    """One compressed packet of the ring. ``seq`` numbers the ring's packets from 0, in order."""

    seq: int
    generation: int
    data: bytes
    pts: int | None
    dts: int | None
    time_base: Fraction | None
    keyframe: bool
    ts: float  # wall clock (time.time()) when it came in

    @property
    def size(self) -> int:
        return len(self.data)


class StreamTemplate:
    """The codec parameters of a source's video stream, kept valid after the source closes:
    ``stream`` is a copy, in an MP4 container in memory that is never written, to give
    ``output.add_stream_from_template(template.stream)``."""

    def __init__(self, stream: Any) -> None:
        self._holder = open_container(io.BytesIO(), mode="w", format="mp4")  # ValueError: a codec MP4 cannot hold
        self.stream = self._holder.add_stream_from_template(stream)
        ctx = stream.codec_context
        self.codec = ctx.name
        self.width, self.height = ctx.width, ctx.height
        self.time_base = stream.time_base


def frame_ticks(stream: Any) -> int:
    """One frame of ``stream`` in its time base (its average or guessed frame rate; 1 when unknown)."""
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
    tb = getattr(stream, "time_base", None)
    try:
        return max(1, round(1 / (Fraction(rate) * Fraction(tb))))
    except (TypeError, ValueError, ZeroDivisionError):
        return 1


@dataclass(frozen=True)
class ClipStart:
    """A clip's first packet (``seq``), its generation and that generation's codec parameters."""

    seq: int
    generation: int
    template: StreamTemplate


class PacketRing:
    """Compressed packets of one camera, at most ``max_bytes`` of payload; ``keep_s``: the
    seconds back from the newest keyframe a clip's start needs (a warning, once, when the bytes
    cannot hold them). A source calls :meth:`new_stream` when it opens, then :meth:`push` for each
    demuxed packet; clip writers read with :meth:`after` and :meth:`wait`. Thread-safe; a push
    only appends and trims under a short lock."""

    def __init__(self, max_bytes: int, keep_s: float = 0.0, *, clock: Callable[[], float] = time.time,
                 name: str = "") -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: expected > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.keep_s = float(keep_s)
        self.clock = clock
        self.name = name
        self._packets: deque[TappedPacket] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.total_bytes = 0
        self.dropped_packets = 0
        self.dropped_bytes = 0
        self.generation = 0
        self.template: StreamTemplate | None = None
        self.template_error: str | None = None  # why the newest stream cannot be remuxed into MP4
        self._seq = 0
        self._short_warned = False
        self._untimed: list[TappedPacket] = []  # held back for a dts (see the module's docstring)
        self._frame_ticks = 1  # one frame in the stream's time base (the decode times given to those)
        self._last_dts: int | None = None
        self._hold = True  # False once MAX_UNTIMED came without a dts: this stream gives none
        self._warned_codecs: set[str] = set()

    # -- the source's side -------------------------------------------------------------
    def new_stream(self, stream: Any) -> int:
        """A source (re)opened ``stream`` (a PyAV video stream, still open): its packets form a
        new generation. Returns the generation."""
        try:
            template, error = StreamTemplate(stream), None
        except Exception as exc:  # noqa: BLE001 - a codec MP4 cannot hold, a stream PyAV cannot copy
            template, error = None, f"{type(exc).__name__}: {exc}"
            logger.warning("camera %s: clips cannot be copied from this stream (%s)", self.name or "?", error)
        with self._cond:
            self._release_untimed(None)
            self.generation += 1
            self.template, self.template_error = template, error
            self._frame_ticks, self._last_dts, self._hold = frame_ticks(stream), None, True
            codec = template.codec if template is not None else None
        if codec is not None and codec not in PLAYS_IN_BROWSERS and codec not in self._warned_codecs:
            self._warned_codecs.add(codec)
            logger.warning("camera %s: its video is %s: event clips are recorded as they come, but browsers do not "
                           "play %s (they play %s); the page offers its clips as downloads (VLC and mpv play them)",
                           self.name or "?", codec, codec, ", ".join(PLAYS_IN_BROWSERS))
        return self.generation

    def push(self, packet: Any, ts: float | None = None) -> None:
        """Append a demuxed packet (a PyAV ``Packet``; an empty one is ignored), dated ``ts``
        (default: now on the ring's clock)."""
        data = bytes(packet)
        if not data:
            return
        ts = self.clock() if ts is None else ts
        with self._cond:
            entry = TappedPacket(-1, self.generation, data, packet.pts, packet.dts, packet.time_base,
                                 bool(packet.is_keyframe), ts)
            if entry.dts is None and entry.pts is not None and self._hold:
                if len(self._untimed) < MAX_UNTIMED:
                    self._untimed.append(entry)  # its decode time comes from the next packet that has one
                    return
                self._hold = False
            self._release_untimed(entry.dts)
            self._add(entry)
            self._cond.notify_all()

    def _release_untimed(self, dts: int | None) -> None:
        """The packets held back for a decode time go in, before one with decode time ``dts``:
        one frame apart up to it (closer when the decode time before them leaves less room), or
        with none when ``dts`` is ``None`` (lock held)."""
        held, self._untimed = self._untimed, []
        n = len(held)
        step = self._frame_ticks
        if dts is not None and self._last_dts is not None and n and dts - n * step <= self._last_dts:
            step = (dts - self._last_dts - 1) // n
        for i, entry in enumerate(held):
            derived = dts - (n - i) * step if dts is not None and step > 0 else None
            if derived is not None and entry.pts is not None:
                derived = min(derived, entry.pts)
            self._add(replace(entry, dts=derived))

    def _add(self, entry: TappedPacket) -> None:
        """Number ``entry`` and append it (lock held)."""
        entry = replace(entry, seq=self._seq)
        self._seq += 1
        if entry.dts is not None:
            self._last_dts = entry.dts
        if not self._packets and not entry.keyframe:  # nothing to decode it from
            self._drop(entry)
            return
        self._packets.append(entry)
        self.total_bytes += entry.size
        if self.total_bytes > self.max_bytes:
            self._trim()

    def _drop(self, entry: TappedPacket) -> None:
        self.dropped_packets += 1
        self.dropped_bytes += entry.size

    def _trim(self) -> None:
        """Drop from the front until under ``max_bytes`` and the front is a keyframe (lock held)."""
        q = self._packets
        while q and (self.total_bytes > self.max_bytes or not q[0].keyframe):
            gone = q.popleft()
            self.total_bytes -= gone.size
            self._drop(gone)
        if not self._short_warned and q and q[-1].ts - q[0].ts < self.keep_s:
            self._short_warned = True
            logger.warning("camera %s: the packet ring (%.1f MiB) holds %.1f s, less than the %.1f s a clip "
                           "needs before its event; raise [recording] packet_ring_mb", self.name or "?",
                           self.max_bytes / 2**20, q[-1].ts - q[0].ts, self.keep_s)

    def clear(self) -> None:
        with self._cond:
            self._packets.clear()
            self._untimed.clear()
            self.total_bytes = 0

    # -- the clip writers' side ----------------------------------------------------------
    def clip_start(self, from_ts: float) -> ClipStart | None:
        """Where a clip of the newest generation starts: its last keyframe at or before
        ``from_ts`` (else its oldest keyframe held); ``None`` when the ring holds no packet of
        it or its stream cannot go into MP4."""
        with self._cond:
            found = None
            for p in reversed(self._packets):
                if p.generation != self.generation:
                    break
                if p.keyframe:
                    found = p.seq
                    if p.ts <= from_ts:
                        break
            if found is None or self.template is None:
                return None
            return ClipStart(found, self.generation, self.template)

    def after(self, seq: int, limit: int = 256) -> list[TappedPacket]:
        """Up to ``limit`` packets held with a ``seq`` above ``seq``, oldest first."""
        with self._cond:
            q = self._packets
            if not q or q[-1].seq <= seq:
                return []
            start = max(0, seq + 1 - q[0].seq)
            return [q[i] for i in range(start, min(len(q), start + limit))]

    def wait(self, seq: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a packet above ``seq``; whether one is there."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._packets) and self._packets[-1].seq > seq, timeout)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            q = self._packets
            return {"bytes": self.total_bytes, "packets": len(q), "seconds": round(q[-1].ts - q[0].ts, 3) if q else 0.0,
                    "dropped_packets": self.dropped_packets, "dropped_bytes": self.dropped_bytes,
                    "generation": self.generation}
