"""MQTT: events, each camera's current activity, availability and Home Assistant discovery,
with paho-mqtt (a maintained client: reconnects, QoS 1 acknowledgements, TLS, last will).

Topics under ``PREFIX`` (``[notify.mqtt] topic_prefix``, ``streamrec`` by default):

* ``PREFIX/availability``: ``online`` (retained) on every connect; ``offline`` (retained) as the
  broker's last will and on a clean close.
* ``PREFIX/<camera>/activity`` (a zone's: ``PREFIX/<camera>/<zone>/activity``): the stream's smoothed
  label as JSON (``{"camera", "zone", "label", "score", "ts", "uncertain"}``, ``zone`` ``null`` for the
  whole frame), retained, at most once a second per stream; updates in between are
  dropped but the newest, which follows when its second is up. State, not events: it bypasses
  the outbox, is published only while connected, and the newest is published again on reconnect.
* ``PREFIX/events``: the outbox's ``event_start``/``event_end`` payloads, QoS 1; delivered when the
  broker acknowledges. At least once: a publish that was not acknowledged in time (or that paho
  queued as the connection went) is resent by paho on reconnect and waited for on the next try,
  not published twice by this side; only a publish the connection dropped in between may reach a
  subscriber twice. One that is given up (``max_age_s``) while paho still holds it (a broker
  that refuses it, dropping the connection each time) goes with a new client and its queue.
* ``<discovery_prefix>/sensor/streamrec_<id>/activity/config`` with ``homeassistant_discovery``:
  a retained sensor config per labelled stream (:func:`discovery_config`; a zone's id is
  ``<camera>__<zone>``, its sensor on its camera's device), sent again on every connect.

The connection runs in paho's own thread (``loop_start``) and reconnects by itself; a broker that
is down only delays events (the outbox retries them) and never blocks nor raises into a caller.

Example:
    >>> cfg = discovery_config("streamrec", "rack.1")
    >>> cfg["state_topic"], cfg["unique_id"], cfg["device"]["identifiers"]
    ('streamrec/rack.1/activity', 'streamrec_rack_1_83925fd7_activity', ['streamrec_rack_1_83925fd7'])

Home Assistant's ids take only ASCII letters, digits, ``_`` and ``-``: a camera name with other
characters gets a short hash of the whole name after its id (:func:`object_id`), so that
``rack.1`` and ``rack_1``, or ``кухня`` and ``спорт``, are distinct sensors.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import time
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho

from streamrec.event_config import MqttConfig, tls_context
from streamrec.notify_checks import ascii_host, ha_stream_id
from streamrec.events.payloads import activity_payload, discovery_config, object_id  # noqa: F401 - re-exported
from streamrec.events.store import Notification
from streamrec.live.sources import mask_credentials
from streamrec.redact import mask_quoted, printable
from streamrec.zones import stream_key

logger = logging.getLogger(__name__)

ACTIVITY_INTERVAL_S = 1.0  # at most one activity message a second per labelled stream
STABLE_S = 10.0  # a connection that lasts less did not end the outage it came in (a broker that drops each publish)


class Client(paho.Client):
    """paho's client, keeping why its last connection attempt failed (paho's ``on_connect_fail``
    does not say): a refused port, a name that does not resolve, a certificate not trusted."""

    connect_error: str | None = None

    def reconnect(self) -> paho.MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = str(exc) if isinstance(exc, ssl.SSLError) else str(exc.strerror or exc)
            raise


class MqttPublisher:
    """One broker connection (:meth:`start`, :meth:`close`); :meth:`publish_event` for the
    outbox's thread, :meth:`activity` and :meth:`discover` for anyone (never blocking)."""

    def __init__(self, config: MqttConfig, *, ack_timeout_s: float = 10.0, reconnect_max_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.down_since: float | None = None  # when the connection was lost (or first tried), by ``clock``
        self.prefix = config.topic_prefix.strip("/")
        self.where = mask_credentials(config.url)
        self.ack_timeout_s = ack_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.keepalive_s = 30  # also how long a broker may take to answer the connection (CONNACK)
        self.connected = False
        self.on_connected: Callable[[], None] | None = None  # called (on paho's thread) at each connection
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._cameras: list[str] = []  # the announced streams' keys (camera or camera/zone)
        self._withdrawn: set[str] = set()  # streams whose sensors are to be removed at the next connection
        self._state: dict[str, str] = {}  # stream key -> its newest activity payload
        self._unsent: dict[str, float] = {}  # stream key -> monotonic time its newest payload is due
        self._sent_at: dict[str, float] = {}  # stream key -> monotonic time of its last activity message
        self._inflight: dict[tuple[int, str], tuple[paho.MQTTMessageInfo, float]] = {}  # (note id, event id) -> (publish, created)
        self._announced: dict[str, paho.MQTTMessageInfo] = {}  # topic -> its last availability or discovery publish
        self._up_at: float | None = None  # when the connection was last made, by ``clock``
        self._down_before: float | None = None  # when it went down before that
        self._client: paho.Client | None = None
        self._closed = False

    @property
    def availability_topic(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def events_topic(self) -> str:
        return f"{self.prefix}/events"

    def activity_topic(self, key: str) -> str:
        """``key``: ``camera`` or ``camera/zone``."""
        return f"{self.prefix}/{key}/activity"

    # -- the connection ---------------------------------------------------------------
    def make_client(self) -> Client:
        client = Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        parts = urlsplit(self.config.url)
        if parts.username is not None:
            client.username_pw_set(unquote(parts.username),
                                   unquote(parts.password) if parts.password is not None else None)
        if self.config.tls:  # the system's CA certificates, or only ca_file's; the host name is checked
            client.tls_set_context(tls_context(self.config.ca_file, "[notify.mqtt]"))
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(self.reconnect_max_s)))
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_connect_fail = self.on_connect_fail
        return client

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself from then on."""
        if self._client is not None or self._closed:
            return
        self._client = self.make_client()
        with self._lock:
            if not self.connected and self.down_since is None:
                self.down_since = self.clock()
        self._client.connect_async(ascii_host(self.config.host), self.config.port, keepalive=self.keepalive_s)
        self._client.loop_start()

    def on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            self.down(f"the broker at {self.where} refused the connection: {reason_code}")
            return
        with self._lock:
            self.connected = True
            self.last_error = None
            self._up_at, self._down_before, self.down_since = self.clock(), self.down_since, None
            cameras, states = list(self._cameras), dict(self._state)
            self._unsent.clear()
            self._sent_at.update({cam: time.monotonic() for cam in states})
        logger.info("MQTT: connected to %s", self.where)
        self.publish_withdrawn(client)
        self.announce(client, self.availability_topic, "online")
        self.publish_discovery(client, cameras)
        for camera, payload in states.items():
            client.publish(self.activity_topic(camera), payload, qos=0, retain=True)
        if self.on_connected is not None:
            self.on_connected()

    def on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            was_connected, self.connected = self.connected, False
            if was_connected:  # a connection that lasted less than STABLE_S: down since before it
                now = self.clock()
                brief = self._up_at is not None and now - self._up_at < STABLE_S and self._down_before is not None
                self.down_since = self._down_before if brief else now
        if was_connected and not self._closed:
            self.down(f"lost the connection to the broker at {self.where} ({reason_code}); reconnecting")
        elif self.last_error is None and not self._closed:  # after a refusal, the refusal says why
            self.down(f"the broker at {self.where} accepted the connection but did not answer it (no CONNACK within "
                      f"{self.keepalive_s} s: {reason_code}); retrying")

    def on_connect_fail(self, client, userdata) -> None:
        why = getattr(client, "connect_error", None)
        self.down(mask_quoted(f"cannot connect to the broker at {self.where}" + (f": {why}" if why else "")
                              + "; retrying", self.config.url))

    def down(self, error: str) -> None:
        """Not connected, because of ``error`` (logged when it is new; the broker's words escaped)."""
        error = printable(error)
        with self._lock:
            if self.connected or self.down_since is None:
                self.down_since = self.clock()
            self.connected = False
            new = error != self.last_error
            self.last_error = error
        if new:
            logger.warning("MQTT: %s", error)

    def close(self) -> None:
        """Publish ``offline`` (retained), disconnect cleanly (no last will) and stop paho's thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, connected = self._client, self.connected
        if client is None:
            return
        if connected:
            try:
                client.publish(self.availability_topic, "offline", qos=1, retain=True).wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass  # the connection went meanwhile: the broker sends the last will instead
        client.disconnect()
        client.loop_stop()
        self.connected = False

    # -- events -----------------------------------------------------------------------
    def publish_event(self, note: Notification) -> str | None:
        """Publish ``note`` on ``PREFIX/events`` (QoS 1); ``None`` once the broker acknowledged it,
        else why not. A publish that was not acknowledged in time is waited for again next time."""
        with self._lock:
            client, connected, held = self._client, self.connected, self._inflight.get((note.id, note.event_id))
            not_connected = f"not connected: {self.last_error}" if self.last_error else \
                f"not connected to the broker at {self.where}"
        if client is None:
            return "MQTT is not started"
        if held is None:
            if not connected:
                return not_connected
            info = client.publish(self.events_topic, note.payload, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: paho keeps it for reconnect
                return f"publish to {self.where} failed: {paho.error_string(info.rc)}"
            with self._lock:
                self._inflight[(note.id, note.event_id)] = (info, note.created)
            if info.rc == paho.MQTT_ERR_NO_CONN:  # the connection went just now: paho sends it on reconnect
                return f"not connected to the broker at {self.where} (sent again on reconnect)"
        else:
            info = held[0]
            if not info.is_published() and not connected:
                return f"{not_connected} (sent again on reconnect)"
        try:
            if info.rc == paho.MQTT_ERR_NO_CONN:  # paho's wait refuses such a publish, sent since: wait here
                deadline = time.monotonic() + self.ack_timeout_s
                while not info.is_published() and time.monotonic() < deadline:
                    time.sleep(0.05)
            else:
                info.wait_for_publish(self.ack_timeout_s)
            published = info.is_published()
        except (RuntimeError, ValueError) as exc:
            published, why = False, str(exc)
        else:
            why = f"not acknowledged by the broker at {self.where} within {self.ack_timeout_s:g} s"
        if published:
            with self._lock:
                self._inflight.pop((note.id, note.event_id), None)
            return None
        return why

    def forget_before(self, created: float) -> None:
        """Stop waiting for publishes of notifications created before ``created`` (expired)."""
        self._forget(lambda key, c: c < created, "a notification the broker never acknowledged was given up")

    def forget_event(self, event_id: str) -> None:
        """Stop waiting for publishes of ``event_id``'s notifications (the event was deleted)."""
        self._forget(lambda key, c: key[1] == event_id, f"a notification of deleted event {event_id} was taken back")

    def _forget(self, which: Callable[[tuple[int, str], float], bool], why: str) -> None:
        with self._lock:
            stuck = False
            for key in [k for k, (_, c) in self._inflight.items() if which(k, c)]:
                stuck |= not self._inflight.pop(key)[0].is_published()
        if stuck:  # paho would send it again at every reconnect (a broker that refuses it, forever)
            self.restart(why)

    def restart(self, why: str) -> None:
        """A new paho client, without the old one's queue of unacknowledged messages: those of the
        notifications still waited for are published again at their next try."""
        with self._lock:
            old, self._client = self._client, None
            self._inflight.clear()
            self._announced = {}
            self.connected = False
        if old is None or self._closed:
            return
        logger.warning("MQTT: %s; reconnecting to %s with a new client (its queue left behind)", why, self.where)
        old.on_disconnect = old.on_connect = old.on_connect_fail = None
        old.disconnect()
        old.loop_stop()
        self.start()

    # -- activity and discovery ---------------------------------------------------------
    def activity(self, camera: str, label: str, score: float, ts: float, uncertain: bool = False,
                 random_weights: bool = False, zone: str | None = None) -> float | None:
        """Note ``camera``'s (its ``zone``'s) current label; published now when connected and the
        stream's last message is a second old, else held (replacing any held one). When this
        starts a held one: the seconds until it is due (for :meth:`flush_activity`); else ``None``."""
        payload = activity_payload(camera, label, score, ts, uncertain, random_weights, zone)
        key = stream_key(camera, zone)
        now = time.monotonic()
        with self._lock:
            self._state[key] = payload
            due = self._sent_at.get(key, -math.inf) + ACTIVITY_INTERVAL_S
            client = self._client if self.connected and now >= due else None
            first_held = key not in self._unsent
            if client is not None:
                self._sent_at[key] = now
                self._unsent.pop(key, None)
            else:
                self._unsent[key] = due
        if client is not None:
            client.publish(self.activity_topic(key), payload, qos=0, retain=True)
            return None
        return max(0.0, due - now) if first_held else None

    def flush_activity(self) -> float | None:
        """Publish the held activity messages that are due (when connected); seconds until the next
        held one is due, or ``None`` when none is held."""
        now = time.monotonic()
        with self._lock:
            if not self.connected or self._client is None:
                return None
            due = [cam for cam, t in self._unsent.items() if t <= now]
            out = [(cam, self._state[cam]) for cam in due]
            for cam in due:
                del self._unsent[cam]
                self._sent_at[cam] = now
            later = min(self._unsent.values(), default=None)
            client = self._client
        for camera, payload in out:
            client.publish(self.activity_topic(camera), payload, qos=0, retain=True)
        return None if later is None else max(0.0, later - now)

    def discover(self, streams: list[str]) -> None:
        """Announce ``streams`` (``camera`` or ``camera/zone``) to Home Assistant now (when
        connected) and on every reconnect."""
        with self._lock:
            taken = {ha_stream_id(c): c for c in self._cameras}
            new = []
            for cam in streams:
                other = taken.setdefault(ha_stream_id(cam), cam)
                if other != cam:
                    logger.warning("MQTT: %r is not announced to Home Assistant: %r has its id "
                                   "'streamrec_%s'", cam, other, ha_stream_id(cam))
                elif cam not in self._cameras:
                    self._withdrawn.discard(cam)  # back before its removal was sent: nothing to remove
                    self._cameras.append(cam)
                    new.append(cam)
            client = self._client if self.connected else None
        if client is not None:
            self.publish_discovery(client, new)

    def withdraw(self, streams: list[str]) -> None:
        """Stop announcing ``streams`` (a removed camera, a zone deleted): Home Assistant removes
        their sensors (an empty retained discovery config) and their retained activity is cleared,
        now or, while the broker is away, at the next connection."""
        with self._lock:
            gone = [key for key in streams if key in self._cameras or key in self._state]
            self._cameras = [key for key in self._cameras if key not in gone]
            for key in gone:
                self._state.pop(key, None)
                self._unsent.pop(key, None)
            self._withdrawn.update(gone)
            client = self._client if self.connected else None
        if client is not None:
            self.publish_withdrawn(client)

    def publish_withdrawn(self, client: paho.Client) -> None:
        """The empty retained messages of the withdrawn streams (each once it was handed to paho)."""
        with self._lock:
            gone, self._withdrawn = sorted(self._withdrawn), set()
        base = self.config.discovery_prefix.strip("/")
        for key in gone:
            if self.config.homeassistant_discovery:
                client.publish(f"{base}/sensor/streamrec_{ha_stream_id(key)}/activity/config", b"", qos=1, retain=True)
            client.publish(self.activity_topic(key), b"", qos=1, retain=True)

    def announce(self, client: paho.Client, topic: str, payload: str) -> None:
        """A retained QoS 1 announcement (availability, a discovery config) on ``topic``, unless paho
        still holds the last one and sends it again itself: never a second copy at each reconnect."""
        with self._lock:
            last = self._announced.get(topic)
        if last is not None and last.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) and not last.is_published():
            return
        info = client.publish(topic, payload, qos=1, retain=True)
        with self._lock:
            self._announced[topic] = info

    def publish_discovery(self, client: paho.Client, cameras: list[str]) -> None:
        if not self.config.homeassistant_discovery:
            return
        base = self.config.discovery_prefix.strip("/")
        for key in cameras:
            topic = f"{base}/sensor/streamrec_{ha_stream_id(key)}/activity/config"
            try:
                self.announce(client, topic, json.dumps(discovery_config(self.prefix, key)))
            except ValueError as exc:  # a topic MQTT refuses: this stream only, never paho's thread
                logger.warning("MQTT: %r is not announced to Home Assistant: %s", key, exc)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"connected": self.connected, "last_error": self.last_error, "cameras": len(self._state),
                    "unacknowledged": len(self._inflight), "down_since": self.down_since}
