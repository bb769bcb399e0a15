"""Rules over a camera's smoothed labels: when an activity holds long enough it opens an event,
when it has been gone long enough the event closes.

Each (rule, camera, zone) is a small state machine fed with every prediction's smoothed label,
score and window end time (:meth:`RuleEngine.update`): the label must be one of the rule's (or of
its groups) with at least ``min_score`` for ``min_seconds`` to open an event (its start is when
the label began; uncertain labels for less than ``end_seconds`` do not interrupt it); while open, each matching label extends it and counts towards its peak and mean
score; ``end_seconds`` without one closes it at the last matching label, and so does a pause of
every label (an outage: a file that ended, a camera reconnecting) longer than ``end_seconds`` and
than the stream's outage (:class:`~streamrec.live.segments.Cadence`), seen at the next label or
by :meth:`RuleEngine.expire`; then ``cooldown_seconds``
pass before the rule opens another event on that camera (an activity that began during the cooldown
and still holds when it is over opens one then, dated from the activity's own first label). An
event deleted while open (:meth:`RuleEngine.discard`) is followed silently to the end of its
activity: it never closes, and only an activity that starts anew opens the next one.

A rule with ``zones`` watches only those zones' labels (of each camera that has them), each zone
on its own (its own cooldown, its own open event); a rule without watches whole frames only.

Example:
    >>> from streamrec.event_config import RuleConfig
    >>> eng = RuleEngine([RuleConfig("run", labels=("running",), min_seconds=1.0, end_seconds=2.0)],
    ...                  new_id=lambda ev: "e1")
    >>> [eng.update("cam", "running", 0.8, t) for t in (10.0, 10.5)]
    [[], []]
    >>> [(c.kind, c.event.start_ts) for c in eng.update("cam", "running", 0.9, 11.0)]
    [('start', 10.0)]
    >>> eng.update("cam", "walking", 0.9, 12.0), [(c.kind, c.event.end_ts) for c in eng.update("cam", "walking", 0.9, 13.5)]
    ([], [('end', 11.0)])
"""

from __future__ import annotations

import difflib
import math
import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from streamrec.errors import StreamrecError
from streamrec.event_config import RuleConfig
from streamrec.events.store import Event
from streamrec.live.segments import Cadence


@dataclass(frozen=True)
class Change:
    kind: str  # "start" | "end" | "seen"
    event: Event
    rule: RuleConfig
    peak: bool = False  # "seen" at a new peak score
    ts: float | None = None  # "seen": the time of the label that matched


@dataclass
class Track:
    """One rule on one camera's whole frame, or on one zone of it."""

    since: float | None = None  # when the current run of matching labels began
    label: str | None = None
    open: Event | None = None
    last_seen: float = 0.0
    score_sum: float = 0.0  # of the run's matching labels: a running sum, count and peak (an event may last days)
    score_count: int = 0
    score_max: float = 0.0
    cooldown_until: float = float("-inf")
    deleted: bool = False  # ``open`` was deleted: its activity is followed to its end, with no change
    last_label: float | None = None  # the time of the stream's last label, matching or not
    heard_at: float | None = None  # when that label came (the caller's clock): labels that stop are an outage
    cadence: Cadence = field(default_factory=Cadence)

    def add_score(self, score: float) -> None:
        self.score_sum += score
        self.score_count += 1
        self.score_max = max(self.score_max, score)

    def outage_after(self, rule: RuleConfig) -> float:
        """Seconds without any label after which the activity has ended: ``end_seconds``, or the
        stream's outage (:class:`~streamrec.live.segments.Cadence`) when labels come less often."""
        return max(rule.end_seconds, self.cadence.stale_after())


def event_id(ev: Event) -> str:
    """Sortable and unguessable: the start second, then random hex."""
    return f"{int(ev.start_ts)}-{secrets.token_hex(4)}"


KINETICS_CLASSES = 400
SHOWN_CLASSES = 20  # a hint lists this many of the loaded model's classes at most


