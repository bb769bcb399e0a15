"""An event and a notification as streamrec keeps them: the :class:`Event` being followed, a
:class:`Notification` of the outbox, and an events row as read back (its values checked) and as
the API gives it.

Example:
    >>> ev = Event("e1", "lifting", "rack-1", "deadlifting", start_ts=100.0, peak_score=0.8, mean_score=0.7)
    >>> ev.to_json()["state"], ev.to_json()["clip"]
    ('open', '/api/events/e1/clip.mp4')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamrec.database import INTEGER, NONE, NUMBER, TEXT, typed_row
from streamrec.live.packets import PLAYS_IN_BROWSERS
from streamrec.redact import printable

EVENT_COLUMNS = ("id", "rule", "camera", "label", "start_ts", "end_ts", "last_ts", "peak_score", "mean_score",
                 "clip", "thumbnail", "clip_bytes", "state", "clip_codec", "zone")


@dataclass
class Event:
    """One event. ``end_ts`` is ``None`` while it is open; ``zone`` is ``None`` for the camera's
    whole frame, else the zone of ``camera`` whose labels opened it."""

    id: str
    rule: str
    camera: str
    label: str
    start_ts: float
    peak_score: float
    mean_score: float
    end_ts: float | None = None
    peak_ts: float | None = None  # when the peak score was seen (the thumbnail's frame)
    zone: str | None = None

    @property
    def state(self) -> str:
        return "open" if self.end_ts is None else "closed"

    def to_json(self) -> dict[str, Any]:
        """The event as the API, the websocket and the notifications give it."""
        return {"id": self.id, "rule": self.rule, "camera": self.camera, "zone": self.zone, "label": self.label,
                "start_ts": self.start_ts, "end_ts": self.end_ts, "peak_score": round(self.peak_score, 4),
                "mean_score": round(self.mean_score, 4), "clip": f"/api/events/{self.id}/clip.mp4",
                "thumbnail": f"/api/events/{self.id}/thumb.jpg", "state": self.state}


@dataclass(frozen=True)
class Notification:
    id: int
    event_id: str
    kind: str  # event_start | event_end
    channel: str  # webhook | mqtt
    payload: str  # the JSON body
    created: float
    attempts: int


EVENT_KINDS = {"id": TEXT, "rule": TEXT, "camera": TEXT, "label": TEXT, "start_ts": NUMBER, "end_ts": NUMBER + NONE,
               "last_ts": NUMBER, "peak_score": NUMBER, "mean_score": NUMBER, "clip": TEXT + NONE,
               "thumbnail": TEXT + NONE, "clip_bytes": INTEGER, "state": TEXT, "clip_codec": TEXT + NONE,
               "zone": TEXT + NONE}


def event_row(values: tuple[Any, ...]) -> dict[str, Any]:
    """A row of the events table as a dict of :data:`EVENT_COLUMNS`, its values checked (:func:`typed_row`)."""
    return typed_row(EVENT_COLUMNS, values, EVENT_KINDS, f"an event of the events database ({printable(str(values[0]), limit=40)})")


def row_event(row: dict[str, Any]) -> dict[str, Any]:
    """An events row as the API gives it: ``clip`` and ``thumbnail`` are their addresses, ``None``
    for a file the event does not have (no clip recorded; no thumbnail yet: it is written when the
    event closes); ``clip_codec`` is the clip's video codec (``None``: no clip, or one recorded
    before codecs were noted) and ``clip_plays_in_browser`` whether a browser plays it (``False``:
    HEVC, MJPEG, MPEG-4 Part 2..., a download for a desktop player)."""
    ev = Event(row["id"], row["rule"], row["camera"], row["label"], row["start_ts"], row["peak_score"],
               row["mean_score"], end_ts=row["end_ts"], zone=row.get("zone"))
    codec = row.get("clip_codec") if row["clip"] else None
    out = ev.to_json()
    out.update(clip=out["clip"] if row["clip"] else None, thumbnail=out["thumbnail"] if row.get("thumbnail") else None)
    return {**out, "has_clip": bool(row["clip"]), "clip_bytes": row["clip_bytes"], "clip_codec": codec,
            "clip_plays_in_browser": None if codec is None else codec in PLAYS_IN_BROWSERS}
