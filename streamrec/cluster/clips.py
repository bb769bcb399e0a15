"""Event clips in a cluster: written on the camera nodes, into a folder every node shares.

A camera's compressed packets never leave its node. Each capture actor keeps the camera's
packet ring and a :class:`~streamrec.events.recording.Recorder` (:class:`CameraClips`); the
driver's :class:`ClusterClips` stands in for the Recorder of the driver's
:class:`~streamrec.events.manager.EventManager`: it tells the camera's actor when an event
begins, peaks and ends (calls that return at once: the driver never waits on a clip), and a
``cluster-clips`` thread collects what the actors finished (clips, thumbnails, ring stats)
once every :data:`POLL_S`. The driver serves, deletes and prunes the files, so
``recording.dir`` must be one folder seen at the same path by every camera node and the
driver (an NFS or SMB mount on several machines): :func:`write_probe` and :func:`check_shared`
prove it at start.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from streamrec.errors import StreamrecError
from streamrec.event_config import RecordingConfig
from streamrec.events.clipfiles import ClipFolder, relative
from streamrec.events.recording import Recorder
from streamrec.events.store import EventStore
from streamrec.supervision import Supervisor, describe

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often the driver collects the actors' finished clips and ring stats
REPLY_S = 2.0  # how long a poll waits for an actor's answer (a slow one answers at the next poll)
CLOSE_S = 10.0  # close(): how long it waits for the actors' last reports
COUNTS = ("clips_written", "bytes_written", "write_errors", "thumbnails_written")

Report = tuple  # ("clip", event id, clip or None, bytes) | ("thumbnail", event id, thumbnail)


def probe_name(token: str) -> str:
    return f".streamrec-probe-{token}"


def write_probe(folder: Path, token: str, node: str) -> None:
    """On a camera node: write ``node`` into the probe file ``token`` in ``folder``
    (:class:`StreamrecError` naming the folder and node when it cannot)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / probe_name(token)).write_text(node)
    except OSError as exc:
        raise StreamrecError(f"[recording] dir: expected a folder writable on camera node {node}, "
                             f"got {str(folder)!r} ({describe(exc)})") from None


def remove_probes(folder: Path, tokens: Iterable[str]) -> None:
    """Remove the probe files ``tokens`` from ``folder`` (those this machine sees)."""
    for token in tokens:
        try:
            (folder / probe_name(token)).unlink(missing_ok=True)
        except OSError:  # not a folder, not writable: nothing was written there either
            pass


def check_shared(folder: Path, probes: dict[str, str], node_of: Callable[[str], str]) -> None:
    """On the driver: the probe file each camera's actor wrote (``{camera: token}``) must be in
    ``folder`` here too, else that camera's node writes clips where the driver cannot serve
    them (``node_of(camera)`` names its node in the error). The probes are removed either way."""
    missing = []
    for camera, token in probes.items():
        path = folder / probe_name(token)
        try:
            path.unlink()
        except OSError:
            missing.append(f"{camera} (node {node_of(camera)[:12]})")
    if missing:
        raise StreamrecError(f"[recording] dir: expected one folder shared by the driver and every camera node "
                             f"(an NFS or SMB mount at the same path), got {str(folder)!r} where the files written "
                             f"by camera {', '.join(missing)} do not appear")