def class_hint(label: str, classes: Sequence[str]) -> str:
    """What a rule may name instead of ``label``: the closest of the loaded model's ``classes``
    and the classes themselves (those of a fine-tuned checkpoint, or a pointer to ``streamrec
    labels`` for Kinetics-400's).

    >>> class_hint("pourng", ["pouring", "stirring", "idle"])
    "did you mean 'pouring'? The loaded model's classes: pouring, stirring, idle"
    >>> class_hint("z", ["a", "b"])
    "the loaded model's classes: a, b"
    """
    if len(classes) == KINETICS_CLASSES:
        text = "the loaded model has the 400 Kinetics-400 classes (streamrec labels TEXT lists them)"
    else:
        more = f", ... ({len(classes)} in all)" if len(classes) > SHOWN_CLASSES else ""
        text = f"the loaded model's classes: {', '.join(classes[:SHOWN_CLASSES])}{more}"
    lowered = {c.lower(): c for c in classes}
    close = difflib.get_close_matches(label.lower(), list(lowered), n=1)
    return f"did you mean {lowered[close[0]]!r}? {text[0].upper()}{text[1:]}" if close else text


def rule_labels(rule: RuleConfig, classes: Sequence[str], groups: dict[str, list[str]]) -> frozenset[str]:
    """The labels ``rule`` matches; a label not among ``classes`` or an unknown group is an error."""
    unknown = [g for g in rule.groups if g not in groups]
    if unknown:
        raise StreamrecError(f"[[rules]] {rule.name!r}: groups: no group {unknown[0]!r}; expected one of "
                             f"{', '.join(sorted(groups))}")
    missing = [x for x in rule.labels if x not in classes]
    if missing:
        raise StreamrecError(f"[[rules]] {rule.name!r}: labels: the model has no class {missing[0]!r}; "
                             f"{class_hint(missing[0], classes)}")
    known = set(classes)
    empty = [g for g in rule.groups if not known.intersection(groups[g])]
    if empty:  # Kinetics-400's groups on a fine-tuned checkpoint: the rule would never open an event
        raise StreamrecError(f"[[rules]] {rule.name!r}: groups: the group {empty[0]!r} has none of the loaded "
                             f"model's classes; name them in labels instead ({class_hint(empty[0], classes)})")
    return frozenset(rule.labels) | frozenset(x for g in rule.groups for x in groups[g] if x in known)


