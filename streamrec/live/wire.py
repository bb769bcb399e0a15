"""The websocket's JSON messages as types: one msgspec Struct per message, told apart by ``type``.

The server builds its messages as plain dicts (:mod:`streamrec.live.messages`,
:mod:`streamrec.events.manager`, :mod:`streamrec.serve.core`); these types say what each one
holds, check a message (:func:`validate_message`) and give its JSON Schema
(:func:`message_schema`, served at ``GET /api/schema``).

Example:
    >>> validate_message({"type": "removed", "camera": "pool"})
    Removed(camera='pool')
    >>> validate_message({"type": "removed"})
    Traceback (most recent call last):
    ...
    ValueError: removed: object missing required field `camera`
    >>> sorted(message_schema()["discriminator"]["mapping"])
    ['event', 'event_deleted', 'prediction', 'removed', 'status']
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import typing
from typing import Annotated, Any, Literal, Union

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

from streamrec.catalog import MEANINGLESS, UNCERTAIN
from streamrec.zones import POLYGON_MAX_POINTS, ZONE_NAME_MAX_CHARS, ZONES_MAX

logger = logging.getLogger(__name__)

TOP_K = 5  # classes in a prediction's ``top``
BIG = sys.float_info.max  # the largest finite float: ``le=BIG`` refuses infinity (and NaN)

Score = Annotated[float, Meta(ge=0, le=1, description="a softmax score, 0..1")]
Millis = Annotated[float, Meta(ge=0, le=BIG, description="finite milliseconds, >= 0")]
Rate = Annotated[float, Meta(ge=0, le=BIG, description="finite frames per second, >= 0")]
Seconds = Annotated[float, Meta(ge=-BIG, le=BIG, description="a finite time, in Unix seconds")]
Name = Annotated[str, Meta(min_length=1)]
ZoneName = Annotated[str, Meta(pattern=rf"^[A-Za-z0-9._-]{{1,{ZONE_NAME_MAX_CHARS}}}$",
                               description="a zone's name: ASCII letters, digits, '-', '_' or '.'")]
Corner = Annotated[float, Meta(ge=0, lt=1, description="a fraction of the frame, 0 <= v < 1")]
Size = Annotated[float, Meta(gt=0, le=1, description="a fraction of the frame, 0 < v <= 1")]
Fraction = Annotated[float, Meta(ge=0, le=1, description="a fraction of the frame, 0..1")]
# the values of streamrec.live.capture.CaptureState, spelled out: importing the capture would load
# the models' preprocessing (torch) into every process that builds or checks a message
CaptureStateName = Literal["starting", "running", "reconnecting", "ended", "stopped"]
# the cluster's source states besides: its capture actor failed to start, or did not answer in time
SourceStateName = Literal[CaptureStateName, "error", "unreachable"]

# fields whose constraint reads better in words than as msgspec's regex
HINTS = {"zone": "expected a zone's name or null (the whole frame)"}


class TopEntry(Struct, forbid_unknown_fields=True):
    """One of a prediction's best classes."""

    label: Name
    score: Score


class Window(Struct, forbid_unknown_fields=True):
    """The frames a prediction classified: the first and last frame's times, and how many."""

    start_ts: Seconds
    end_ts: Seconds
    frames: Annotated[int, Meta(ge=1)]

    def __post_init__(self) -> None:
        if self.start_ts > self.end_ts:
            raise ValueError(f"expected start_ts <= end_ts, got start_ts {self.start_ts} > end_ts {self.end_ts}")


class Prediction(Struct, tag_field="type", tag="prediction", forbid_unknown_fields=True):
    """A label of a camera's whole frame (``zone`` null) or of one of its zones."""

    seq: Annotated[int, Meta(ge=0)]
    label: Name
    score: Score
    raw_label: Name
    raw_score: Score
    top: Annotated[list[TopEntry], Meta(min_length=1, max_length=TOP_K)]
    window: Window
    infer_ms: Millis
    latency_ms: Millis
    capture_fps: Rate
    camera: Name
    zone: ZoneName | None
    uncertain: bool = False
    meaningless: bool = False

    def __post_init__(self) -> None:
        scores = [t.score for t in self.top]
        if any(a < b for a, b in zip(scores, scores[1:])):
            raise ValueError(f"top: expected scores in descending order, got {scores}")


class Zone(Struct, forbid_unknown_fields=True):
    """A zone as a status message draws it: its box, and its outline when it has one."""

    name: ZoneName
    x: Corner
    y: Corner
    w: Size
    h: Size
    polygon: Annotated[list[tuple[Fraction, Fraction]], Meta(min_length=3, max_length=POLYGON_MAX_POINTS)] | None = None


class Source(Struct):
    """A camera's capture stats; more fields than these come along (``frames``, ``dropped``...)."""

    state: SourceStateName | None = None
    error: str | None = None


