"""Zones: named regions of one camera's frame, each classified as a stream of its own.

A zone is a rectangle in fractions of the frame (``x, y`` its top-left corner, ``w, h`` its size;
``0..1``), or a polygon whose bounding box is classified. The capture crops each zone out of the
decoded frame *before* the model's reference resize and centre crop, so a zone gets the same
preprocessing a whole frame of that size would (small zones are upscaled).

A zone's labelled stream is keyed ``"<camera>/<zone>"`` (:func:`stream_key`); camera and zone
names never contain ``/``.

Example:
    >>> z = ZoneConfig.from_dict({"name": "rack", "x": 0.5, "y": 0.0, "w": 0.5, "h": 0.5}, camera="gym")
    >>> z.box(1920, 1080)
    (960, 0, 1920, 540)
    >>> stream_key("gym", "rack"), split_key("gym/rack"), split_key("gym")
    ('gym/rack', ('gym', 'rack'), ('gym', None))
    >>> ZoneConfig.parse_rect("0,0,0.5,0.5").w
    0.5
"""

from __future__ import annotations

import logging
import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from streamrec.errors import StreamrecError
from streamrec.validate import ascii_float, described

logger = logging.getLogger(__name__)

ZONES_MAX = 16  # per camera: each zone is one more window in every batch
ZONE_NAME_MAX_CHARS = 40
POLYGON_MAX_POINTS = 64
ZONE_KEYS = ("name", "x", "y", "w", "h", "polygon")
EPS = 1e-9


def check_name(name: Any, where: str) -> str:
    """A zone's name: 1-40 letters, digits, ``-``, ``_`` or ``.`` (it is a topic level and a URL part)."""
    if not isinstance(name, str) or not name or len(name) > ZONE_NAME_MAX_CHARS \
            or not all(c.isalnum() or c in "-_." for c in name) or not name.isascii() or set(name) == {"."}:
        raise StreamrecError(f"{where}: name: expected 1-{ZONE_NAME_MAX_CHARS} ASCII letters, digits, '-', '_' "
                             f"or '.' (not dots alone), got {name!r}")
    return name


MIN_SIZE = 0.01  # a zone's width and height, as fractions of the frame: smaller is a few pixels or none


