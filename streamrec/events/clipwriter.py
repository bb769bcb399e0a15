"""One event clip, remuxed from a camera's packet ring into a fragmented MP4 (see
:mod:`streamrec.events.recording`, whose :class:`~streamrec.events.recording.Recorder` runs one
:class:`ClipWriter` a clip, each in a thread of its own)."""

from __future__ import annotations

import logging
import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

from streamrec.events.clipfiles import PART
from streamrec.live.packets import ClipStart, PacketRing, TappedPacket
from streamrec.live.sources import open_container
from streamrec.supervision import describe

logger = logging.getLogger(__name__)

MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
POLL_S = 0.25  # a writer with nothing to write looks at its deadlines this often
GRACE_S = 2.0  # past its end (or max_seconds), a writer waits this long for a late packet
WALL_TIME_BASE = Fraction(1, 90000)  # the time base of a clip of packets that came without timestamps


class ClipWriter:
    """Copies the packets of ``ring`` from ``start.seq`` on into ``path`` (written as ``part``,
    renamed by :meth:`commit`): the body of a ``clip-<camera>`` thread (:meth:`run`)."""

    def __init__(self, event_id: str, camera: str, ring: PacketRing, start: ClipStart, path: Path, *,
                 max_seconds: float, clock: Callable[[], float]) -> None:
        self.event_id, self.camera, self.ring, self.start, self.path = event_id, camera, ring, start, path
        self.part = path.with_name(path.name + PART)
        self.max_seconds = max_seconds
        self.clock = clock
        self.begun = clock()
        # whatever the clock does (set back an hour, the packets' dates with it), a clip is written
        # for no longer than this (its dates alone would keep it open until they caught up); twice
        # max_seconds leaves a writer that lags behind its packets the time to catch up
        self.hard_end = time.monotonic() + 2 * max_seconds + GRACE_S
        self.stop_at: float | None = None  # end of the event + post_seconds, once known
        self.finish_now = threading.Event()  # close(): finish with what has come in
        self.discarded = False  # its event was deleted: the file goes, nothing is reported
        self.committed = False  # finished and renamed to ``path``
        self.packets = 0
        self.payload_bytes = 0
        self.error: str | None = None
        self._first_ts: float | None = None
        self._base: int | None = None  # dts of the first packet written: the clip's time 0
        self._last_dts: int | None = None
        self._shift = 0  # added to the source's times once they went back: the clip's times keep increasing
        self._max_pts: int | None = None  # the latest picture written (in the source's time base)
        self._whole = 0  # the file's size when its last complete fragment was written
        self.keyframes = 0  # written: each one after the first completed a fragment

    def run(self) -> None:
        out = None
        try:
            out = self._open()
            self._follow(out, out.streams.video[0])
        except Exception as exc:  # noqa: BLE001 - a full disk, a muxer refusing a packet: end this clip
            self._failed(exc)
        finally:
            self._close(out)
            if self.error is not None and self._whole:
                self._cut()
        self.committed = self.playable() and not self.discarded and self.commit()

    def _cut(self) -> None:
        """After a write error: the file back to its last complete fragment (it plays to its end)."""
        try:
            os.truncate(self.part, self._whole)
        except OSError:
            pass

    def commit(self) -> bool:
        """The finished ``part`` flushed and renamed to ``path`` (atomic); whether it was (a failure is
        the clip's error, logged and counted; ``part`` is left to the caller)."""
        try:
            fd = os.open(self.part, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.part, self.path)
            return True
        except OSError as exc:
            self._failed(exc)
            return False

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = open_container(str(self.part), mode="w", format="mp4", options=dict(MP4_OPTIONS))
        try:
            out.add_stream_from_template(self.start.template.stream)
        except Exception:
            out.close()
            raise
        return out

    def _follow(self, out, stream) -> None:
        """Write packets as they come until the clip's end, its generation's end or close() (which
        writes what the ring holds by then); a discarded clip stops at once."""
        seq = self.start.seq - 1
        while not self.discarded:
            finishing = self.finish_now.is_set()
            batch = self.ring.after(seq)
            if not batch:
                if finishing or self._overdue():
                    return
                self.ring.wait(seq, POLL_S)
                continue
            need_key = batch[0].seq != seq + 1  # the ring dropped packets this writer had not read
            for p in batch:
                seq = p.seq
                if self._ends_before(p) or time.monotonic() >= self.hard_end:
                    return
                if need_key and not p.keyframe:
                    continue
                need_key = False
                self._mux(out, stream, p)
            if finishing:  # close(): what the ring held is written
                return

    def _ends_before(self, p: TappedPacket) -> bool:
        """Whether the clip ends before ``p``: its source reconnected, or ``p`` is past the end and no
        B-frame shown before one written (it ends before a new reference frame, no picture missing)."""
        if p.generation != self.start.generation:
            logger.info("clip %s ends early: the source of camera %s reconnected", self.event_id, self.camera)
            return True
        if self._first_ts is None:
            self._first_ts = p.ts
        past = p.ts >= self._first_ts + self.max_seconds or (self.stop_at is not None and p.ts >= self.stop_at)
        return past and not (p.pts is not None and self._max_pts is not None and p.pts + self._shift < self._max_pts)

    def _overdue(self) -> bool:
        """No packet is coming: past the end (or max_seconds) by GRACE_S, the clip is finished."""
        now = self.clock()
        first = self.begun if self._first_ts is None else self._first_ts
        return (now >= first + self.max_seconds + GRACE_S or (self.stop_at is not None and now >= self.stop_at + GRACE_S)
                or time.monotonic() >= self.hard_end)

    def _mux(self, out, stream, p: TappedPacket) -> None:
        import av

        dts, pts, time_base = (p.dts if p.dts is not None else p.pts), p.pts, p.time_base
        if dts is None:
            time_base = WALL_TIME_BASE
            dts = pts = self._wall_dts(p)
        pts = (pts if pts is not None else dts) + self._shift
        dts += self._shift
        if self._last_dts is not None and dts <= self._last_dts:  # the source's clock went back (a reset):
            self._shift += self._last_dts + 1 - dts  # the clip's times go on from the last one, no packet lost
            pts, dts = pts + self._last_dts + 1 - dts, self._last_dts + 1
        if self._base is None:
            self._base = dts
        q = av.Packet(p.data)
        q.dts = dts - self._base
        q.pts = pts - self._base
        q.time_base = time_base
        q.is_keyframe = p.keyframe
        q.stream = stream
        out.mux(q)
        if p.keyframe:  # the muxer wrote the previous fragment, whole, and holds this one in memory
            self._whole = self.size(self.part)
            self.keyframes += 1
        self._last_dts = dts
        if p.pts is not None:
            self._max_pts = pts if self._max_pts is None else max(self._max_pts, pts)
        self.packets += 1
        self.payload_bytes += p.size

    def _wall_dts(self, p: TappedPacket) -> int:
        """A packet without timestamps (a raw stream: an .h264 file, some HTTP cameras): its
        arrival in the clip, in :data:`WALL_TIME_BASE`, after the packet before it."""
        wall = round((p.ts - (self._first_ts or p.ts)) / WALL_TIME_BASE)
        return wall if self._last_dts is None else max(wall, self._last_dts + 1)

    def _failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = describe(exc)
            logger.error("clip %s of camera %s: cannot write %s: %s; the clip ends here", self.event_id, self.camera,
                         self.path, self.error)

    def _close(self, out) -> None:
        if out is None:
            return
        try:
            out.close()
        except Exception as exc:  # noqa: BLE001 - the last fragment could not be written
            self._failed(exc)

    def playable(self) -> bool:
        """Whether the file has a picture to show: finished, or cut back to a complete fragment."""
        return self.packets > 0 and (self.error is None or self.keyframes > 1)

    def size(self, path: Path | None = None) -> int:
        """Bytes of ``path`` (default: the finished clip)."""
        try:
            return (path or self.path).stat().st_size
        except OSError:
            return 0
