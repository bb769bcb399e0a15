"""Configuration of events: ``[[rules]]``, ``[notify.webhook]``, ``[notify.mqtt]`` and
``[recording]``, as frozen dataclasses validated at construction (read with the cameras' TOML).

Example:
    >>> rule = RuleConfig.from_dict({"name": "lifting", "labels": ["deadlifting"], "min_seconds": 2})
    >>> rule.min_seconds, rule.end_seconds, rule.notify
    (2.0, 3.0, ())
    >>> RuleConfig.from_dict({"name": "x", "labels": ["a"], "min_seconds": -1})
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: [[rules]] 'x': min_seconds: expected >= 0 seconds, got -1.0
    >>> MqttConfig.from_dict({"url": "mqtts://u:p@broker"}).port, WebhookConfig.from_dict({"url": "ftp://h"})
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: [notify.webhook] url: expected an http:// or https:// URL, got 'ftp://h'
"""

from __future__ import annotations

import os
import ssl
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamrec.errors import StreamrecError, require
from streamrec.fsutil import special_file
from streamrec.notify_checks import check_topic, check_user, ha_object_id, ha_stream_id, url_parts
from streamrec.redact import control_characters, mask_credentials, printable
from streamrec.validate import check_types, described, unknown_keys
from streamrec.zones import check_name, split_key

CHANNELS = ("webhook", "mqtt")
MAX_PACKET_RING_MB = 1024  # [recording] packet_ring_mb: each camera's ring of packets, in memory
MIN_PACKET_RING_MB = 1  # less holds no keyframe of most cameras: no clip would ever be recorded


