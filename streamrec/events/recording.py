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
from collections import OrderedDict
import threading
import time
from typing import Any, Callable

import numpy as np

from streamrec.event_config import RecordingConfig
from streamrec.events.clipfiles import PART, ClipFolder, relative
from streamrec.events.clipwriter import ClipWriter
from streamrec.events.store import EventStore
from streamrec.fsutil import atomic_write
from streamrec.live.packets import PacketRing
from streamrec.supervision import RECENT_ERROR_S, Deadline, Supervisor, describe

logger = logging.getLogger(__name__)
DELETED_KEPT = 1000  # deleted event ids remembered, newest first, against a late write of their files

JOIN_S = 5.0  # close(): how long it waits for its writers

OnDone = Callable[[str, "str | None", int], None]
FrameOf = Callable[[str], "np.ndarray | None"]


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
        self._recovered: set[str] = set()  # cameras whose clips left by a killed process were recovered
        self._recovered_all = False  # those of every camera (recover_all)
        # events deleted: no clip or thumbnail of theirs is written any more (the newest DELETED_KEPT:
        # a late call for an id comes within seconds of its delete, and ids are never reused)
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self.clips_written = 0
        self.bytes_written = 0
        self.write_errors = 0
        self.thumbnails_written = 0
        self.last_error: tuple[float, str] | None = None  # (when, why) of the newest clip or thumbnail write that failed

    def ring(self, camera: str) -> PacketRing:
        """The packet ring of ``camera`` (made on first use, when the clips a killed process was
        writing for it are recovered): give it to its capture thread."""
        with self._lock:
            if camera not in self._rings:
                # once: a camera removed and added again has clips being written
                if not self._recovered_all and camera not in self._recovered:
                    self.files.recover_parts(camera)
                    self._recovered.add(camera)
                self._rings[camera] = PacketRing(int(self.config.packet_ring_mb * 2**20), self.config.pre_seconds,
                                                 clock=self.clock, name=camera)
            return self._rings[camera]

    def recover_all(self) -> int:
        """At the start of the folder's only writer: the clips a killed process left, of every
        camera (one no longer configured or watched by a rule too, whose ring is never made)."""
        with self._lock:
            self._recovered_all = True
            return self.files.recover_parts(None)

    def drop_ring(self, camera: str) -> None:
        """Forget ``camera``'s ring (removed): a writer that reads it keeps its own reference."""
        with self._lock:
            self._rings.pop(camera, None)

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
            if writer.error is not None:
                self.last_error = (self.clock(), f"clip of event {writer.event_id}: {writer.error}")
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
                self.last_error = (self.clock(), f"thumbnail of event {event_id}: {describe(exc)}")
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
            self._deleted[event_id] = None
            while len(self._deleted) > DELETED_KEPT:
                self._deleted.popitem(last=False)
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

    def problems(self, now: float | None = None) -> list[str]:
        """What ``/healthz`` says of the recording: a clip or thumbnail that could not be written
        in the last :data:`RECENT_ERROR_S` seconds (a full disk), with why."""
        now = self.clock() if now is None else now
        with self._lock:
            last, count = self.last_error, self.write_errors
        if last is None or now - last[0] > RECENT_ERROR_S:
            return []
        return [f"recording: {count} clip or thumbnail write(s) failed, the last {now - last[0]:.0f} s ago: {last[1]}"]

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
