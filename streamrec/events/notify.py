"""Delivery of the notification outbox to webhooks and MQTT, in one supervised thread.

:class:`Notifier` takes the due rows of the outbox (:meth:`EventStore.pending`) in order and hands
each to its channel (:mod:`streamrec.events.webhook`, :mod:`streamrec.events.mqtt`). A delivery is
marked with :meth:`EventStore.delivered`; a failure with :meth:`EventStore.failed` and the next try
``backoff_s * 2**attempts`` seconds later (at most ``max_backoff_s``). Once a notification is older
than ``max_age_s`` it is given up (:meth:`EventStore.expire`, one warning line). The outbox is in
the history database, so what one process could not deliver the next one delivers.

A channel that fails is left alone for the rest of a pass (one try per channel and pass, while a
host or broker is down); a notification may so overtake an older one that is still backing off,
after an outage. Delivery is at least once: a receiver that must not see an event twice
deduplicates on ``event.id`` and ``type``.

The thread wakes every ``poll_s`` seconds, at once on :meth:`Notifier.wake` (after the engine
writes to the outbox), and when a held MQTT activity message is due. Times in the outbox come from
``clock`` (``time.time``; tests inject their own); pacing uses ``time.monotonic``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from streamrec.event_config import NotifyConfig
from streamrec.events.mqtt import MqttPublisher
from streamrec.events.store import EventStore, Notification
from streamrec.events.webhook import WebhookSender
from streamrec.supervision import Supervisor, describe

logger = logging.getLogger(__name__)

BATCH = 100  # notifications per pass; a full batch is followed by the next pass at once


class ChannelStats:
    """What one channel did in this process."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self.last_delivered: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": self.failed, "last_error": self.last_error,
                "last_delivered": self.last_delivered}