def _fraction(value: Any, what: str) -> float:
    """``value`` as a float; a :class:`StreamrecError` naming ``what`` for anything but a finite number
    (a whole number of hundreds of digits, which no float holds, included)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (isinstance(value, int) and abs(value) > 2**53) or not math.isfinite(value):
        raise StreamrecError(f"{what}: expected a finite number (a fraction of the frame), got {described(value)}")
    return float(value) + 0.0  # -0.0 is 0.0: the config written back and the API say 0.0


@dataclass(frozen=True)
class ZoneConfig:
    """One zone of a camera: ``x, y, w, h`` as fractions of the frame (validated at construction).

    ``polygon`` (optional) is the outline drawn on the page, ``((x, y), ...)`` in fractions; the
    rectangle is then its bounding box.
    """

    name: str
    x: float
    y: float
    w: float
    h: float
    polygon: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        where = f"zone {self.name!r}"
        check_name(self.name, "zone")
        for key in ("x", "y", "w", "h"):
            object.__setattr__(self, key, _fraction(getattr(self, key), f"{where}: {key}"))
        if not (0.0 <= self.x < 1.0 and 0.0 <= self.y < 1.0):
            raise StreamrecError(f"{where}: x, y: expected the top-left corner inside the frame (0 <= x, y < 1), "
                                 f"got x={self.x:g}, y={self.y:g}")
        if not (self.w >= MIN_SIZE - EPS and self.h >= MIN_SIZE - EPS):  # the page's editor draws none smaller
            raise StreamrecError(f"{where}: w, h: expected a size of at least {MIN_SIZE:g} (of the frame), "
                                 f"got w={self.w:g}, h={self.h:g}")
        if self.x + self.w > 1.0 + EPS or self.y + self.h > 1.0 + EPS:
            raise StreamrecError(f"{where}: expected the zone inside the frame (x + w <= 1, y + h <= 1), "
                                 f"got x + w = {self.x + self.w:g}, y + h = {self.y + self.h:g}")

    @classmethod
    def from_dict(cls, d: Any, *, camera: str) -> "ZoneConfig":
        """A ``[[cameras.zones]]`` table (or a JSON object of the camera API)."""
        where = f"camera {camera!r}: zones"
        if not isinstance(d, dict):
            raise StreamrecError(f"{where}: expected a table with a name and x, y, w, h (or a polygon), got {described(d)}")
        unknown = sorted(set(d) - set(ZONE_KEYS))
        if unknown:
            raise StreamrecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(ZONE_KEYS)}")
        name = check_name(d.get("name"), f"camera {camera!r}: zone")
        if "polygon" in d:
            if any(k in d for k in "xywh"):
                raise StreamrecError(f"camera {camera!r}: zone {name!r}: expected x, y, w, h or a polygon, got both")
            return cls.from_polygon(name, d["polygon"], camera=camera)
        missing = [k for k in "xywh" if k not in d]
        if missing:
            raise StreamrecError(f"camera {camera!r}: zone {name!r}: expected x, y, w, h, missing {', '.join(missing)}")
        try:
            return cls(name, d["x"], d["y"], d["w"], d["h"])
        except StreamrecError as exc:
            raise StreamrecError(f"camera {camera!r}: {exc}") from None

    @classmethod
    def from_polygon(cls, name: str, points: Any, *, camera: str) -> "ZoneConfig":
        where = f"camera {camera!r}: zone {name!r}: polygon"
        if not isinstance(points, (list, tuple)) or not 3 <= len(points) <= POLYGON_MAX_POINTS:
            raise StreamrecError(f"{where}: expected 3-{POLYGON_MAX_POINTS} [x, y] points, got {described(points)}")
        pts = []
        for p in points:
            if not isinstance(p, (list, tuple)) or len(p) != 2:
                raise StreamrecError(f"{where}: expected [x, y] points, got {described(p)}")
            x, y = (_fraction(v, where) for v in p)
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise StreamrecError(f"{where}: expected points inside the frame (0..1), got [{x:g}, {y:g}]")
            pts.append((x, y))
        area = polygon_area(pts)
        if area < MIN_SIZE * MIN_SIZE:  # points on one line, or all but two the same: an outline of nothing
            raise StreamrecError(f"{where}: expected points enclosing an area of at least {MIN_SIZE * MIN_SIZE:g} "
                                 f"(of the frame), got {area:.3g} (points on one line?)")
        crossing = crossing_edges(pts)
        if crossing is not None:  # a bow tie: which side is the zone is anybody's guess
            (a, b), (c, d) = crossing
            raise StreamrecError(f"{where}: expected an outline that does not cross itself, got the edge "
                                 f"[{a[0]:g}, {a[1]:g}]-[{b[0]:g}, {b[1]:g}] crossing [{c[0]:g}, {c[1]:g}]-[{d[0]:g}, {d[1]:g}]")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, y0 = min(xs), min(ys)
        try:
            return cls(name, x0, y0, max(xs) - x0, max(ys) - y0, polygon=tuple(pts))
        except StreamrecError as exc:
            raise StreamrecError(f"camera {camera!r}: {exc}") from None

    @classmethod
    def parse_rect(cls, text: str, name: str = "zone") -> "ZoneConfig":
        """``"x,y,w,h"`` (fractions), as ``classify --zone`` takes it."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            x, y, w, h = (ascii_float(p) for p in parts)
        except ValueError:
            raise StreamrecError(f"--zone: expected x,y,w,h as four fractions of the frame, got {text!r}") from None
        try:
            return cls(name, x, y, w, h)
        except StreamrecError as exc:
            raise StreamrecError(f"--zone: {exc}") from None

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The zone in pixels of a ``width`` x ``height`` frame: ``(x0, y0, x1, y1)``, at least 1x1."""
        x0 = min(width - 1, int(round(self.x * width)))
        y0 = min(height - 1, int(round(self.y * height)))
        x1 = max(x0 + 1, min(width, int(round((self.x + self.w) * width))))
        y1 = max(y0 + 1, min(height, int(round((self.y + self.h) * height))))
        return x0, y0, x1, y1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "x": self.x, "y": self.y, "w": self.w, "h": self.h}
        if self.polygon is not None:
            out["polygon"] = [list(p) for p in self.polygon]
        return out

    def to_toml_dict(self) -> dict[str, Any]:
        """What ``[[cameras.zones]]`` holds for this zone (a polygon, or the rectangle)."""
        if self.polygon is not None:
            return {"name": self.name, "polygon": [list(p) for p in self.polygon]}
        return {"name": self.name, "x": self.x, "y": self.y, "w": self.w, "h": self.h}


def polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """The area a polygon's outline encloses (the shoelace formula), as a fraction of the frame.

    >>> polygon_area([(0, 0), (0.5, 0), (0.5, 0.5), (0, 0.5)]), polygon_area([(0, 0), (0.5, 0.5), (1, 1)])
    (0.25, 0.0)
    """
    n = len(points)
    return abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
                   for i in range(n))) / 2


Point = tuple[float, float]


def crossing_edges(points: Sequence[Point]) -> tuple[tuple[Point, Point], tuple[Point, Point]] | None:
    """Two edges of the closed outline through ``points`` that cross or overlap (edges that meet
    only at their shared corner do not count), or ``None`` for a simple polygon.

    >>> crossing_edges([(0, 0), (1, 0), (1, 1), (0, 1)]) is None
    True
    >>> crossing_edges([(0, 0), (0.8, 0.6), (0.8, 0), (0, 0.2)])
    (((0, 0), (0.8, 0.6)), ((0.8, 0), (0, 0.2)))
    """
    def side(o: Point, a: Point, b: Point) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def within(p: Point, a: Point, b: Point) -> bool:  # p, on the line of a-b, lies on the segment
        return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])

    def meet(a: Point, b: Point, c: Point, d: Point) -> bool:
        d1, d2, d3, d4 = side(c, d, a), side(c, d, b), side(a, b, c), side(a, b, d)
        if ((d1 > 0) != (d2 > 0) and d1 and d2) and ((d3 > 0) != (d4 > 0) and d3 and d4):
            return True  # a proper crossing
        return any(s == 0 and within(p, *seg) for s, p, seg in ((d1, a, (c, d)), (d2, b, (c, d)), (d3, c, (a, b)),
                                                                 (d4, d, (a, b))))

    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):  # neighbours share a corner: they may only fold back
                (a, b), (_, c) = (edges[i], edges[j]) if j == i + 1 else (edges[j], edges[i])
                back = (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0
                if side(a, b, c) == 0 and back:  # the next edge runs back along this one
                    return edges[i], edges[j]
            elif meet(*edges[i], *edges[j]):
                return edges[i], edges[j]
    return None


def parse_zones(items: Any, *, camera: str) -> tuple[ZoneConfig, ...]:
    """``[[cameras.zones]]`` of ``camera``: each valid, names unique, at most :data:`ZONES_MAX`."""
    if isinstance(items, tuple) and all(isinstance(z, ZoneConfig) for z in items):
        zones = items
    elif isinstance(items, (list, tuple)):
        zones = tuple(z if isinstance(z, ZoneConfig) else ZoneConfig.from_dict(z, camera=camera) for z in items)
    else:
        raise StreamrecError(f"camera {camera!r}: zones: expected [[cameras.zones]] tables, got {type(items).__name__}")
    if len(zones) > ZONES_MAX:
        raise StreamrecError(f"camera {camera!r}: zones: expected at most {ZONES_MAX}, got {len(zones)}")
    seen: set[str] = set()
    dupes = sorted({z.name for z in zones if z.name in seen or seen.add(z.name)})  # type: ignore[func-returns-value]
    if dupes:
        raise StreamrecError(f"camera {camera!r}: zones: expected unique names, got {', '.join(map(repr, dupes))} "
                             "more than once")
    pair = alike(z.name for z in zones)
    if pair:
        raise StreamrecError(f"camera {camera!r}: zones: expected names that differ in more than case, got "
                             f"{pair[0]!r} and {pair[1]!r}")
    return zones


def upscale_warnings(zones: Iterable[ZoneConfig], width: int, height: int, crop: int, *, camera: str) -> list[str]:
    """One line per zone whose pixels are fewer than the model's crop (``crop`` x ``crop``): it is
    upscaled, with less detail than the model saw in training."""
    out = []
    for z in zones:
        x0, y0, x1, y1 = z.box(width, height)
        if min(x1 - x0, y1 - y0) < crop:
            out.append(f"camera {camera!r}: zone {z.name!r} is {x1 - x0}x{y1 - y0} pixels of a {width}x{height} frame, "
                       f"smaller than the model's {crop}x{crop} crop: it is upscaled")
    return out


def alike(names: Iterable[str]) -> tuple[str, str] | None:
    """The first two different ``names`` that read as one (``Gym`` and ``gym``, ``ｇｙｍ`` and ``gym``,
    a composed and a decomposed accent): Home Assistant lower-cases its ids, and many file systems
    fold case; ``None`` when there are none.

    >>> alike(["rack", "Gym", "mat", "gym"]), alike(["rack", "mat"])
    (('Gym', 'gym'), None)
    """
    seen: dict[str, str] = {}
    for name in names:
        key = unicodedata.normalize("NFKC", name).casefold()
        if key in seen and seen[key] != name:
            return seen[key], name
        seen.setdefault(key, name)
    return None


def stream_key(camera: str, zone: str | None) -> str:
    """The key of a labelled stream: the camera's name, or ``"<camera>/<zone>"``."""
    return camera if zone is None else f"{camera}/{zone}"


def split_key(key: str) -> tuple[str, str | None]:
    """``(camera, zone)`` of a :func:`stream_key` (``zone`` is ``None`` for the whole frame)."""
    camera, sep, zone = key.partition("/")
    return (camera, zone) if sep else (camera, None)