class CameraClips:
    """In a capture actor: the camera's packet ring, clip writers and thumbnails, and the
    reports of what finished, kept until the driver takes them (:meth:`take`)."""

    def __init__(self, config: RecordingConfig, camera: str, frame_of: Callable[[str], Any]) -> None:
        self.camera = camera
        self._lock = threading.Lock()
        self._reports: list[Report] = []
        self.recorder = Recorder(config, supervisor=Supervisor(), on_done=self._done, frame_of=frame_of)
        self.ring = self.recorder.ring(camera)

    def _done(self, event_id: str, clip: str | None, size: int) -> None:
        with self._lock:  # in the clip's writer thread
            self._reports.append(("clip", event_id, clip, size))

    def begin(self, event_id: str, start_ts: float) -> None:
        if self.recorder.begin(event_id, self.camera, start_ts) is None:
            self._done(event_id, None, 0)  # no packets to copy: the driver notes the event has no clip

    def peak(self, event_id: str) -> None:
        self.recorder.peak(event_id, self.camera)

    def end(self, event_id: str, end_ts: float) -> None:
        thumbnail = self.recorder.end(event_id, self.camera, end_ts)
        if thumbnail is not None:
            with self._lock:
                self._reports.append(("thumbnail", event_id, thumbnail))

    def take(self) -> dict[str, Any]:
        """The reports since the last call, the recorder's stats and the camera's video codec."""
        with self._lock:
            reports, self._reports = self._reports, []
        return {"reports": reports, "stats": self.recorder.stats(), "codec": self.recorder.codec(self.camera)}

    def close(self) -> dict[str, Any]:
        """Finish the clips being written (each stays playable); the last reports."""
        self.recorder.close()
        return self.take()


