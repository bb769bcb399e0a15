"""Events and the notification outbox, in the history database (SQLite or PostgreSQL, connected
to as :class:`streamrec.database.Database` connects every table).

An event row is written when it opens and updated when it closes; ``last_ts`` follows the
newest matching label (at most once a second), so that after a ``kill -9`` the next start
closes the event where its labels stopped (:meth:`EventStore.recover`). A notification is
written to the outbox in the same call that changes the event, and delivered from there by
:mod:`streamrec.events.notify`: it survives restarts and outages.

Example:
    >>> store = EventStore(":memory:")
    >>> ev = Event("e1", "lifting", "rack-1", "deadlifting", start_ts=100.0, peak_score=0.8, mean_score=0.7)
    >>> store.opened(ev, notify=("webhook",), now=100.0)
    >>> [(e["id"], e["state"], e["end_ts"]) for e in store.query()]
    [('e1', 'open', None)]
    >>> store.closed(Event("e1", "lifting", "rack-1", "deadlifting", 100.0, 0.9, 0.75, end_ts=104.0), notify=("webhook",), now=104.0)
    >>> [(n.kind, n.channel) for n in store.pending(now=200.0)]
    [('event_start', 'webhook'), ('event_end', 'webhook')]
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from streamrec.database import BUSY_TIMEOUT_S, Database, DatabaseUnavailable, close_quietly
from streamrec.database import PG_TIMEOUTS  # noqa: F401 - re-exported
from streamrec.errors import StreamrecError
from streamrec.events.rows import EVENT_COLUMNS, Event, Notification, event_row, row_event  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY, rule TEXT NOT NULL, camera TEXT NOT NULL, label TEXT NOT NULL,
        start_ts DOUBLE PRECISION NOT NULL, end_ts DOUBLE PRECISION, last_ts DOUBLE PRECISION NOT NULL,
        peak_score DOUBLE PRECISION NOT NULL, mean_score DOUBLE PRECISION NOT NULL,
        clip TEXT, thumbnail TEXT, clip_bytes BIGINT NOT NULL DEFAULT 0, state TEXT NOT NULL, clip_codec TEXT,
        zone TEXT)""",
    "CREATE INDEX IF NOT EXISTS events_start ON events (start_ts)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id {serial} PRIMARY KEY, event_id TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
        payload TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_try DOUBLE PRECISION NOT NULL, error TEXT, delivered DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered, next_try)",
    # one notification of each kind per event and channel: a write tried again never sends twice
    # (a database from before this index keeps the first of any duplicates)
    "DELETE FROM outbox WHERE id NOT IN (SELECT MIN(id) FROM outbox GROUP BY event_id, kind, channel)",
    "CREATE UNIQUE INDEX IF NOT EXISTS outbox_once ON outbox (event_id, kind, channel)",
)
# columns of events a database made before them lacks (0 there: its clips' sizes unknown; NULL: their
# codecs unknown, its events of whole frames)
ADDED_COLUMNS = {"clip_bytes": "BIGINT NOT NULL DEFAULT 0", "clip_codec": "TEXT", "zone": "TEXT"}