class Notifier:
    """Delivers ``store``'s outbox to the channels of ``config`` (:meth:`start`, :meth:`close`),
    and publishes each camera's activity to MQTT (:meth:`activity`, :meth:`discover`)."""

    def __init__(self, store: EventStore, config: NotifyConfig, *, supervisor: Supervisor,
                 clock: Callable[[], float] = time.time, max_age_s: float = 86400.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 300.0, poll_s: float = 1.0, join_timeout_s: float = 15.0) -> None:
        self.store = store
        self.config = config
        self.supervisor = supervisor
        self.clock = clock
        self.max_age_s = max_age_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.join_timeout_s = join_timeout_s
        self.webhook = WebhookSender(config.webhook) if config.webhook else None
        self.mqtt = MqttPublisher(config.mqtt) if config.mqtt else None
        self.channels = {name: ChannelStats() for name in ("webhook", "mqtt") if getattr(config, name)}
        self.expired = 0
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._outbox_due = False
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the thread -------------------------------------------------------------------
    def start(self) -> None:
        """Connect to MQTT (in the background) and start the ``notifier`` thread."""
        if self._thread is not None or self._closed:
            return
        if self.mqtt is not None:
            self.mqtt.start()
        self._thread = threading.Thread(target=self.supervisor.run, args=("notifier", self.run, self._stop),
                                        name="notifier", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows in the outbox: deliver them now, not at the next poll."""
        with self._cond:
            self._outbox_due = True
            self._cond.notify()

    def run(self) -> None:
        """The thread's body: passes over the outbox until :meth:`close`."""
        next_pass = 0.0
        while not self._stop.is_set():
            with self._cond:
                due, self._outbox_due = self._outbox_due, False
            if due or time.monotonic() >= next_pass:
                more = self.deliver_due()
                next_pass = time.monotonic() + (0.0 if more else self.poll_s)
            held = self.mqtt.flush_activity() if self.mqtt is not None else None
            timeout = max(0.0, next_pass - time.monotonic())
            if held is not None:
                timeout = min(timeout, held)
            with self._cond:
                if not self._outbox_due and not self._stop.is_set():
                    self._cond.wait(timeout)

    def deliver_due(self) -> bool:
        """One pass: give up what is too old, then try each due notification (one failure per channel).
        Whether a full batch was delivered, so that more may be due at once."""
        now = self.clock()
        self.expire(now)
        notes = self.store.pending(now=now, limit=BATCH)
        failing: set[str] = set()
        delivered = 0
        for note in notes:
            if self._stop.is_set():
                return False
            if note.channel in failing:
                continue
            if self.deliver(note):
                delivered += 1
            else:
                failing.add(note.channel)
        return len(notes) == BATCH and delivered > 0

    def deliver(self, note: Notification) -> bool:
        """Send ``note`` to its channel and record the outcome in the outbox; whether it was delivered."""
        try:
            error = self.send(note)
        except Exception as exc:  # noqa: BLE001 - a bug in a channel fails this note, not the thread
            error = describe(exc)
        stats = self.channels.setdefault(note.channel, ChannelStats())
        if error is None:
            self.store.delivered(note.id, self.clock())
            if stats.last_error is not None:
                logger.info("%s notifications are delivered again", note.channel)
            stats.delivered += 1
            stats.last_error, stats.last_delivered = None, self.clock()
            return True
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** min(note.attempts, 64))
        self.store.failed(note.id, error, self.clock() + delay)
        if error != stats.last_error:  # logged when it is new, not at every retry
            logger.warning("%s notification of event %s not delivered (retrying for up to %g s): %s",
                           note.channel, note.event_id, self.max_age_s, error)
        stats.failed += 1
        stats.last_error = error
        return False

    def send(self, note: Notification) -> str | None:
        if note.channel == "webhook" and self.webhook is not None:
            return self.webhook.send(note)
        if note.channel == "mqtt" and self.mqtt is not None:
            return self.mqtt.publish_event(note)
        return f"no [notify.{note.channel}] in the config"

    def expire(self, now: float) -> None:
        older_than = now - self.max_age_s
        n = self.store.expire(older_than)
        if self.mqtt is not None:
            self.mqtt.forget_before(older_than)
        if n:
            self.expired += n
            logger.warning("gave up on %d notification(s) not delivered within %g s (max_age_s)", n, self.max_age_s)

    # -- MQTT state ---------------------------------------------------------------------
    def activity(self, camera: str, label: str, score: float, ts: float, uncertain: bool = False) -> None:
        """``camera``'s current smoothed label, for MQTT (at most once a second); never blocks long."""
        if self.mqtt is None:
            return
        try:
            held = self.mqtt.activity(camera, label, score, ts, uncertain)
        except Exception as exc:  # noqa: BLE001 - the live path must not fail for a notification
            logger.debug("MQTT activity of %s not published: %s", camera, describe(exc))
            return
        if held is not None:
            with self._cond:
                self._cond.notify()  # the thread waits at most until it is due

    def discover(self, cameras: list[str]) -> None:
        """Announce ``cameras`` to Home Assistant (with ``homeassistant_discovery``)."""
        if self.mqtt is not None:
            self.mqtt.discover(cameras)

    # -- the rest -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """For /metrics and /healthz: the outbox's pending count, expired notifications, and per
        channel its deliveries, failed attempts and last error (MQTT: whether it is connected)."""
        channels = {name: s.as_dict() for name, s in self.channels.items()}
        if self.mqtt is not None:
            mq = self.mqtt.stats()
            channels["mqtt"].update(connected=mq["connected"], unacknowledged=mq["unacknowledged"])
            channels["mqtt"]["last_error"] = channels["mqtt"]["last_error"] or mq["last_error"]
        return {"pending": self.store.outbox_stats()["pending"], "expired": self.expired, "channels": channels}

    def close(self) -> None:
        """Stop the thread (a timed join), send MQTT ``offline`` and disconnect; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.join_timeout_s)
            if self._thread.is_alive():
                logger.warning("the notifier thread did not stop within %g s (a delivery in progress)",
                               self.join_timeout_s)
        if self.mqtt is not None:
            self.mqtt.close()
