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
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.engine import Change, RuleEngine, rule_labels
from streamrec.events.store import DatabaseUnavailable, EventStore
from streamrec.models import kinetics
from streamrec.supervision import Supervisor

logger = logging.getLogger(__name__)

ClipsFactory = Callable[[Callable[[str, "str | None", int], None], Callable[[str, str], None]], Any]
SEEN_EVERY_S = 1.0  # how often an open event's last label is written (for recovery after a kill)
PRUNE_EVERY_S = 600.0  # how often retention deletes old clips (and at start)
QUEUE_SIZE = 10_000  # labels waiting for the events thread (minutes of a camera's labels while a database restarts)
RETRY_S, MAX_RETRY_S = 0.5, 10.0  # a write to a database that does not answer: tried again after these waits
JOIN_S = 10.0  # close(): how long the events thread may take to finish what is queued


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
                 queue_size: int = QUEUE_SIZE) -> None:
        groups = kinetics.categories()
        labels_of = {r.name: rule_labels(r, classes, groups) for r in rules}
        self.rules = list(rules)
        self.engine = RuleEngine(rules, labels_of=labels_of)
        self.publish = publish
        self.clock = clock
        self.recording = recording
        self.store = EventStore(db)
        self.notify_of = {r.name: r.notify for r in rules}
        self.recorder = self.notifier = None
        self.last_written: dict[str, float] = {}
        self.errors = 0
        self.next_prune = 0.0
        self.supervisor = supervisor
        self.queue: queue.Queue[tuple[str, str, Any] | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0  # labels the events thread never saw (a full queue)
        self.waiting_db = False  # a write is waiting for the database to answer again
        self.closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the engine and the recorder: one item at a time
        self._outbox_stats = {"pending": 0, "delivered": 0}  # the last read (the database may not answer)
        try:
            if rules and recording.enabled and clips is not None:
                self.recorder = clips(self.clip_done, self.thumbnail_done)
            elif rules and recording.enabled:
                from streamrec.events.recording import Recorder

                self.recorder = Recorder(recording, supervisor=supervisor, on_done=self.clip_done, frame_of=frame_of)
            if notify.webhook is not None or notify.mqtt is not None:
                from streamrec.events.notify import Notifier

                self.notifier = Notifier(self.store, notify, supervisor=supervisor)
            for ev in self.store.recover(self.notify_of, now=clock()):
                logger.info("event %s (%s on %s) was open at the last stop: closed at its last label", ev.id,
                            ev.rule, ev.camera)
        except BaseException:
            self.close()
            raise

    def start(self, cameras: Sequence[str]) -> None:
        """Start the ``events`` thread (and the notifier's)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.supervisor.run, args=("events", self._run, self.closing),
                                            name="events", daemon=True)
            self._thread.start()
        if self.notifier is not None:
            self.notifier.start()
            self.notifier.discover(list(cameras))

    def packet_ring(self, camera: str):
        """The camera's ring of compressed packets for clips (``None`` when nothing records)."""
        return self.recorder.ring(camera) if self.recorder is not None else None

    def observe(self, camera: str, msg: dict[str, Any]) -> None:
        """One delivered prediction of ``camera``: queued for the ``events`` thread (never waits)."""
        if self.notifier is not None:
            self.notifier.activity(camera, msg["label"], msg["score"], msg["window"]["end_ts"], msg["uncertain"])
        try:
            self.queue.put_nowait(("label", camera, msg))
        except queue.Full:
            if not self.dropped:
                logger.error("events: %d labels wait for the events thread (the database does not answer?); "
                             "newer labels are dropped and counted", self.queue.maxsize)
            self.dropped += 1

    def forget(self, camera: str) -> None:
        """``camera`` is gone: its open events close (after its labels already queued)."""
        try:
            self.queue.put(("forget", camera, None), timeout=1.0)
        except queue.Full:  # the database has not answered for minutes: the events stay open until close()
            logger.error("events: camera %s removed while %d labels wait: its open events close at the next stop",
                         camera, self.queue.maxsize)

    def _run(self) -> None:
        """The ``events`` thread's body: the queued labels, one at a time, until :meth:`close`."""
        while (item := self.queue.get()) is not None:
            try:
                with self._lock:
                    self._handle(*item)
            finally:
                self.queue.task_done()

    def _handle(self, kind: str, camera: str, msg: dict[str, Any] | None) -> None:
        if kind == "forget":
            for change in self.engine.forget(camera):
                self._apply_safely(change)
            return
        if self.recorder is not None and self.clock() >= self.next_prune:
            self.prune()
        for change in self.engine.update(camera, msg["label"], msg["score"], msg["window"]["end_ts"],
                                         uncertain=msg["uncertain"]):
            self._apply_safely(change)

    def _apply_safely(self, change: Change) -> None:
        try:
            self.apply(change)
        except Exception:  # noqa: BLE001 - a disk problem, a database that came back refusing: the next labels go on
            self.errors += 1
            logger.exception("events: event %s of camera %s", change.event.id, change.event.camera)

    def write(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, a database write, tried again while the database does not answer, until it
        lands or :meth:`close` gives up (the labels queue up meanwhile)."""
        delay = RETRY_S
        while True:
            try:
                out = fn()
            except DatabaseUnavailable as exc:
                if not self.waiting_db:
                    logger.warning("events: %s: %s; trying again until it answers", what, exc)
                self.waiting_db = True
                if self.closing.wait(delay):
                    raise
                delay = min(delay * 2, MAX_RETRY_S)
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
            if self.clock() - self.last_written.get(ev.id, 0.0) >= SEEN_EVERY_S:
                self.last_written[ev.id] = self.clock()
                self.write(f"event {ev.id}", lambda: self.store.seen(ev.id, ev.peak_ts or ev.start_ts, ev.peak_score,
                                                                       ev.mean_score))
            return
        if change.kind == "start":
            clip = self.recorder.begin(ev.id, ev.camera, ev.start_ts) if self.recorder is not None else None
            now = self.clock()
            self.write(f"event {ev.id}", lambda: self.store.opened(ev, notify=rule.notify, clip=clip, now=now))
            if self.recorder is not None:
                self.recorder.peak(ev.id, ev.camera)
            logger.info("event %s: %s on %s (%s, %.2f)", ev.id, rule.name, ev.camera, ev.label, ev.peak_score)
        else:
            now = self.clock()
            self.write(f"event {ev.id}", lambda: self.store.closed(ev, notify=rule.notify, now=now))
            self.last_written.pop(ev.id, None)
            thumbnail = self.recorder.end(ev.id, ev.camera, ev.end_ts) if self.recorder is not None else None
            if thumbnail is not None:
                self.write(f"event {ev.id}", lambda: self.store.set_files(ev.id, thumbnail=thumbnail))
            logger.info("event %s ended after %.1f s", ev.id, (ev.end_ts or ev.start_ts) - ev.start_ts)
        if rule.notify and self.notifier is not None:
            self.notifier.wake()
        self.publish({"type": "event", **ev.to_json()})

    def prune(self) -> None:
        """Retention: clips past ``retention_days`` or ``max_gb`` go, with their events."""
        self.next_prune = self.clock() + PRUNE_EVERY_S
        try:
            removed = self.recorder.prune(self.store, self.clock())
        except Exception:  # noqa: BLE001 - a disk or database problem: try again later
            logger.exception("events: retention failed")
            return
        if removed:
            logger.info("events: retention removed %d old events and their clips", removed)

    def clip_done(self, event_id: str, clip: str | None, size: int) -> None:
        """A clip writer finished (in its own thread)."""
        try:
            if clip is None:
                self.write(f"the clip of {event_id}", lambda: self.store.no_clip(event_id))
            else:
                self.write(f"the clip of {event_id}", lambda: self.store.set_files(event_id, clip=clip, clip_bytes=size))
        except Exception:  # noqa: BLE001 - the event may have been deleted meanwhile
            logger.warning("events: cannot note the clip of %s", event_id, exc_info=True)

    def thumbnail_done(self, event_id: str, thumbnail: str) -> None:
        """A thumbnail was written elsewhere (a cluster's camera node)."""
        try:
            self.write(f"the thumbnail of {event_id}", lambda: self.store.set_files(event_id, thumbnail=thumbnail))
        except Exception:  # noqa: BLE001 - the event may have been deleted meanwhile
            logger.warning("events: cannot note the thumbnail of %s", event_id, exc_info=True)

    def file_of(self, event_id: str, kind: str) -> Path | None:
        """The clip (``kind="clip"``) or thumbnail of an event, when it exists on disk."""
        row = self.store.get(event_id)
        rel = row and row.get(kind)
        if not rel:
            return None
        path = (self.recording.folder / rel).resolve()
        if self.recording.folder.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def delete(self, event_id: str) -> bool:
        row = self.store.delete(event_id)
        if row is None:
            return False
        for kind in ("clip", "thumbnail"):
            if row.get(kind):
                (self.recording.folder / row[kind]).unlink(missing_ok=True)
        return True

    def stats(self) -> dict[str, Any]:
        try:
            self._outbox_stats = self.store.outbox_stats()
        except Exception:  # noqa: BLE001 - the database does not answer: the last counts
            pass
        out: dict[str, Any] = {"rules": [r.name for r in self.rules],
                               "open": sum(1 for t in list(self.engine.tracks.values()) if t.open is not None),
                               "errors": self.errors, "outbox": dict(self._outbox_stats), "queued": self.queue.qsize(),
                               "dropped": self.dropped, "waiting_db": self.waiting_db,
                               "db_reconnects": self.store.reconnects}
        if self.recorder is not None:
            out["recording"] = self.recorder.stats()
        if self.notifier is not None:
            out["notify"] = self.notifier.stats()
        return out

    def problems(self) -> list[str]:
        """What ``/healthz`` should say of the events (a database that does not answer, lost labels)."""
        out = []
        if self.waiting_db:
            out.append(f"events: the database does not answer; {self.queue.qsize()} labels wait")
        if self.dropped:
            out.append(f"events: {self.dropped} label(s) dropped, their queue was full")
        return out

    def flush(self, timeout: float = JOIN_S) -> bool:
        """Wait until the events thread has handled every label queued so far; whether it did."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.queue.unfinished_tasks

    def close(self) -> None:
        """Handle what is queued, close open events at their last label (a clean stop), finish
        the clips, stop the notifier. A database that does not answer within :data:`JOIN_S`
        loses what was still queued (logged)."""
        try:
            self._stop_thread()
            with self._lock:
                for change in self.engine.close_all():
                    self._apply_safely(change)
        finally:
            if self.recorder is not None:
                self.recorder.close()
            if self.notifier is not None:
                self.notifier.close()
            self.store.close()

    def _stop_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(JOIN_S)
        self.closing.set()  # a write still waiting for the database gives up
        if self._thread is not None:
            self._thread.join(JOIN_S)
        left = 0
        while True:  # never started (or gone): what is queued is handled here
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left += 1
                with self._lock:
                    self._handle(*item)
        if left:
            logger.info("events: %d queued labels handled at close", left)