class Status(Struct, tag_field="type", tag="status"):
    """A camera's status, once a second. ``inference`` holds its label stats; fields beyond these
    are allowed (``streamrec cluster`` adds ``node``, the machine that captures it)."""

    camera: Name
    source: Source
    inference: dict[str, Any]
    model: str | None
    device: str | None
    backend: str | None
    meaningless: bool
    warning: str | None
    zones: Annotated[list[Zone], Meta(max_length=ZONES_MAX)]
    whole_frame: bool
    node: str | None = None


class Event(Struct, tag_field="type", tag="event", forbid_unknown_fields=True):
    """An event opened (``end_ts`` null) or closed."""

    id: Name
    rule: Name
    camera: Name
    zone: ZoneName | None
    label: Name
    start_ts: Seconds
    end_ts: Seconds | None
    peak_score: Score
    mean_score: Score
    clip: Name
    thumbnail: Name
    state: Literal["open", "closed"]

    def __post_init__(self) -> None:
        if (self.state == "open") != (self.end_ts is None):
            raise ValueError(f"state: expected 'open' exactly when end_ts is null, got {self.state!r} with "
                             f"end_ts {self.end_ts}")


class EventDeleted(Struct, tag_field="type", tag="event_deleted", forbid_unknown_fields=True):
    """An event deleted through the API: pages drop it."""

    id: Name
    state: Literal["deleted"]


class Removed(Struct, tag_field="type", tag="removed", forbid_unknown_fields=True):
    """A camera removed at run time: nothing of it follows."""

    camera: Name


Message = Union[Prediction, Status, Event, EventDeleted, Removed]
TAGS = tuple(t.__struct_config__.tag for t in typing.get_args(Message))  # each message's ``type``
_PATH = re.compile(r"\.(\w+)|\[(\d+)\]")


def validate_message(obj: Any) -> Message:
    """``obj`` (a message as ``json.loads`` gives it) as its Struct; ``ValueError`` naming the
    first field that breaks the schema (``prediction.score: expected `float` <= 1.0, got 1.5``)."""
    try:
        return msgspec.convert(obj, Message, strict=True)
    except msgspec.ValidationError as exc:
        raise ValueError(describe(obj, str(exc))) from None


def describe(obj: Any, error: str) -> str:
    """msgspec's ``error`` about ``obj`` as ``kind.field: expected ..., got ...``."""
    detail, _, where = error.partition(" - at `$")
    path = where.rstrip("`")
    kind = obj.get("type") if isinstance(obj, dict) and obj.get("type") in TAGS else "message"
    field = f"{kind}{path}"
    if not path and re.match(r"\w+: ", detail):  # a check of several fields names the one it read first
        return f"{kind}.{detail}"
    found, value = value_at(obj, path)
    if path.lstrip(".") in HINTS:
        return f"{field}: {HINTS[path.lstrip('.')]}, got {value!r}"
    choices = choices_at(kind, path) if detail.startswith("Invalid") else None
    if choices:
        return f"{field}: expected one of {', '.join(map(repr, choices))}, got {value!r}"
    detail = detail[:1].lower() + detail[1:]
    if found and detail.startswith("expected") and ", got" not in detail:
        detail += f", got {value!r}"
    return f"{field}: {detail}"


@functools.cache
def kinds() -> dict[str, msgspec.inspect.StructType]:
    """Each message's type description, by its ``type``."""
    return {t.tag: t for t in msgspec.inspect.type_info(Message).types}


def choices_at(kind: str, path: str) -> tuple[Any, ...] | None:
    """The values a fixed-set field of message ``kind`` at ``path`` may take (``None``: not such a field)."""
    if path == ".type":
        return TAGS
    node: Any = kinds().get(kind)
    for key, index in _PATH.findall(path):
        node = not_null(node)
        if key and isinstance(node, msgspec.inspect.StructType):
            node = next((f.type for f in node.fields if f.name == key), None)
        elif index and isinstance(node, msgspec.inspect.ListType):
            node = node.item_type
        else:
            return None
    node = not_null(node)
    return node.values if isinstance(node, msgspec.inspect.LiteralType) else None


def not_null(node: Any) -> Any:
    """The type of an ``X | None`` field: ``X`` (any other type as it is)."""
    if isinstance(node, msgspec.inspect.UnionType):
        return next(t for t in node.types if not isinstance(t, msgspec.inspect.NoneType))
    return node


def value_at(obj: Any, path: str) -> tuple[bool, Any]:
    """``(found, value)`` of ``obj`` at a msgspec path such as ``.top[0].score``."""
    for key, index in _PATH.findall(path):
        try:
            obj = obj[int(index)] if index else obj[key]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, obj


def message_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of every websocket message: one of the types, picked by ``type``;
    its ``x-streamrec`` holds the values the page compares with: the label of no clear answer, and
    the warning for a model with random weights."""
    return {**msgspec.json.schema(Message), "x-streamrec": {"uncertain": UNCERTAIN, "meaningless": MEANINGLESS}}
