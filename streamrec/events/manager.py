"""One app's events: its rules over the labels, the events table, clips and notifications.

:meth:`EventManager.observe` takes each prediction message as it is delivered (in the
inference worker's thread, under the app's lock) and queues it for the ``events`` thread: the
rule engine decides there; an event that opens is written with its start notifications to the
outbox (one transaction), its clip starts from the camera's packet ring, and the page is told
(``{"type": "event", ...}``); when it closes, the same again with its end, its clip runs on for
``post_seconds``, and the frame of its peak score becomes its thumbnail. Delivery, recording
and the database never block the labels: the notifier, the clip writers and the ``events``
thread are threads of their own, and a database that goes away (a PostgreSQL restart) only
delays the events: each write is tried again until it lands, while the labels queue up
(:data:`QUEUE_SIZE` at most; past that they are dropped and counted).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from streamrec.errors import StreamrecError
from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.clipfiles import ClipFolder, check_writable
from streamrec.events.engine import Change, RuleEngine, rule_labels
from streamrec.events.inbox import Inbox
from streamrec.events.store import DatabaseUnavailable, EventStore
from streamrec.models import kinetics
from streamrec.retry import Backoff
from streamrec.redact import printable
from streamrec.supervision import RECENT_ERROR_S, SHUTDOWN_S, Deadline, Supervisor, describe
from streamrec.zones import split_key, stream_key

logger = logging.getLogger(__name__)

ClipsFactory = Callable[[Callable[[str, "str | None", int], None], Callable[[str, str], None]], Any]
SEEN_EVERY_S = 1.0  # how often an open event's last label is written (for recovery after a kill)
PRUNE_EVERY_S = 600.0  # how often retention deletes old events and clips (and at the first label)
QUEUE_SIZE = 10_000  # labels waiting for the events thread (minutes of a camera's labels while a database restarts)
RETRY = Backoff(base_s=0.5, cap_s=10.0)  # a write to a database that does not answer: tried again after these waits
TICK_S = 1.0  # how often the rules look for streams whose labels stopped
JOIN_S = 10.0  # finish(): how long the events thread may take to handle what is queued


class EventManager:
    """``publish(message)`` hands a JSON-ready dict to the page; ``frame_of(camera)`` is the
    camera's newest RGB frame (for thumbnails). Clips are written by a
    :class:`~streamrec.events.recording.Recorder`, or by what ``clips(on_done, on_thumbnail)``
    makes: an object with the Recorder's ``ring``, ``begin``, ``peak``, ``end``, ``prune``,
    ``stats`` and ``close`` that writes them elsewhere (the cluster's camera nodes) and reports
    each finished clip and thumbnail through the two callbacks."""

    def __init__(self, *, rules: Sequence[RuleConfig], notify: NotifyConfig, recording: RecordingConfig, db: str,
                 classes: Sequence[str], supervisor: Supervisor, publish: Callable[[dict[str, Any]], None],
                 frame_of: Callable[[str], np.ndarray | None] = lambda camera: None,
                 clips: ClipsFactory | None = None, clock: Callable[[], float] = time.time,
                 queue_size: int = QUEUE_SIZE, store: EventStore | None = None) -> None:
        groups = kinetics.categories()
        labels_of = {r.name: rule_labels(r, classes, groups) for r in rules}
        self.rules = list(rules)
        self.engine = RuleEngine(rules, labels_of=labels_of)
        self.publish = publish
        self.clock = clock
        self.recording = recording
        self.store = store if store is not None else EventStore(db)
        self.notify_of = {r.name: r.notify for r in rules}
        self.recorder = self.notifier = None
        self.last_written: dict[str, float] = {}
        self.errors = 0
        self.last_error: tuple[float, str] | None = None  # (when, what) of the last change not recorded
        self.next_prune = 0.0
        self.inbox = Inbox(self._handle, name="events", supervisor=supervisor, limit=queue_size, tick_s=TICK_S)
        self.waiting_db = False  # a write is waiting for the database to answer again
        self.db_error = ""  # why, the last time it did not
        self.handed: dict[tuple[str, str | None], float] = {}  # (camera, zone): when its newest label was handed over
        self._outbox_stats = {"pending": 0, "delivered": 0}  # the last read (the database may not answer)
        self._finished = False
        self._gave_up = False  # the database did not answer while stopping: the rest is not written
        try:
            if rules and recording.enabled and clips is not None:
                self.recorder = clips(self.clip_done, self.thumbnail_done)
            elif rules and recording.enabled:
                from streamrec.events.recording import Recorder

                check_writable(recording.folder)
                self.recorder = Recorder(recording, supervisor=supervisor, on_done=self.clip_done, frame_of=frame_of)
                self.recorder.recover_all()  # this process is the folder's only writer
            if notify.webhook is not None or notify.mqtt is not None:
                from streamrec.events.notify import Notifier

                self.notifier = Notifier(self.store, notify, supervisor=supervisor)
            for ev in self.store.recover(self.notify_of, now=clock()):
                logger.info("event %s (%s on %s) was open at the last stop: closed at its last label", ev.id,
                            ev.rule, ev.camera)
        except BaseException:
            self.close()
            raise

    def start(self, streams: Sequence[str]) -> None:
        """Start the ``events`` thread and the notifier's; ``streams`` (``camera``/``camera/zone`` keys) go to Home Assistant."""
        self.inbox.start()
        if self.notifier is not None:
            self.notifier.start()
            self.notifier.discover(list(streams))

    def announce(self, streams: Sequence[str], *, gone: Sequence[str] = ()) -> None:
        """Streams that came (a camera added, zones saved) and went at run time, told to Home Assistant and MQTT."""
        if self.notifier is not None:
            self.notifier.withdraw([key for key in gone if key not in streams])
            self.notifier.discover(list(streams))

    def packet_ring(self, camera: str):
        """The camera's ring of compressed packets for clips (``None`` when nothing records, or
        when no rule watches ``camera``: its packets are not kept)."""
        if self.recorder is None or not any(not r.cameras or camera in r.cameras for r in self.rules):
            return None
        return self.recorder.ring(camera)

    def drop_ring(self, camera: str) -> None:
        """``camera`` was removed: its packet ring's memory goes (a clip being written keeps what it reads)."""
        if self.recorder is not None and hasattr(self.recorder, "drop_ring"):
            self.recorder.drop_ring(camera)

    def observe(self, key: str, msg: dict[str, Any]) -> None:
        """One delivered prediction of the stream ``key`` (its camera ``msg["camera"]``, its zone
        ``msg.get("zone")``, ``None`` for the whole frame): queued for the ``events`` thread (never waits)."""
        if self.notifier is not None:
            self.notifier.activity(msg.get("camera") or split_key(key)[0], msg["label"], msg["score"], msg["window"]["end_ts"], msg["uncertain"],
                                   bool(msg.get("meaningless")), zone=msg.get("zone"))
        if self._finished:  # the stop closed the events: a straggler's label opens none
            return
        # the stream is alive, whatever still waits in the queue (a database that does not answer)
        self.handed[(msg.get("camera") or split_key(key)[0], msg.get("zone"))] = self.clock()
        if not self.inbox.put_label(("label", key, msg)) and self.inbox.dropped == 1:
            logger.error("events: %d labels wait for the events thread (the database does not answer?); "
                         "newer labels are dropped and counted", self.inbox.limit)

    def forget(self, camera: str, keep: Iterable[str | None] = ()) -> threading.Event:
        """``camera`` is gone: its open events close (those of its zones too, but for the streams
        in ``keep``), after its labels queued before; the returned event is set once they did."""
        return self.inbox.put(("forget", camera, tuple(keep)))

    def _handle(self, item: tuple[str, str, Any]) -> None:
        """One item of the inbox, in the ``events`` thread."""
        kind, key, value = item
        if kind in ("label", "tick") and self.clock() >= self.next_prune:
            self.prune()
        if kind == "label":
            changes = self.engine.update(value.get("camera") or split_key(key)[0], value["label"], value["score"],
                                         value["window"]["end_ts"], uncertain=value["uncertain"], zone=value.get("zone"),
                                         now=self.clock())
        elif kind == "tick":  # every TICK_S: streams whose labels stopped end their events
            changes = self.engine.expire(self.clock(), handed=self.handed)
        elif kind == "forget":
            changes = self.engine.forget(key, keep=value or ())
        elif kind == "clip":
            return self.note_clip(key, *value)
        else:
            return self.note_thumbnail(key, value)
        for change in changes:
            self._apply_safely(change)

    def _apply_safely(self, change: Change) -> None:
        try:
            self.apply(change)
        except StreamrecError as exc:  # a database that did not answer before the stop
            self._failed(change, exc)
            logger.error("events: event %s of camera %s: %s", change.event.id, change.event.camera, exc)
        except Exception as exc:  # noqa: BLE001 - a disk problem, a database that came back refusing: the next labels go on
            self._failed(change, exc)
            logger.exception("events: event %s of camera %s", change.event.id, change.event.camera)

    def _failed(self, change: Change, exc: BaseException) -> None:
        """Count a change of an event that was not recorded; /healthz says so for a while."""
        self.errors += 1
        self.last_error = (self.clock(), f"event {change.event.id} of camera {change.event.camera} ({change.kind}): "
                                         f"{printable(describe(exc))}")

    def write(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, a database write, tried again while the database does not answer, until it
        lands or :meth:`close` gives up (the labels queue up meanwhile)."""
        attempt = 0
        while True:
            if self._gave_up:
                raise DatabaseUnavailable(f"events: {what} not written: the database did not answer at the stop")
            try:
                out = fn()
            except DatabaseUnavailable as exc:
                if not self.waiting_db:
                    logger.warning("events: %s: %s; trying again until it answers", what, exc)
                self.waiting_db, self.db_error = True, str(exc)
                if self.clock() >= self.next_prune:  # a full disk: retention frees room while the write waits
                    self.prune()
                if self.inbox.closing.wait(RETRY.delay(attempt)):  # stopping: no more tries, for this write or the next
                    self._gave_up = True
                    raise
                attempt += 1
                continue
            if self.waiting_db:
                logger.info("events: the database answers again")
                self.waiting_db = False
            return out

    def apply(self, change: Change) -> None:
        ev, rule = change.event, change.rule
        if change.kind == "seen":
            if change.peak and self.recorder is not None:
                self.recorder.peak(ev.id, ev.camera)
            if self.clock() - self.last_written.get(ev.id, 0.0) >= SEEN_EVERY_S and not self.inbox.closing.is_set():
                self.last_written[ev.id] = self.clock()
                last = change.ts if change.ts is not None else ev.start_ts
                self.write(f"event {ev.id}", lambda: self.store.seen(ev.id, last, ev.peak_score, ev.mean_score))
            return
        if change.kind == "start":
            clip = self.recorder.begin(ev.id, ev.camera, ev.start_ts) if self.recorder is not None else None
            codec = self.recorder.codec(ev.camera) if clip and hasattr(self.recorder, "codec") else None
            now = self.clock()
            self.write(f"event {ev.id}", lambda: self.store.opened(ev, notify=rule.notify, clip=clip, now=now,
                                                                   clip_codec=codec))
            if self.recorder is not None:
                self.recorder.peak(ev.id, ev.camera)
            logger.info("event %s: %s on %s (%s, %.2f)", ev.id, rule.name, stream_key(ev.camera, ev.zone), ev.label,
                        ev.peak_score)
        else:
            now = self.clock()
            try:
                self.write(f"event {ev.id}", lambda: self.store.closed(ev, notify=rule.notify, now=now))
            finally:  # whatever the database says: the clip ends after its post-roll, the peak frame is let go
                self.last_written.pop(ev.id, None)
                thumbnail = self.recorder.end(ev.id, ev.camera, ev.end_ts) if self.recorder is not None else None
            if thumbnail is not None:
                self.write(f"event {ev.id}", lambda: self.store.set_files(ev.id, thumbnail=thumbnail))
            logger.info("event %s ended after %.1f s", ev.id, (ev.end_ts or ev.start_ts) - ev.start_ts)
        if rule.notify and self.notifier is not None:
            self.notifier.wake()
        self.publish({"type": "event", **ev.to_json()})

    def prune(self) -> None:
        """Retention: events that ended more than ``retention_days`` ago go (with their clips and
        thumbnails, when they have some), then the oldest clips past ``max_gb``, with their events."""
        self.next_prune = self.clock() + PRUNE_EVERY_S
        try:
            if self.recorder is not None:
                removed = self.recorder.prune(self.store, self.clock())
            else:  # no clips recorded now: the events (and files of earlier runs) still age out
                cutoff = self.clock() - self.recording.retention_days * 86400
                removed = ClipFolder(self.recording.folder).prune(self.store, cutoff=cutoff, max_bytes=float("inf"),
                                                                  active=set())
        except Exception:  # noqa: BLE001 - a disk or database problem: try again later
            logger.exception("events: retention failed")
            return
        if removed:
            logger.info("events: retention removed %d old events and their clips", removed)

    def clip_done(self, event_id: str, clip: str | None, size: int) -> None:
        """A clip writer finished (in its own thread): noted by the events thread, after the
        event's own rows (whose write may still be waiting for the database)."""
        self.inbox.put(("clip", event_id, (clip, size)))

    def thumbnail_done(self, event_id: str, thumbnail: str) -> None:
        """A thumbnail was written elsewhere (a cluster's camera node)."""
        self.inbox.put(("thumbnail", event_id, thumbnail))

    def note_clip(self, event_id: str, clip: str | None, size: int) -> None:
        if clip is None:
            self.write(f"the clip of {event_id}", lambda: self.store.no_clip(event_id))
        else:
            self.write(f"the clip of {event_id}", lambda: self.store.set_files(event_id, clip=clip, clip_bytes=size))

    def note_thumbnail(self, event_id: str, thumbnail: str) -> None:
        self.write(f"the thumbnail of {event_id}", lambda: self.store.set_files(event_id, thumbnail=thumbnail))

    def file_of(self, event_id: str, kind: str) -> Path | None:
        """The clip (``kind="clip"``) or thumbnail of an event, when it exists on disk, not empty."""
        row = self.store.get(event_id)
        return self._on_disk(row.get(kind)) if row else None

    def _on_disk(self, rel: str | None, *, writing: bool = False) -> Path | None:
        """The file ``rel`` of the clips' folder when it is there, not empty (``writing``: or its
        ``.part`` while a clip is written); ``None`` when it is outside the folder or missing."""
        path = ClipFolder(self.recording.folder).inside(rel) if rel else None
        if path is None:
            return None
        for candidate in (path, path.with_name(path.name + ".part")) if writing else (path,):
            try:
                if candidate.is_file() and candidate.stat().st_size:
                    return path
            except OSError:
                continue
        return None  # missing, or empty (nothing to play or show)

    def with_files_on_disk(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` without the clip or thumbnail it names when that file is gone from the disk
        (removed by hand, a folder lost): the API then says the event has none."""
        clip = row.get("clip") if self._on_disk(row.get("clip"), writing=True) else None
        thumbnail = row.get("thumbnail") if self._on_disk(row.get("thumbnail")) else None
        return {**row, "clip": clip, "thumbnail": thumbnail, "clip_bytes": row.get("clip_bytes") if clip else 0}

    def delete(self, event_id: str) -> bool:
        """Delete an event, open or closed: its row and its notifications not yet delivered go,
        its rule stops following it (no end is notified; an activity that starts anew opens a new
        event), its clip stops being written and its clip and thumbnail are removed. Whether
        there was such an event."""
        if not self.inbox.lock.acquire(timeout=JOIN_S):  # the events thread is not between two steps of it
            raise DatabaseUnavailable(f"event {event_id}: not deleted: the events thread is busy (the database "
                                      "does not answer?); try again")
        try:
            # the row first: a database that does not answer leaves the event as it was (open, followed,
            # closed and notified as usual) for the "try again" the API answers
            row = self.store.delete(event_id)  # None too for an open event whose row waits for the database
            opened = self.engine.discard(event_id)
            self.last_written.pop(event_id, None)
        finally:
            self.inbox.lock.release()
        if row is None and opened is None:
            return False
        camera = row["camera"] if row is not None else opened.camera
        if self.notifier is not None:  # a publish of it waiting for the broker is not sent again
            self.notifier.forget(event_id)
        if self.recorder is not None and hasattr(self.recorder, "discard"):
            self.recorder.discard(event_id, camera)
        if row is not None:
            ClipFolder(self.recording.folder).delete_files(row)
        self.publish({"type": "event_deleted", "id": event_id, "state": "deleted"})
        return True

    def stats(self) -> dict[str, Any]:
        """Counts for ``/healthz`` and ``/metrics``; never waits for the database (the last counts)."""
        counts = self.store.outbox_stats_now()
        if counts is not None:
            self._outbox_stats = counts
        out: dict[str, Any] = {"rules": [r.name for r in self.rules],
                               "open": sum(1 for t in list(self.engine.tracks.values()) if t.open is not None and not t.deleted),
                               "errors": self.errors + self.inbox.errors, "outbox": dict(self._outbox_stats),
                               "queued": self.inbox.queued(), "dropped": self.inbox.dropped,
                               "waiting_db": self.waiting_db, "db_reconnects": self.store.reconnects}
        if self.recorder is not None:
            out["recording"] = self.recorder.stats()
        if self.notifier is not None:
            out["notify"] = self.notifier.stats()
        return out

    def problems(self) -> list[str]:
        """What ``/healthz`` should say of the events (a database that does not answer, lost labels)."""
        out = []
        if self.waiting_db:
            out.append(f"events: the database does not answer ({self.db_error}); {self.inbox.queued()} labels wait")
        if self.inbox.dropped:
            out.append(f"events: {self.inbox.dropped} label(s) dropped, their queue was full")
        if self.last_error is not None and (ago := self.clock() - self.last_error[0]) <= RECENT_ERROR_S:
            out.append(f"events: {self.errors} event change(s) not recorded, the last {ago:.0f} s ago: "
                       f"{self.last_error[1]}")
        if self.notifier is not None:
            out += self.notifier.problems()
        if self.recorder is not None and hasattr(self.recorder, "problems"):  # the cluster's clips: its actors'
            out += self.recorder.problems()
        return out

    def flush(self, timeout: float = JOIN_S) -> bool:
        """Wait until the events thread has handled what was queued so far; whether it did."""
        return self.inbox.flush(timeout)

    def finish(self, timeout: float = JOIN_S) -> None:
        """Handle what is queued (``timeout`` s at most) and close the open events at their last label
        (their clips run on for ``post_seconds`` at most until :meth:`close`). Idempotent; :meth:`close` calls it."""
        if self._finished:
            return
        self._finished = True
        deadline = Deadline(timeout)
        self.inbox.stop(deadline.left())
        self.inbox.drain(labels=not self._gave_up, wait=deadline.left(cap=1.0))
        if not self.inbox.lock.acquire(timeout=max(deadline.left(), 0.1)):  # the events thread is stuck in a write
            logger.warning("events: the open events are closed at the next start (the database did not answer)")
            return
        try:
            for change in self.engine.close_all():
                self._apply_safely(change)
        finally:
            self.inbox.lock.release()

    def close(self, timeout: float = SHUTDOWN_S) -> None:
        """:meth:`finish`, then finish the clips (noting them), stop the notifier, close the
        database, within ``timeout`` s in all (the queue may take half, the clips what is left but
        a second, the notifier the rest). A database that does not answer loses what was still to
        be written (logged)."""
        deadline = Deadline(timeout)
        try:
            self.finish(deadline.left(cap=min(JOIN_S, timeout / 2)))
        finally:
            try:
                if self.recorder is not None:
                    self.recorder.close(max(0.0, deadline.left() - 1.0))
                self.inbox.close(deadline.left(cap=1.0))  # the clips and thumbnails finished meanwhile; later ones at once
            finally:
                if self.notifier is not None:
                    self.notifier.close(deadline.left())
                self.store.close(max(deadline.left(), 0.1))
