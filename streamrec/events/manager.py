"""One app's events: its rules over the labels, the events table, clips and notifications.

:meth:`EventManager.observe` takes each prediction message as it is delivered (in the
inference worker's thread, under the app's lock): the rule engine decides; an event that opens
is written with its start notifications to the outbox (one call), its clip starts from the
camera's packet ring, and the page is told (``{"type": "event", ...}``); when it closes, the same
again with its end, its clip runs on for ``post_seconds``, and the frame of its peak score
becomes its thumbnail. Delivery, recording and the database never block the labels: the
notifier and the clip writers are threads of their own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.engine import Change, RuleEngine, rule_labels
from streamrec.events.store import EventStore
from streamrec.models import kinetics
from streamrec.supervision import Supervisor

logger = logging.getLogger(__name__)

ClipsFactory = Callable[[Callable[[str, "str | None", int], None], Callable[[str, str], None]], Any]
SEEN_EVERY_S = 1.0  # how often an open event's last label is written (for recovery after a kill)
PRUNE_EVERY_S = 600.0  # how often retention deletes old clips (and at start)


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
                 clips: ClipsFactory | None = None, clock: Callable[[], float] = time.time) -> None:
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
        if self.notifier is not None:
            self.notifier.start()
            self.notifier.discover(list(cameras))

    def packet_ring(self, camera: str):
        """The camera's ring of compressed packets for clips (``None`` when nothing records)."""
        return self.recorder.ring(camera) if self.recorder is not None else None

    def observe(self, camera: str, msg: dict[str, Any]) -> None:
        """One delivered prediction of ``camera``."""
        ts = msg["window"]["end_ts"]
        if self.recorder is not None and self.clock() >= self.next_prune:
            self.prune()
        if self.notifier is not None:
            self.notifier.activity(camera, msg["label"], msg["score"], ts, msg["uncertain"])
        try:
            for change in self.engine.update(camera, msg["label"], msg["score"], ts, uncertain=msg["uncertain"]):
                self.apply(change)
        except Exception:  # noqa: BLE001 - a database or disk problem must not stop the labels
            self.errors += 1
            logger.exception("events: camera %s", camera)

    def apply(self, change: Change) -> None:
        ev, rule = change.event, change.rule
        if change.kind == "seen":
            if change.peak and self.recorder is not None:
                self.recorder.peak(ev.id, ev.camera)
            if self.clock() - self.last_written.get(ev.id, 0.0) >= SEEN_EVERY_S:
                self.last_written[ev.id] = self.clock()
                self.store.seen(ev.id, ev.peak_ts or ev.start_ts, ev.peak_score, ev.mean_score)
            return
        if change.kind == "start":
            clip = self.recorder.begin(ev.id, ev.camera, ev.start_ts) if self.recorder is not None else None
            self.store.opened(ev, notify=rule.notify, clip=clip, now=self.clock())
            if self.recorder is not None:
                self.recorder.peak(ev.id, ev.camera)
            logger.info("event %s: %s on %s (%s, %.2f)", ev.id, rule.name, ev.camera, ev.label, ev.peak_score)
        else:
            self.store.closed(ev, notify=rule.notify, now=self.clock())
            self.last_written.pop(ev.id, None)
            thumbnail = self.recorder.end(ev.id, ev.camera, ev.end_ts) if self.recorder is not None else None
            if thumbnail is not None:
                self.store.set_files(ev.id, thumbnail=thumbnail)
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
                self.store.no_clip(event_id)
            else:
                self.store.set_files(event_id, clip=clip, clip_bytes=size)
        except Exception:  # noqa: BLE001 - the event may have been deleted meanwhile
            logger.warning("events: cannot note the clip of %s", event_id, exc_info=True)

    def thumbnail_done(self, event_id: str, thumbnail: str) -> None:
        """A thumbnail was written elsewhere (a cluster's camera node)."""
        try:
            self.store.set_files(event_id, thumbnail=thumbnail)
        except Exception:  # noqa: BLE001 - the event may have been deleted meanwhile
            logger.warning("events: cannot note the thumbnail of %s", event_id, exc_info=True)

    def forget(self, camera: str) -> None:
        for change in self.engine.forget(camera):
            self.apply(change)

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
        out: dict[str, Any] = {"rules": [r.name for r in self.rules],
                               "open": sum(1 for t in self.engine.tracks.values() if t.open is not None),
                               "errors": self.errors, "outbox": self.store.outbox_stats()}
        if self.recorder is not None:
            out["recording"] = self.recorder.stats()
        if self.notifier is not None:
            out["notify"] = self.notifier.stats()
        return out

    def close(self) -> None:
        """Close open events at their last label (a clean stop), finish the clips, stop the notifier."""
        try:
            for change in self.engine.close_all():
                self.apply(change)
        finally:
            if self.recorder is not None:
                self.recorder.close()
            if self.notifier is not None:
                self.notifier.close()
            self.store.close()
