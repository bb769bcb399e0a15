"""Delivery of the notification outbox to webhooks and MQTT, one supervised thread per channel.

:class:`Notifier` runs a thread per channel (``notifier-webhook``, ``notifier-mqtt``), each taking
its channel's due rows of the outbox (:meth:`EventStore.pending`) in order and handing them to the
channel (:mod:`streamrec.events.webhook`, :mod:`streamrec.events.mqtt`): a webhook that hangs
never delays MQTT, nor the other way round. A delivery is marked with
:meth:`EventStore.delivered`; a failure with :meth:`EventStore.failed` and the next try
after :data:`DELIVERY_BACKOFF` (:mod:`streamrec.retry`: doubling from 1 s up to 5 min, jittered). Once a notification is older
than ``max_age_s`` it is given up, with its event's later ones on its channel (:meth:`EventStore.expire`,
one warning line): an ``event_end`` is never sent alone. The outbox is in
the history database, so what one process could not deliver the next one delivers.

**Order**: on each channel, an event's notifications go out in the order they were written: its
``event_end`` is never sent while its ``event_start`` for that channel is undelivered (still
backing off after an outage, say); it waits, then follows. Events do not wait for one another: a
notification of one event may overtake an older one of another event that is backing off. A
channel that fails ends its pass (one try per pass while a host or broker is down). Delivery is
at least once: a receiver that must not see an event twice deduplicates on ``event.id`` and
``type``.

**Health** (:meth:`Notifier.problems`, in ``/healthz``): a channel that has delivered nothing for
``degraded_after_seconds`` while it failed, a delivery in progress for that long, or an MQTT
connection down for that long, makes ``/healthz`` read ``degraded`` with a reason naming the channel.

Each thread wakes every ``poll_s`` seconds, at once on :meth:`Notifier.wake` (after the engine
writes to the outbox), and (MQTT) when a held activity message is due. Times in the outbox and
health come from ``clock`` (``time.time``; tests inject their own); pacing uses ``time.monotonic``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from streamrec.event_config import NotifyConfig
from streamrec.events.store import EventStore, Notification
from streamrec.events.webhook import WebhookSender
from streamrec.retry import Backoff
from streamrec.supervision import Deadline, Supervisor, describe

logger = logging.getLogger(__name__)

BATCH = 100  # notifications per pass; a full batch is followed by the next pass at once
DELIVERY_BACKOFF = Backoff(base_s=1.0, cap_s=300.0)  # a failed delivery: tried again after these waits
EVER = 1e300  # a time after every next try


class ChannelStats:
    """What one channel did in this process."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self.last_delivered: float | None = None
        self.failing_since: float | None = None  # the first failure since the last delivery
        self.busy_since: float | None = None  # when the delivery in progress began

    def as_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": self.failed, "last_error": self.last_error,
                "last_delivered": self.last_delivered, "failing_since": self.failing_since,
                "busy_since": self.busy_since}