class RuleEngine:
    """The rules of an app over its cameras' labels. Not thread-safe: feed it from one thread
    (or under one lock)."""

    def __init__(self, rules: Iterable[RuleConfig], *, labels_of: dict[str, frozenset[str]] | None = None,
                 new_id: Callable[[Event], str] = event_id) -> None:
        self.rules = list(rules)
        self.labels_of = labels_of or {r.name: frozenset(r.labels) for r in self.rules}
        self.new_id = new_id
        self.tracks: dict[tuple[str, str], Track] = {}

    def update(self, camera: str, label: str, score: float, ts: float, *, uncertain: bool = False,
               zone: str | None = None, now: float | None = None) -> list[Change]:
        """One smoothed label of ``camera`` (of its ``zone``; ``None``: the whole frame) at ``ts``
        (the window's end), handed over at ``now`` (for :meth:`expire`); the events it opens or closes."""
        out = []
        for rule in self.rules:
            if (rule.cameras and camera not in rule.cameras) or (zone not in rule.zones if rule.zones else zone):
                continue
            matched = not uncertain and label in self.labels_of[rule.name] and score >= rule.min_score
            tr = self.tracks.setdefault((rule.name, camera, zone), Track())
            if tr.last_label is not None:  # a pause of every label (an outage) ends the activity before it
                gap = ts - tr.last_label
                lapsed = self.lapse(rule, tr) if gap > tr.outage_after(rule) else None
                out += [lapsed] if lapsed is not None else []
                tr.cadence.add(gap)
            tr.last_label, tr.heard_at = ts if tr.last_label is None else max(tr.last_label, ts), now
            change = self.step(rule, tr, camera, label, score, ts, matched, uncertain=uncertain, zone=zone)
            if change is not None:
                out.append(change)
        return out

    def lapse(self, rule: RuleConfig, tr: Track) -> Change | None:
        """The stream's labels stopped: a run not yet an event is over, an open event ends at its
        last matching label (as if labels had come that did not match)."""
        tr.since = None
        if tr.open is None:
            return None
        ev, deleted = tr.open, tr.deleted
        ev.end_ts = tr.last_seen
        tr.open, tr.deleted, tr.cooldown_until = None, False, tr.last_seen + rule.cooldown_seconds
        return None if deleted else Change("end", ev, rule)

    def expire(self, now: float, handed: dict[tuple[str, str | None], float] | None = None) -> list[Change]:
        """Call every second or so with the clock the labels were given with (``update(now=...)``):
        the streams whose labels stopped coming (a file that ended, a camera reconnecting) end
        their runs and events, as a label after the pause would have. ``handed``: when each
        ``(camera, zone)``'s newest label was handed over, queued or not (labels that wait for a
        database that does not answer are no outage)."""
        out = []
        for (name, camera, zone), tr in self.tracks.items():
            rule = next(r for r in self.rules if r.name == name)
            heard = max(tr.heard_at or -math.inf, (handed or {}).get((camera, zone), -math.inf))
            if tr.heard_at is not None and (tr.open is not None or tr.since is not None) \
                    and now - heard > tr.outage_after(rule):
                change = self.lapse(rule, tr)
                out += [change] if change is not None else []
        return out

    def step(self, rule: RuleConfig, tr: Track, camera: str, label: str, score: float, ts: float,
             matched: bool, *, uncertain: bool = False, zone: str | None = None) -> Change | None:
        if tr.open is not None:
            ev = tr.open
            if matched:
                tr.last_seen = ts
                tr.add_score(score)
                peak = score > ev.peak_score
                if peak:
                    ev.peak_score, ev.peak_ts = score, ts
                ev.mean_score = tr.score_sum / tr.score_count
                return None if tr.deleted else Change("seen", ev, rule, peak, ts=ts)
            if ts - tr.last_seen >= rule.end_seconds:
                ev.end_ts = tr.last_seen
                tr.open, tr.since, tr.cooldown_until = None, None, tr.last_seen + rule.cooldown_seconds
                deleted, tr.deleted = tr.deleted, False
                return None if deleted else Change("end", ev, rule)
            return None
        if not matched:  # an uncertain label shorter than end_seconds does not break the run
            if not (uncertain and tr.since is not None and ts - tr.last_seen < rule.end_seconds):
                tr.since = None
            return None
        if tr.since is None:  # a run of matching labels begins, in a cooldown or not: the activity's start
            tr.since, tr.label, tr.score_sum, tr.score_count, tr.score_max = ts, label, 0.0, 0, 0.0
        tr.add_score(score)
        tr.last_seen = ts
        if ts - tr.since < rule.min_seconds or ts < tr.cooldown_until:
            return None
        ev = Event("", rule.name, camera, tr.label or label, start_ts=tr.since, peak_score=tr.score_max,
                   mean_score=tr.score_sum / tr.score_count, peak_ts=ts, zone=zone)
        ev.id = self.new_id(ev)
        tr.open = ev
        return Change("start", ev, rule)

    def discard(self, event_id: str) -> Event | None:
        """The open event ``event_id`` was deleted: it neither goes on nor closes; its rule opens
        no event on its camera until its activity has ended (as it would have closed) and starts
        again. The event, or ``None`` when it was not open."""
        for tr in self.tracks.values():
            if tr.open is not None and tr.open.id == event_id and not tr.deleted:
                tr.deleted = True
                return tr.open
        return None

    def close_all(self) -> list[Change]:
        """Close every open event at its last matching label (a clean shutdown)."""
        out = []
        for (name, _, _), tr in self.tracks.items():
            if tr.open is not None and tr.deleted:
                tr.open, tr.deleted = None, False
            elif tr.open is not None:
                tr.open.end_ts = tr.last_seen
                rule = next(r for r in self.rules if r.name == name)
                out.append(Change("end", tr.open, rule))
                tr.open = None
        return out

    def forget(self, camera: str, keep: Iterable[str | None] = ()) -> list[Change]:
        """A camera removed: its open events close, those of its zones too, but for the streams in
        ``keep`` (zone names, ``None`` for the whole frame: a camera restarting with the same zone)."""
        out, kept = [], set(keep)
        for key in [k for k in self.tracks if k[1] == camera and k[2] not in kept]:
            tr = self.tracks.pop(key)
            if tr.open is not None and not tr.deleted:
                tr.open.end_ts = tr.last_seen
                out.append(Change("end", tr.open, next(r for r in self.rules if r.name == key[0])))
        return out