def text_tuple(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise StreamrecError(f"{where}: expected a list of names, got {described(value)}")
    return tuple(v.strip() for v in value)


def visible(text: str) -> str:
    """``text`` without blanks and invisible format characters (zero-width spaces, a byte order mark)."""
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Cf")


def tls_context(ca_file: str | None, where: str) -> ssl.SSLContext:
    """The TLS settings of a notification channel: the system's CA certificates, or only those
    of ``ca_file`` (a PEM file: a home server's own CA); host names are checked either way.
    A ``ca_file`` that cannot be read, or is blank (``cafile=""`` would trust the system's CAs), is
    a :class:`StreamrecError` naming ``where``."""
    if ca_file is not None and not ca_file.strip():
        raise StreamrecError(f"{where} ca_file: expected a PEM file of CA certificates, got {ca_file!r}")
    kind = None if ca_file is None else "a NUL character" if "\0" in ca_file else special_file(Path(ca_file))
    if kind is not None:  # a FIFO would be read forever, a NUL is no path
        raise StreamrecError(f"{where} ca_file: expected a PEM file of CA certificates, got {ca_file!r} ({kind})")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise StreamrecError(f"{where} ca_file: expected a PEM file of CA certificates, got {ca_file!r} "
                             f"({reason})") from None


WEBHOOK_TIMEOUT_MAX_S = 3600  # one delivery's deadline


def floats(d: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``d`` with its integer values of ``names`` as floats (TOML's ``2`` where seconds are meant)."""
    return {k: float(v) if k in names and isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**53 else v
            for k, v in d.items()}  # a larger int is left for check_types to refuse (no float holds it)


@dataclass(frozen=True)
class RuleConfig:
    """When an activity becomes an event: one of ``labels`` (or a label of ``groups``) on one of
    ``cameras`` (empty: every camera) with a smoothed score of at least ``min_score``, held for
    ``min_seconds``; it ends when gone for ``end_seconds``; then no new event of this rule on this
    camera for ``cooldown_seconds``. ``notify`` names the channels told of its start and end.
    ``zones``: the rule watches those zones' labels (of each camera that has them), each zone on
    its own; without, it watches the cameras' whole frames only."""

    name: str
    labels: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    min_score: float = 0.5
    min_seconds: float = 2.0
    end_seconds: float = 3.0
    cooldown_seconds: float = 30.0
    notify: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"[[rules]] {self.name!r}: "
        check_types(self, prefix=where)
        if not self.name.strip() or len(self.name.encode()) > 64 or self.name != self.name.strip():
            raise StreamrecError(f"[[rules]] name: expected 1-64 bytes of text without blanks around it, "
                                 f"got {self.name!r}")
        if control_characters(self.name):  # a name is logged, shown and stored: one line, drawn as written
            raise StreamrecError(f"[[rules]] name: expected text without control characters, line breaks or "
                                 f"bidirectional overrides, got {printable(repr(self.name))} ({control_characters(self.name)[0]})")
        if not self.labels and not self.groups:
            raise StreamrecError(f"{where}expected labels = [...] or groups = [...], got neither")
        if not 0 <= self.min_score <= 1:
            raise StreamrecError(f"{where}min_score: expected 0..1, got {self.min_score}")
        for name in ("min_seconds", "end_seconds", "cooldown_seconds"):
            if getattr(self, name) < 0:
                raise StreamrecError(f"{where}{name}: expected >= 0 seconds, got {getattr(self, name)}")
        bad = [c for c in self.notify if c not in CHANNELS]
        if bad:
            raise StreamrecError(f"{where}notify: expected some of {', '.join(CHANNELS)}, got {bad[0]!r}")
        for zone in self.zones:
            check_name(zone, f"{where}zones")
        from streamrec.catalog import kinetics_group_names  # a fixed list, read without torch

        unknown = [g for g in self.groups if g not in kinetics_group_names()]
        if unknown:
            raise StreamrecError(f"{where}groups: no group {printable(repr(unknown[0]), limit=80)}; expected one of "
                                 f"{', '.join(kinetics_group_names())}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RuleConfig":
        unknown_keys(cls, d, "[[rules]]")
        if not isinstance(d.get("name"), str):
            raise StreamrecError(f"[[rules]] name: expected a name, got {described(d.get('name'))}")
        d = floats(d, ("min_score", "min_seconds", "end_seconds", "cooldown_seconds"))
        for key in ("labels", "groups", "cameras", "notify", "zones"):
            if key in d:
                d = {**d, key: text_tuple(d[key], f"[[rules]] {d['name']!r}: {key}")}
        return cls(**d)


@dataclass(frozen=True)
class WebhookConfig:
    """A JSON POST to ``url`` on each event's start and end, signed with HMAC-SHA256 of the body
    under ``secret`` (header ``X-Streamrec-Signature: sha256=<hex>``); ``sign = false`` sends it
    unsigned, without a secret. ``timeout``: seconds for the whole delivery, from connecting to
    the end of the answer."""

    url: str
    secret: str | None = None
    sign: bool = True
    timeout: float = 10.0
    ca_file: str | None = None  # https://: trust only these CA certificates (PEM), not the system's

    def __post_init__(self) -> None:
        check_types(self, prefix="[notify.webhook] ")
        scheme = url_parts(self.url, "[notify.webhook] url", "an http:// or https:// URL")[0]
        if scheme not in ("http", "https"):
            raise StreamrecError(f"[notify.webhook] url: expected an http:// or https:// URL, "
                                 f"got {mask_credentials(self.url)!r}")
        if not 0 < self.timeout <= WEBHOOK_TIMEOUT_MAX_S:
            raise StreamrecError(f"[notify.webhook] timeout: expected > 0 and at most {WEBHOOK_TIMEOUT_MAX_S} "
                                 f"seconds, got {self.timeout}")
        if self.ca_file is not None:
            if scheme != "https":
                raise StreamrecError(f"[notify.webhook] ca_file: expected an https:// url with it, "
                                     f"got {mask_credentials(self.url)!r}")
            tls_context(self.ca_file, "[notify.webhook]")
        if self.sign and not visible(self.secret or ""):
            raise StreamrecError(f"[notify.webhook] secret: expected a secret to sign with (or sign = false to send "
                                 f"unsigned), got {self.secret!r}")
        if not self.sign and visible(self.secret or ""):
            raise StreamrecError("[notify.webhook] secret: expected no secret with sign = false, got one")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WebhookConfig":
        unknown_keys(cls, d, "[notify.webhook]")
        return cls(**floats(d, ("timeout",)))


@dataclass(frozen=True)
class MqttConfig:
    """An MQTT broker (``mqtt://[user:pass@]host[:1883]``, TLS with ``mqtts://``, port 8883)."""

    url: str
    topic_prefix: str = "streamrec"
    homeassistant_discovery: bool = False
    discovery_prefix: str = "homeassistant"
    ca_file: str | None = None  # mqtts://: trust only these CA certificates (PEM), not the system's

    def __post_init__(self) -> None:
        check_types(self, prefix="[notify.mqtt] ")
        scheme = url_parts(self.url, "[notify.mqtt] url", "mqtt://HOST[:PORT] or mqtts://...")[0]
        if scheme not in ("mqtt", "mqtts"):
            raise StreamrecError(f"[notify.mqtt] url: expected mqtt://HOST[:PORT] or mqtts://..., "
                                 f"got {mask_credentials(self.url)!r}")
        if self.ca_file is not None:
            if scheme != "mqtts":
                raise StreamrecError(f"[notify.mqtt] ca_file: expected an mqtts:// url with it, "
                                     f"got {mask_credentials(self.url)!r}")
            tls_context(self.ca_file, "[notify.mqtt]")
        check_user(self.url)
        rest = urlsplit(self.url)
        if rest.path not in ("", "/") or rest.query:
            raise StreamrecError(f"[notify.mqtt] url: expected mqtt://HOST[:PORT] without a path or query (the "
                                 f"topics are set by topic_prefix), got {mask_credentials(self.url)!r}")
        for name in ("topic_prefix", "discovery_prefix"):  # blanks alone, a no-break space too
            value = getattr(self, name)
            if isinstance(value, str) and value.strip("/") and not "".join(value.split("/")).strip():
                raise StreamrecError(f"[notify.mqtt] {name}: expected an MQTT topic (UTF-8 text without + or #, NUL or "
                                     f"control characters), got {value!r} (blank)")
        check_topic(self.topic_prefix, "[notify.mqtt] topic_prefix")
        check_topic(self.topic_prefix.strip("/") + "/availability", "[notify.mqtt] topic_prefix")
        check_topic(self.discovery_prefix, "[notify.mqtt] discovery_prefix")
        check_topic(self.discovery_prefix.strip("/") + "/sensor/streamrec_/activity/config",
                    "[notify.mqtt] discovery_prefix")
        require("paho", "mqtt", "[notify.mqtt]")  # paho-mqtt, an extra: said with the config, before models load

    def topics(self, key: str) -> list[str]:
        """The topics published for a labelled stream (``camera`` or ``camera/zone``): its activity,
        and its Home Assistant discovery config (with ``homeassistant_discovery``)."""
        out = [f"{self.topic_prefix.strip('/')}/{key}/activity"]
        if self.homeassistant_discovery:
            out.append(f"{self.discovery_prefix.strip('/')}/sensor/streamrec_{ha_stream_id(key)}/activity/config")
        return out

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MqttConfig":
        unknown_keys(cls, d, "[notify.mqtt]")
        return cls(**d)


@dataclass(frozen=True)
class RecordingConfig:
    """Event clips: ``pre_seconds`` before an event's start to ``post_seconds`` after its end, at
    most ``max_seconds`` long, in ``dir``; clips older than ``retention_days`` or past ``max_gb``
    in all (the oldest first) are deleted with their events. ``packet_ring_mb``: each camera's ring
    of compressed packets."""

    enabled: bool = True
    pre_seconds: float = 5.0
    post_seconds: float = 5.0
    max_seconds: float = 120.0
    dir: str = "~/.local/share/streamrec/events"
    retention_days: float = 14.0
    max_gb: float = 20.0
    packet_ring_mb: float = 16.0

    def __post_init__(self) -> None:
        check_types(self, prefix="[recording] ")
        if not self.dir.strip() or "\0" in self.dir:  # "" would be the working folder: retention would sweep it
            raise StreamrecError(f"[recording] dir: expected a folder's path, got {self.dir!r}")
        for name in ("pre_seconds", "post_seconds"):
            if getattr(self, name) < 0:
                raise StreamrecError(f"[recording] {name}: expected >= 0 seconds, got {getattr(self, name)}")
        for name in ("max_seconds", "retention_days", "max_gb", "packet_ring_mb"):
            if not getattr(self, name) > 0:
                raise StreamrecError(f"[recording] {name}: expected > 0, got {getattr(self, name)}")
        if self.pre_seconds >= self.max_seconds:  # the clip would be cut before the event begins
            raise StreamrecError(f"[recording] pre_seconds: expected less than max_seconds ({self.max_seconds}: a clip "
                                 f"starts pre_seconds before its event and stops at max_seconds), got {self.pre_seconds}")
        if not self.packet_ring_mb <= MAX_PACKET_RING_MB:  # inf too: each camera's ring is held in memory
            raise StreamrecError(f"[recording] packet_ring_mb: expected at most {MAX_PACKET_RING_MB} MB per camera, "
                                 f"got {self.packet_ring_mb}")
        if self.packet_ring_mb < MIN_PACKET_RING_MB:
            raise StreamrecError(f"[recording] packet_ring_mb: expected at least {MIN_PACKET_RING_MB} MB per camera "
                                 f"(a smaller ring holds no keyframe to start a clip from), got {self.packet_ring_mb}")

    @property
    def folder(self) -> Path:
        return Path(os.path.expanduser(self.dir))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RecordingConfig":
        unknown_keys(cls, d, "[recording]")
        return cls(**floats(d, ("pre_seconds", "post_seconds", "max_seconds", "retention_days", "max_gb",
                                "packet_ring_mb")))


@dataclass(frozen=True)
class NotifyConfig:
    """The channels; ``degraded_after_seconds``: how long a channel may fail, or one delivery take,
    before ``/healthz`` reads ``degraded`` naming it."""

    webhook: WebhookConfig | None = None
    mqtt: MqttConfig | None = None
    degraded_after_seconds: float = 90.0

    def __post_init__(self) -> None:
        check_types(self, prefix="[notify] ")
        if not self.degraded_after_seconds > 0:
            raise StreamrecError(f"[notify] degraded_after_seconds: expected > 0 seconds, "
                                 f"got {self.degraded_after_seconds}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NotifyConfig":
        unknown_keys(cls, d, "[notify]")
        extra = floats({k: v for k, v in d.items() if k not in CHANNELS}, ("degraded_after_seconds",))
        return cls(webhook=WebhookConfig.from_dict(d["webhook"]) if "webhook" in d else None,
                   mqtt=MqttConfig.from_dict(d["mqtt"]) if "mqtt" in d else None, **extra)


def check_mqtt_cameras(mqtt: MqttConfig | None, streams: list[str]) -> None:
    """The labelled streams' MQTT topics are valid (``camera`` or ``camera/zone``), and no two
    streams share a Home Assistant id."""
    if mqtt is None:
        return
    owner: dict[str, str] = {}
    for key in streams:
        camera, zone = split_key(key)
        what = f"camera {camera!r}" if zone is None else f"zone {zone!r} of camera {camera!r}"
        for topic in mqtt.topics(key):
            check_topic(topic, f"{what}: its MQTT topic")
        oid = ha_stream_id(key)
        alike = oid.lower()  # Home Assistant lower-cases an entity id: Gym__rack and gym/rack are one
        if mqtt.homeassistant_discovery and alike in owner:
            kinds = "cameras" if "/" not in owner[alike] + key else "streams"
            raise StreamrecError(f"[notify.mqtt] homeassistant_discovery: {kinds} {owner[alike]!r} and {key!r} would "
                                 f"share the Home Assistant id 'streamrec_{alike}'; expected distinct ids, rename one")
        owner[alike] = key
    if mqtt.homeassistant_discovery:
        check_ha_devices([split_key(key)[0] for key in streams])


def check_ha_devices(cameras: list[str]) -> None:
    """No two cameras share a Home Assistant device id (a camera whose zones are its only streams
    has a device too, though no sensor of its own)."""
    device: dict[str, str] = {}
    for camera in dict.fromkeys(cameras):
        alike = ha_object_id(camera).lower()
        if alike in device:
            raise StreamrecError(f"[notify.mqtt] homeassistant_discovery: cameras {device[alike]!r} and {camera!r} would "
                                 f"share the Home Assistant device 'streamrec_{alike}'; expected distinct ids, rename one")
        device[alike] = camera


def check_rules(rules: tuple[RuleConfig, ...], notify: NotifyConfig, cameras: list[str],
                streams: list[str] | None = None) -> None:
    """Rules that cannot work with the rest of the config: a duplicate name, an unknown camera or
    zone, a channel that is not configured. ``streams``: the labelled streams' keys (``camera``
    or ``camera/zone``; default: the ``cameras``' whole frames)."""
    streams = list(cameras) if streams is None else streams
    check_mqtt_cameras(notify.mqtt, streams)
    names = [r.name for r in rules]
    dupes = sorted(n for n, k in Counter(names).items() if k > 1)
    if dupes:
        raise StreamrecError(f"[[rules]]: rule names must be unique, got {dupes[0]!r} more than once")
    for rule in rules:
        for cam in rule.cameras:
            if cam not in cameras:
                raise StreamrecError(f"[[rules]] {rule.name!r}: cameras: no camera {cam!r}; expected one of "
                                     f"{', '.join(cameras)}")
        check_rule_zones(rule, streams)
        for channel in rule.notify:
            if getattr(notify, channel) is None:
                raise StreamrecError(f"[[rules]] {rule.name!r}: notify: {channel} needs a [notify.{channel}] table")


def check_rule_zones(rule: RuleConfig, streams: list[str]) -> None:
    """Each of ``rule``'s zones is a zone of one of its cameras (of any camera, without ``cameras``)."""
    why = rule_zones_problem(rule, streams)
    if why:
        raise StreamrecError(why)


def rule_zones_problem(rule: RuleConfig, streams: list[str]) -> str | None:
    """Why ``rule``'s zones do not work with the labelled ``streams`` (a zone none of its cameras
    has), or None."""
    have = sorted({z for c, z in map(split_key, streams) if z is not None and (not rule.cameras or c in rule.cameras)})
    for zone in rule.zones:
        if zone not in have:
            of = f"cameras {', '.join(rule.cameras)}" if rule.cameras else "any camera"
            expected = f"expected one of {', '.join(have)}" if have else "expected [[cameras.zones]] with that name"
            return f"[[rules]] {rule.name!r}: zones: no zone {zone!r} on {of}; {expected}"
    return None