class Notifier:
    """Delivers ``store``'s outbox to the channels of ``config`` (:meth:`start`, :meth:`close`),
    and publishes each camera's activity to MQTT (:meth:`activity`, :meth:`discover`)."""

    def __init__(self, store: EventStore, config: NotifyConfig, *, supervisor: Supervisor,
                 clock: Callable[[], float] = time.time, max_age_s: float = 86400.0,
                 backoff: Backoff = DELIVERY_BACKOFF, poll_s: float = 1.0, join_timeout_s: float = 15.0) -> None:
        self.store = store
        self.config = config
        self.supervisor = supervisor
        self.clock = clock
        self.max_age_s = max_age_s
        self.backoff = backoff
        self.poll_s = poll_s
        self.join_timeout_s = join_timeout_s
        self.webhook = WebhookSender(config.webhook) if config.webhook else None
        self.mqtt = None
        if config.mqtt:
            from streamrec.events.mqtt import MqttPublisher  # paho-mqtt: an extra, needed with [notify.mqtt] only

            self.mqtt = MqttPublisher(config.mqtt, clock=clock)
            self.mqtt.on_connected = self._mqtt_back
        self.channels = {name: ChannelStats() for name in ("webhook", "mqtt") if getattr(config, name)}
        self.expired = 0
        self._pending = 0  # the outbox's undelivered count when the database last answered at once
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._due = {name: False for name in self.channels}  # a channel's thread is to pass over the outbox now
        self._back = threading.Event()  # the broker is back: what backed off while it was away is due now
        self._expire_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False

    # -- the thread -------------------------------------------------------------------
    def start(self) -> None:
        """Connect to MQTT (in the background) and start a ``notifier-<channel>`` thread per channel."""
        if self._started or self._closed:
            return
        self._started = True
        if self.mqtt is not None:
            self.mqtt.start()
        for channel in self.channels:
            name = f"notifier-{channel}"
            thread = threading.Thread(target=self.supervisor.run, args=(name, lambda c=channel: self.run(c), self._stop),
                                      name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def wake(self) -> None:
        """New rows in the outbox: deliver them now, not at the next poll."""
        with self._cond:
            self._due = dict.fromkeys(self._due, True)
            self._cond.notify_all()

    def _mqtt_back(self) -> None:
        self._back.set()
        self.wake()

    def run(self, channel: str) -> None:
        """A channel thread's body: passes over its rows of the outbox until :meth:`close`."""
        next_pass = 0.0
        while not self._stop.is_set():
            if channel == "mqtt" and self._back.is_set():  # not on paho's thread: the store may wait on its database
                self._back.clear()
                self.store.due_now(channel, self.clock())
            with self._cond:
                due, self._due[channel] = self._due[channel], False
            if due or time.monotonic() >= next_pass:
                more = self.deliver_due(channel)
                next_pass = time.monotonic() + (0.0 if more else self.poll_s)
            held = self.mqtt.flush_activity() if channel == "mqtt" and self.mqtt is not None else None
            timeout = max(0.0, next_pass - time.monotonic())
            if held is not None:
                timeout = min(timeout, held)
            with self._cond:
                if not self._due[channel] and not self._stop.is_set():
                    self._cond.wait(timeout)

    def deliver_due(self, channel: str | None = None) -> bool:
        """One pass over ``channel``'s due notifications (``None``: each channel's in turn): give up
        what is too old, then try them in order until one fails. Whether a full batch was
        delivered, so that more may be due at once."""
        if channel is None:
            return any([self.deliver_due(name) for name in list(self.channels)])
        now = self.clock()
        self.expire(now)
        while True:  # again while what was delivered lets an event's next notification go
            notes = self.store.pending(now=now, limit=BATCH, channel=channel, in_order=True)
            if not notes:
                self.settle(channel)
                return False
            for note in notes:
                if self._stop.is_set() or not self.deliver(note):
                    return False
            if len(notes) == BATCH:
                return True

    def settle(self, channel: str) -> None:
        """``channel`` is no longer failing once nothing of it is left undelivered (all expired)."""
        stats = self.channels.get(channel)
        if stats is not None and stats.failing_since is not None \
                and not self.store.pending(now=EVER, limit=1, channel=channel):
            stats.failing_since = None

    def deliver(self, note: Notification) -> bool:
        """Send ``note`` to its channel and record the outcome in the outbox; whether it was delivered."""
        if self.store.get(note.event_id) is None:  # deleted after its batch was read: never sent
            self.store.discard(note)  # nor read again (a pass would spin on it)
            return True
        stats = self.channels.setdefault(note.channel, ChannelStats())
        stats.busy_since = self.clock()
        try:
            error = self.send(note)
        except Exception as exc:  # noqa: BLE001 - a bug in a channel fails this note, not the thread
            error = describe(exc)
        finally:
            stats.busy_since = None
        if error is None:
            self.store.delivered(note, self.clock())
            if stats.last_error is not None:
                logger.info("%s notifications are delivered again", note.channel)
            stats.delivered += 1
            stats.last_error, stats.last_delivered, stats.failing_since = None, self.clock(), None
            return True
        delay = self.backoff.delay(note.attempts)
        self.store.failed(note, error, self.clock() + delay)
        if error != stats.last_error:  # logged when it is new, not at every retry
            logger.warning("%s notification of event %s not delivered (retrying for up to %g s): %s",
                           note.channel, note.event_id, self.max_age_s, error)
        stats.failed += 1
        stats.last_error = error
        if stats.failing_since is None:
            stats.failing_since = self.clock()
        return False

    def send(self, note: Notification) -> str | None:
        if note.channel == "webhook" and self.webhook is not None:
            return self.webhook.send(note)
        if note.channel == "mqtt" and self.mqtt is not None:
            return self.mqtt.publish_event(note)
        return f"no [notify.{note.channel}] in the config"

    def expire(self, now: float) -> None:
        older_than = now - self.max_age_s
        with self._expire_lock:  # one channel's thread at a time, so each is counted once
            n = self.store.expire(older_than)
        if self.mqtt is not None:
            self.mqtt.forget_before(older_than)
        if n:
            self.expired += n
            logger.warning("gave up on %d notification(s) not delivered within %g s (max_age_s)", n, self.max_age_s)

    # -- MQTT state ---------------------------------------------------------------------
    def activity(self, camera: str, label: str, score: float, ts: float, uncertain: bool = False,
                 random_weights: bool = False, zone: str | None = None) -> None:
        """``camera``'s (its ``zone``'s) current smoothed label, for MQTT (at most once a second per
        stream); never blocks long."""
        if self.mqtt is None:
            return
        try:
            held = self.mqtt.activity(camera, label, score, ts, uncertain, random_weights, zone=zone)
        except Exception as exc:  # noqa: BLE001 - the live path must not fail for a notification
            logger.debug("MQTT activity of %s not published: %s", camera, describe(exc))
            return
        if held is not None:
            with self._cond:
                self._cond.notify_all()  # the MQTT thread waits at most until it is due

    def discover(self, streams: list[str]) -> None:
        """Announce ``streams`` (``camera`` or ``camera/zone``) to Home Assistant (with ``homeassistant_discovery``)."""
        if self.mqtt is not None:
            self.mqtt.discover(streams)

    def forget(self, event_id: str) -> None:
        """``event_id`` was deleted: a publish of it still waiting for its acknowledgement is dropped
        (never sent again at a reconnect). Its rows of the outbox went with the event."""
        if self.mqtt is not None:
            self.mqtt.forget_event(event_id)

    def withdraw(self, streams: list[str]) -> None:
        """Remove ``streams``' Home Assistant sensors and retained activity (see :meth:`MqttPublisher.withdraw`)."""
        if self.mqtt is not None:
            self.mqtt.withdraw(streams)

    # -- the rest -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """For /metrics and /healthz: the outbox's pending count, expired notifications, and per
        channel its deliveries, failed attempts and last error (MQTT: whether it is connected)."""
        channels = {name: s.as_dict() for name, s in self.channels.items()}
        if self.mqtt is not None:
            mq = self.mqtt.stats()
            channels["mqtt"].update(connected=mq["connected"], unacknowledged=mq["unacknowledged"])
            channels["mqtt"]["last_error"] = channels["mqtt"]["last_error"] or mq["last_error"]
        counts = self.store.outbox_stats_now()  # never waits for the database: the last count meanwhile
        if counts is not None:
            self._pending = counts["pending"]
        return {"pending": self._pending, "expired": self.expired, "channels": channels}

    def problems(self, now: float | None = None) -> list[str]:
        """For ``/healthz``: each channel that has failed, been stuck in one delivery, or (MQTT) been
        disconnected for ``degraded_after_seconds`` or more, with why."""
        now = self.clock() if now is None else now
        limit = self.config.degraded_after_seconds
        out = []
        for name, stats in list(self.channels.items()):
            busy, failing = stats.busy_since, stats.failing_since
            down = self.mqtt.stats()["down_since"] if name == "mqtt" and self.mqtt is not None else None
            if busy is not None and now - busy >= limit:
                out.append(f"notify: {name}: one delivery has been in progress for {now - busy:.0f} s "
                           f"(to {self.where(name)})")
            elif failing is not None and now - failing >= limit:
                out.append(f"notify: {name}: nothing delivered for {now - failing:.0f} s: {stats.last_error}")
            elif down is not None and now - down >= limit:
                out.append(f"notify: {name}: not connected for {now - down:.0f} s: "
                           f"{self.mqtt.stats()['last_error'] or 'connecting to ' + self.where(name)}")
        return out

    def where(self, channel: str) -> str:
        """``channel``'s receiver, without its password."""
        sender = self.webhook if channel == "webhook" else self.mqtt
        return sender.where if sender is not None else channel

    def close(self, timeout: float | None = None) -> None:
        """Stop the threads (a webhook delivery in progress is ended; ``timeout`` s in all at most,
        ``join_timeout_s`` by default), send MQTT ``offline`` and disconnect; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self.webhook is not None:
            self.webhook.abort()  # a receiver that answers slowly does not hold up the stop
        deadline = Deadline(self.join_timeout_s if timeout is None else timeout)
        for thread in self._threads:
            thread.join(deadline.left())
            if thread.is_alive():
                logger.warning("the %s thread did not stop in time (a delivery in progress)", thread.name)
        if self.mqtt is not None:
            self.mqtt.close()
