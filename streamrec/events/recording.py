"""Event clips and thumbnails, without decoding or encoding again.

Each camera's source puts its compressed video packets into a :class:`PacketRing`
(:meth:`Recorder.ring`). When an event starts, :meth:`Recorder.begin` starts a writer thread
that copies (remuxes) the packets from the last keyframe ``pre_seconds`` before the event on
into a fragmented MP4 and follows the ring as packets come in, until ``post_seconds`` after
:meth:`Recorder.end` (at most ``max_seconds`` in all). The clip is written as
``<folder>/<camera>/<event id>.mp4.part`` and, once finished and flushed to disk, renamed to
``<event id>.mp4``: a clip under its own name is always whole. A fragmented MP4 plays up to its
last complete fragment (one per keyframe), so the ``.part`` of a process that was killed while
writing becomes the clip when the next Recorder starts. A write error (a full disk) ends that
clip with one log line and a count, keeping its complete fragments; capture and inference never
wait on a clip. Thumbnails are written to a temporary file and renamed too (never truncated).
:meth:`Recorder.prune` deletes old clips and their events (``retention_days``, ``max_gb``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamrec.event_config import RecordingConfig
from streamrec.events.clipfiles import PART, ClipFolder, relative
from streamrec.events.store import EventStore
from streamrec.fsutil import atomic_write
from streamrec.live.packets import ClipStart, PacketRing, TappedPacket
from streamrec.live.sources import open_container
from streamrec.supervision import Deadline, Supervisor, describe

logger = logging.getLogger(__name__)

MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
POLL_S = 0.25  # a writer with nothing to write looks at its deadlines this often
GRACE_S = 2.0  # past its end (or max_seconds), a writer waits this long for a late packet
WALL_TIME_BASE = Fraction(1, 90000)  # the time base of a clip of packets that came without timestamps
JOIN_S = 5.0  # close(): how long it waits for its writers

OnDone = Callable[[str, "str | None", int], None]
FrameOf = Callable[[str], "np.ndarray | None"]


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
                if self._ends_before(p):
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
        return now >= first + self.max_seconds + GRACE_S or (self.stop_at is not None and now >= self.stop_at + GRACE_S)

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


class Recorder:
    """Clips and thumbnails of events, under ``config.folder``; see the module's docstring.
    ``on_done(event_id, clip, bytes)`` is called from the writer thread when a clip is finished
    (``clip`` relative to the folder; ``None`` when nothing could be written). ``frame_of(camera)``
    is the camera's newest RGB frame: the one at an event's peak score becomes its thumbnail."""

    def __init__(self, config: RecordingConfig, *, supervisor: Supervisor, clock: Callable[[], float] = time.time,
                 on_done: OnDone | None = None, frame_of: FrameOf = lambda camera: None) -> None:
        self.config = config
        self.folder = config.folder
        self.files = ClipFolder(config.folder)
        self.supervisor = supervisor
        self.clock = clock
        self.on_done = on_done
        self.frame_of = frame_of
        self._peaks: dict[str, np.ndarray] = {}  # event id -> its camera's frame at the event's peak score
        self._rings: dict[str, PacketRing] = {}
        self._writers: dict[str, tuple[ClipWriter, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._never = threading.Event()  # a writer catches its own errors: the supervisor never restarts it
        self._closed = False
        self._deleted: set[str] = set()  # events deleted: no clip or thumbnail of theirs is written any more
        self.clips_written = 0
        self.bytes_written = 0
        self.write_errors = 0
        self.thumbnails_written = 0

    def ring(self, camera: str) -> PacketRing:
        """The packet ring of ``camera`` (made on first use, when the clips a killed process was
        writing for it are recovered): give it to its capture thread."""
        with self._lock:
            if camera not in self._rings:
                self.files.recover_parts(camera)
                self._rings[camera] = PacketRing(int(self.config.packet_ring_mb * 2**20), self.config.pre_seconds,
                                                 clock=self.clock, name=camera)
            return self._rings[camera]

    def codec(self, camera: str) -> str | None:
        """The video codec of ``camera``'s clips (its newest stream's; ``None`` before one opened)."""
        with self._lock:
            ring = self._rings.get(camera)
        template = ring.template if ring is not None else None
        return template.codec if template is not None else None

    def begin(self, event_id: str, camera: str, start_ts: float) -> str | None:
        """Start the clip of an event that started at ``start_ts``; its path relative to the
        folder, or ``None`` when ``camera`` has no compressed packets to copy."""
        with self._lock:
            if self._closed or event_id in self._deleted:
                return None
            if event_id in self._writers:
                return relative(camera, event_id, ".mp4")
            ring = self._rings.get(camera)
        start = ring.clip_start(start_ts - self.config.pre_seconds) if ring is not None else None
        if start is None:
            return None
        rel = relative(camera, event_id, ".mp4")
        writer = ClipWriter(event_id, camera, ring, start, self.folder / rel, max_seconds=self.config.max_seconds,
                            clock=self.clock)
        thread = threading.Thread(target=self._write, args=(writer, rel), name=f"clip-{camera}", daemon=True)
        with self._lock:
            self._writers[event_id] = (writer, thread)
        thread.start()
        return rel

    def _write(self, writer: ClipWriter, rel: str) -> None:
        self.supervisor.run(f"clip-{writer.camera}", writer.run, self._never)
        size = writer.size() if writer.committed and not writer.discarded else 0
        with self._lock:
            self._writers.pop(writer.event_id, None)
            discarded = writer.discarded or writer.event_id in self._deleted
            self.clips_written += bool(size)
            self.bytes_written += size
            self.write_errors += writer.error is not None
        self.files.remove(writer.part)
        if not size or discarded:
            self.files.remove(writer.path)
        if discarded:
            return
        if self.on_done is not None:
            try:
                self.on_done(writer.event_id, rel if size else None, size)
            except Exception as exc:  # noqa: BLE001 - the caller's bug must not lose the other clips
                logger.error("clip %s: on_done failed: %s", writer.event_id, describe(exc))

    def peak(self, event_id: str, camera: str) -> None:
        """The event is at its peak score now: the camera's newest frame is its thumbnail-to-be."""
        frame = self.frame_of(camera)
        if frame is not None:
            with self._lock:
                if event_id not in self._deleted:
                    self._peaks[event_id] = frame

    def end(self, event_id: str, camera: str, end_ts: float) -> str | None:
        """The event ended at ``end_ts``: its clip goes on ``post_seconds`` more, and the frame of
        its peak is written as its thumbnail; that thumbnail's path relative to the folder
        (``None`` when there is none)."""
        with self._lock:
            entry = self._writers.get(event_id)
            frame = self._peaks.pop(event_id, None)
        if entry is not None:
            entry[0].stop_at = end_ts + self.config.post_seconds
        return self.thumbnail(event_id, camera, frame) if frame is not None else None

    def thumbnail(self, event_id: str, camera: str, rgb: np.ndarray) -> str | None:
        """Write ``rgb`` (uint8 H x W x 3) as the event's JPEG; its path relative to the folder
        (``None`` when it could not be written: logged and counted, or when the event was deleted)."""
        import cv2

        with self._lock:
            if event_id in self._deleted:
                return None
        rel = relative(camera, event_id, ".jpg")
        path = self.folder / rel
        try:
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                raise ValueError("JPEG encoding failed")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda fh: fh.write(jpeg.tobytes()))  # a full disk leaves no partial JPEG
        except Exception as exc:  # noqa: BLE001 - a full disk, a bad image: no thumbnail, labels go on
            with self._lock:
                self.write_errors += 1
            logger.error("thumbnail of event %s: cannot write %s: %s", event_id, path, describe(exc))
            return None
        with self._lock:
            self.thumbnails_written += 1
        return rel

    def discard(self, event_id: str, camera: str, timeout: float = JOIN_S) -> int:
        """The event was deleted: its clip stops (waiting ``timeout`` s at most for its writer),
        nothing more of it is written or reported, and its clip and thumbnail are removed; the
        bytes freed."""
        with self._lock:
            self._deleted.add(event_id)
            self._peaks.pop(event_id, None)
            entry = self._writers.get(event_id)
        if entry is not None:
            entry[0].discarded = True
            entry[0].finish_now.set()
            entry[1].join(timeout)
        return sum(self.files.remove(self.folder / relative(camera, event_id, suffix))
                   for suffix in (".mp4", ".mp4" + PART, ".jpg"))

    def prune(self, store: EventStore, now: float) -> int:
        """Delete clips, thumbnails and events older than ``retention_days``, then the oldest while
        the folder holds more than ``max_gb`` (not clips being written); how many events went."""
        with self._lock:
            active = set(self._writers)
        return self.files.prune(store, cutoff=now - self.config.retention_days * 86400,
                                max_bytes=self.config.max_gb * 2**30, active=active)

    def folder_bytes(self) -> int:
        """Bytes of the files in the cameras' folders."""
        return self.files.total_bytes()

    # -- state -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            rings = dict(self._rings)
            out: dict[str, Any] = {"clips_active": len(self._writers), "clips_written": self.clips_written,
                                   "bytes_written": self.bytes_written, "write_errors": self.write_errors,
                                   "thumbnails_written": self.thumbnails_written}
        out["rings"] = {cam: ring.stats() for cam, ring in rings.items()}
        return out

    def close(self, timeout: float = JOIN_S) -> None:
        """Finish the clips being written (each stays playable); wait ``timeout`` s in all for their writers. Idempotent."""
        with self._lock:
            self._closed = True
            entries = list(self._writers.values())
        for writer, _ in entries:
            writer.finish_now.set()
        deadline = Deadline(timeout)
        for writer, thread in entries:
            thread.join(deadline.left())
            if thread.is_alive():
                logger.warning("clip %s: its writer did not finish within %.0f s", writer.event_id, timeout)