class EventStore:
    """The events and outbox tables of ``target`` (a SQLite file, ``:memory:`` or a
    ``postgresql://`` URL); thread-safe (one connection, one lock)."""

    def __init__(self, target: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.db = Database(target, what="the events tables", busy_timeout_s=busy_timeout_s)
        self.target = target
        self.busy_timeout_s = self.db.busy_timeout_s  # SQLite: how long a write waits for another writer's lock
        self.postgres = self.db.postgres
        self.ph = self.db.ph
        self._lock = threading.Lock()
        self.reconnects = 0
        self._conn = self._connect()
        self._closed = False

    def _connect(self):
        return self.db.connect(self._create)

    def _create(self, conn) -> None:
        for stmt in SCHEMA:
            conn.execute(stmt.replace("{serial}", self.db.serial))
        self.db.add_columns(conn, "events", ADDED_COLUMNS)

    def _broken(self) -> bool:
        """Whether the connection to a PostgreSQL server was lost (it restarted, the network went)."""
        return self.db.broken(self._conn)

    def _ensure(self) -> None:
        """Connect again when the connection was lost: one try (:class:`DatabaseUnavailable`
        when the server does not answer; the caller tries again later)."""
        if not self._broken():
            return
        try:
            conn = self._connect()
        except StreamrecError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        old, self._conn = self._conn, conn
        close_quietly(old)
        self.reconnects += 1
        logger.info("events: reconnected to the database %s", self.db.shown)

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable | None:
        """``exc`` as :class:`DatabaseUnavailable` when it means "not now": a lost PostgreSQL
        connection, a SQLite file another writer holds longer than ``busy_timeout_s``."""
        if self._broken():
            return DatabaseUnavailable(f"events database lost: {self.db.said(exc, limit=300)}")
        if self.db.unavailable(exc):
            return DatabaseUnavailable(f"events database cannot write now: {self.db.said(exc, limit=300)}")
        return None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Statements that land together or not at all (an event and its notifications); a
        database that does not answer is :class:`DatabaseUnavailable`, and nothing was written."""
        with self._lock:
            self._ensure()
            try:
                if self.postgres:
                    with self._conn.transaction():
                        yield
                else:
                    self._conn.execute("BEGIN IMMEDIATE")  # the write lock now: no deadlock with a writer later
                    try:
                        yield
                        self._conn.execute("COMMIT")
                    except BaseException:
                        self._sqlite_rollback()
                        raise
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                if (unavailable := self._unavailable(exc)) is not None:
                    raise unavailable from None
                raise

    def _sqlite_rollback(self) -> None:
        """Undo what is left of a transaction (SQLite rolled back by itself after some errors)."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _run(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """One statement on its own; a database that does not answer is :class:`DatabaseUnavailable`."""
        with self._lock:
            self._ensure()
            try:
                return self._execute(sql, args)
            except Exception as exc:
                if (unavailable := self._unavailable(exc)) is not None:
                    raise unavailable from None
                raise

    def outbox_stats_now(self) -> dict[str, int] | None:
        """:meth:`outbox_stats` when the database can answer at once, else ``None`` (for
        ``/healthz``, which must not wait on a reconnect or another thread's write)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._broken():
                return None
            pending, = self._execute("SELECT COUNT(*) FROM outbox WHERE delivered IS NULL", ())[0]
            done, = self._execute("SELECT COUNT(*) FROM outbox WHERE delivered IS NOT NULL", ())[0]
            return {"pending": pending, "delivered": done}
        except Exception:  # noqa: BLE001 - the database went away just now: the caller keeps its last counts
            return None
        finally:
            self._lock.release()

    def _execute(self, sql: str, args: Iterable[Any]) -> list[tuple]:
        cur = self._conn.execute(self.db.sql(sql), tuple(args))
        return list(cur.fetchall()) if cur.description else []

    def _outbox(self, ev: Event, kind: str, channels: Iterable[str], now: float) -> None:
        payload = json.dumps({"type": kind, "event": ev.to_json()}, allow_nan=False)
        for channel in channels:  # inside the transaction of the event's change
            self._execute("INSERT INTO outbox (event_id, kind, channel, payload, created, next_try) "
                          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (ev.id, kind, channel, payload, now, now))

    # -- events ---------------------------------------------------------------------
    def opened(self, ev: Event, *, notify: Iterable[str] = (), clip: str | None = None, now: float | None = None,
               clip_codec: str | None = None) -> None:
        with self._transaction():
            self._opened(ev, notify, clip, time.time() if now is None else now, clip_codec)

    def _opened(self, ev: Event, notify: Iterable[str], clip: str | None, now: float, codec: str | None) -> None:
        self._execute("INSERT INTO events (id, rule, camera, label, start_ts, end_ts, last_ts, peak_score, mean_score, clip, "
                      "state, clip_codec, zone) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, 'open', ?, ?) ON CONFLICT DO NOTHING",
                      (ev.id, ev.rule, ev.camera, ev.label, ev.start_ts, ev.start_ts, ev.peak_score, ev.mean_score, clip,
                       codec, ev.zone))
        self._outbox(ev, "event_start", notify, now)

    def seen(self, event_id: str, ts: float, peak: float, mean: float) -> None:
        """The event's labels go on at ``ts`` (for :meth:`recover`)."""
        self._run("UPDATE events SET last_ts = ?, peak_score = ?, mean_score = ? WHERE id = ?", (ts, peak, mean, event_id))

    def closed(self, ev: Event, *, notify: Iterable[str] = (), now: float | None = None) -> None:
        """The event ends; its ``event_end`` goes to each channel of ``notify`` that was told of its
        start (delivered or still pending): never an end alone, after a start that was given up
        (:meth:`expire`) or on a channel added to the rule since the start."""
        with self._transaction():
            self._execute("UPDATE events SET end_ts = ?, last_ts = ?, peak_score = ?, mean_score = ?, state = 'closed' "
                          "WHERE id = ?", (ev.end_ts, ev.end_ts, ev.peak_score, ev.mean_score, ev.id))
            told = {c for c, in self._execute("SELECT channel FROM outbox WHERE event_id = ? AND kind = 'event_start'",
                                              (ev.id,))}
            self._outbox(ev, "event_end", [c for c in notify if c in told], time.time() if now is None else now)

    def set_files(self, event_id: str, *, clip: str | None = None, thumbnail: str | None = None,
                  clip_bytes: int | None = None) -> None:
        for column, value in (("clip", clip), ("thumbnail", thumbnail), ("clip_bytes", clip_bytes)):
            if value is not None:
                self._run(f"UPDATE events SET {column} = ? WHERE id = ?", (value, event_id))

    def no_clip(self, event_id: str) -> None:
        """The event's clip could not be written (nothing to copy, or a write error before its first picture)."""
        self._run("UPDATE events SET clip = NULL, clip_bytes = 0 WHERE id = ?", (event_id,))

    def recover(self, notify_of: dict[str, tuple[str, ...]], now: float | None = None) -> list[Event]:
        """Close the events a killed process left open, at their last label; their end is notified
        on each channel of their rule that was told of their start (see :meth:`closed`)."""
        out = []
        for row in self.query(state="open", limit=None):
            ev = Event(row["id"], row["rule"], row["camera"], row["label"], row["start_ts"], row["peak_score"],
                       row["mean_score"], end_ts=self.get(row["id"])["last_ts"], zone=row["zone"])
            self.closed(ev, notify=notify_of.get(ev.rule, ()), now=now)
            out.append(ev)
        return out

    def get(self, event_id: str) -> dict[str, Any] | None:
        rows = self._run(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,))
        return event_row(rows[0]) if rows else None

    def query(self, *, camera: str | None = None, rule: str | None = None, since: float | None = None,
              until: float | None = None, state: str | None = None, limit: int | None = 100,
              zone: str | None = None) -> list[dict[str, Any]]:
        """Events, newest first: overlapping ``since``..``until``, of ``camera``, ``rule`` and ``zone``
        (``""``: whole frames only) when given."""
        where, args = [], []
        for cond, value in (("camera = ?", camera), ("rule = ?", rule), ("COALESCE(end_ts, last_ts) >= ?", since),
                            ("start_ts <= ?", until), ("state = ?", state), ("COALESCE(zone, '') = ?", zone)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY start_ts DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return [event_row(r) for r in self._run(sql, args)]

    def delete(self, event_id: str) -> dict[str, Any] | None:
        """Remove an event (and its pending notifications); its row, for the caller to delete files."""
        row = self.get(event_id)
        if row is not None:
            with self._transaction():  # both or neither: never an event whose notifications are gone
                self._execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))
                self._execute("DELETE FROM events WHERE id = ?", (event_id,))
        return row

    def ended_before(self, cutoff: float) -> list[dict[str, Any]]:
        """Closed events that ended before ``cutoff``, oldest first, with a clip or not."""
        rows = self._run(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE state = 'closed' "
                         "AND COALESCE(end_ts, start_ts) < ? ORDER BY start_ts", (cutoff,))
        return [event_row(r) for r in rows]

    def oldest_with_clips(self) -> list[dict[str, Any]]:
        """Closed events with a clip, oldest first (retention deletes from the front)."""
        rows = self._run(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE clip IS NOT NULL AND state = 'closed' "
                         "ORDER BY start_ts")
        return [event_row(r) for r in rows]

    def file_paths(self) -> set[str]:
        """The clips and thumbnails the events point to, relative to the clips' folder."""
        rows = self._run("SELECT clip, thumbnail FROM events WHERE clip IS NOT NULL OR thumbnail IS NOT NULL")
        return {path for row in rows for path in row if path}

    # -- outbox ---------------------------------------------------------------------
    def pending(self, *, now: float, limit: int = 100, channel: str | None = None,
                in_order: bool = False) -> list[Notification]:
        """Undelivered notifications due at ``now`` (of ``channel``, or all), oldest first. With
        ``in_order``, none whose event has an older undelivered one on the same channel (what may
        be delivered now, keeping each event's order per channel)."""
        where = "" if channel is None else " AND channel = ?"
        if in_order:
            where += (" AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.event_id = o.event_id AND e.channel = o.channel"
                      " AND e.delivered IS NULL AND e.id < o.id)")
        rows = self._run("SELECT id, event_id, kind, channel, payload, created, attempts FROM outbox o "
                         f"WHERE delivered IS NULL AND next_try <= ?{where} ORDER BY id LIMIT {int(limit)}",
                         (now,) if channel is None else (now, channel))
        return [Notification(*r) for r in rows]

    # A notification is named by its id and its event's: SQLite may give a deleted row's id to the
    # next one, and the outcome of a delivery that began before its event was deleted must not land
    # on another event's notification.
    def delivered(self, note: Notification, now: float) -> None:
        self._run("UPDATE outbox SET delivered = ?, attempts = attempts + 1, error = NULL WHERE id = ? AND event_id = ?",
                  (now, note.id, note.event_id))

    def discard(self, note: Notification) -> None:
        """Remove one notification whose event is gone (deleted while it was pending)."""
        self._run("DELETE FROM outbox WHERE id = ? AND event_id = ?", (note.id, note.event_id))

    def due_now(self, channel: str, now: float) -> None:
        """``channel``'s undelivered notifications, backing off, are due at ``now`` (it is back)."""
        self._run("UPDATE outbox SET next_try = ? WHERE delivered IS NULL AND channel = ? AND next_try > ?",
                  (now, channel, now))

    def failed(self, note: Notification, error: str, next_try: float) -> None:
        self._run("UPDATE outbox SET attempts = attempts + 1, error = ?, next_try = ? WHERE id = ? AND event_id = ?",
                  (error[:500], next_try, note.id, note.event_id))

    def expire(self, older_than: float) -> int:
        """Give up on notifications created before ``older_than``, and on the later ones of their
        event on their channel (never an ``event_end`` whose ``event_start`` was given up); how many."""
        where = ("delivered IS NULL AND (created < ? OR EXISTS (SELECT 1 FROM outbox e WHERE e.event_id = "
                 "outbox.event_id AND e.channel = outbox.channel AND e.delivered IS NULL AND e.id < outbox.id "
                 "AND e.created < ?))")
        n = self._run(f"SELECT COUNT(*) FROM outbox WHERE {where}", (older_than, older_than))[0][0]
        self._run(f"DELETE FROM outbox WHERE {where}", (older_than, older_than))
        return n

    def outbox_stats(self) -> dict[str, int]:
        pending, = self._run("SELECT COUNT(*) FROM outbox WHERE delivered IS NULL")[0]
        done, = self._run("SELECT COUNT(*) FROM outbox WHERE delivered IS NOT NULL")[0]
        return {"pending": pending, "delivered": done}

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection (idempotent); a call still waiting on the database after ``timeout``
        seconds keeps it, and the process's exit closes it."""
        if not self._lock.acquire(timeout=timeout):
            logger.warning("events: the database connection is still in use at the stop")
            return
        try:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        finally:
            self._lock.release()