class ClusterClips:
    """On the driver: what :class:`~streamrec.events.manager.EventManager` asks of a Recorder,
    done by the capture actors of ``runner`` (see the module's docstring). ``on_done(event_id,
    clip, bytes)`` and ``on_thumbnail(event_id, thumbnail)`` are called in the ``cluster-clips``
    thread (and in :meth:`close`)."""

    def __init__(self, runner: Any, config: RecordingConfig, *, supervisor: Supervisor,
                 on_done: Callable[[str, str | None, int], None], on_thumbnail: Callable[[str, str], None],
                 poll_s: float = POLL_S) -> None:
        self.runner = runner
        self.config = config
        self.files = ClipFolder(config.folder)
        self.on_done, self.on_thumbnail = on_done, on_thumbnail
        self.poll_s = poll_s
        self.active: set[str] = set()  # events whose clips are being written on a camera node
        self.deleted: set[str] = set()  # events deleted: what their nodes still report is removed
        self.actor_of: dict[str, Any] = {}  # open event -> its camera's actor (kept while the camera is removed)
        self.counts = dict.fromkeys(COUNTS, 0)
        self.rings: dict[str, dict[str, Any]] = {}  # camera -> its ring's stats, from its last report
        self.codecs: dict[str, str | None] = {}  # camera -> its video codec, from its last report
        self._pending: dict[str, Any] = {}  # camera -> the ObjectRef of a take() not answered yet
        self._errors_seen: dict[str, int] = {}  # camera -> its actor's write errors at its last report
        self._lock = threading.Lock()
        self._collecting = threading.Lock()
        self._closed = False
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=supervisor.run, args=("cluster-clips", self._poll, self.stop_event),
                                        name="cluster-clips", daemon=True)
        self._thread.start()

    def ring(self, camera: str) -> None:
        """The rings are on the camera nodes."""
        return None

    def begin(self, event_id: str, camera: str, start_ts: float) -> str | None:
        actor = self.runner.actor_of(camera)
        if actor is None or self._closed:
            return None
        with self._lock:
            self.active.add(event_id)
            self.actor_of[event_id] = actor
        actor.clip_begin.remote(event_id, start_ts)
        return relative(camera, event_id, ".mp4")

    def codec(self, camera: str) -> str | None:
        """The video codec of ``camera``'s clips, as its actor last reported (``None`` before then):
        the page offers a clip a browser cannot play as a download."""
        with self._lock:
            return self.codecs.get(camera)

    def peak(self, event_id: str, camera: str) -> None:
        with self._lock:
            actor = self.actor_of.get(event_id)
        if actor is not None:
            actor.clip_peak.remote(event_id)

    def end(self, event_id: str, camera: str, end_ts: float) -> None:
        """The clip goes on ``post_seconds`` on its node; the thumbnail comes with a later report
        (also for a camera being removed: its actor still gets this before it stops)."""
        with self._lock:
            actor = self.actor_of.pop(event_id, None)
        if actor is not None:
            actor.clip_end.remote(event_id, end_ts)

    def discard(self, event_id: str, camera: str) -> int:
        """The event was deleted: its clip ends on its node at the next packet, and what the node
        still reports of it (the clip, a thumbnail) is removed instead of noted; the bytes freed now."""
        with self._lock:
            self.deleted.add(event_id)
            self.active.discard(event_id)
            actor = self.actor_of.pop(event_id, None)
        if actor is not None:
            actor.clip_end.remote(event_id, float("-inf"))
        return sum(self.files.remove(self.config.folder / relative(camera, event_id, suffix))
                   for suffix in (".mp4", ".jpg"))

    # -- the actors' reports --------------------------------------------------------
    def _poll(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            self.collect(REPLY_S)

    def collect(self, timeout: float) -> None:
        """Ask each camera's actor for its reports (once: an unanswered ask is waited on at the
        next call) and apply those that come within ``timeout``; also the reports of actors the
        runner stopped (a removed camera's last clips). One call at a time."""
        with self._collecting:
            self._collect(timeout)

    def _collect(self, timeout: float) -> None:
        ray = self.runner.ray
        for camera, actor in self.runner.actors().items():
            if camera not in self._pending:
                self._pending[camera] = actor.clip_reports.remote()
        refs = {ref: camera for camera, ref in self._pending.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs else ([], [])
        for ref in ready:
            camera = refs[ref]
            self._pending.pop(camera, None)
            try:
                self.apply(camera, ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - its actor (or node) is gone: its reports with it
                if camera in self.runner.cameras:
                    logger.warning("camera %s: no clip reports from its capture actor (%s)", camera, describe(exc))
        for camera, taken in self.runner.take_final_reports():
            self._pending.pop(camera, None)
            self.apply(camera, taken)
            if camera not in self.runner.cameras:
                self.forget(camera)

    def apply(self, camera: str, taken: dict[str, Any] | None) -> None:
        """One actor's reports: finished clips and thumbnails go to the callbacks; its ring's stats
        and the increase of its write errors are kept."""
        if not taken:
            return
        stats = taken["stats"]
        with self._lock:
            self.rings[camera] = stats["rings"].get(camera, {})
            self.codecs[camera] = taken.get("codec")
            errors = stats["write_errors"]  # the actor's own count, monotonic: count its increase
            self.counts["write_errors"] += max(0, errors - self._errors_seen.get(camera, 0))
            self._errors_seen[camera] = errors
        for report in taken["reports"]:
            if report[1] in self.deleted:  # written before the node heard of the delete
                if report[2]:
                    self.files.remove(self.config.folder / report[2])
                continue
            if report[0] == "clip":
                _, event_id, clip, size = report
                with self._lock:
                    self.active.discard(event_id)
                    self.counts["clips_written"] += bool(size)
                    self.counts["bytes_written"] += size
                self.on_done(event_id, clip, size)
            else:
                with self._lock:
                    self.counts["thumbnails_written"] += 1
                self.on_thumbnail(report[1], report[2])

    def forget(self, camera: str) -> None:
        with self._lock:
            self.rings.pop(camera, None)
            self.codecs.pop(camera, None)
            self._errors_seen.pop(camera, None)

    # -- the folder (shared: the driver sees it too) -----------------------------------
    def prune(self, store: EventStore, now: float) -> int:
        """Retention, as :meth:`Recorder.prune <streamrec.events.recording.Recorder.prune>` does it."""
        with self._lock:
            active = set(self.active)
        return self.files.prune(store, cutoff=now - self.config.retention_days * 86400,
                                max_bytes=self.config.max_gb * 2**30, active=active)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"clips_active": len(self.active), **self.counts,
                    "rings": {cam: dict(ring) for cam, ring in self.rings.items()}}

    def close(self, timeout: float = CLOSE_S) -> None:
        """Stop polling, then take the actors' last reports (the runner stopped them first: their
        clips are finished). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        self._thread.join(REPLY_S + self.poll_s + 1)
        self.collect(timeout)
