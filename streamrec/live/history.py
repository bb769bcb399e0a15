"""Activity history: each labelled stream's segments (camera, zone, label, start, end, mean and
peak score; zone ``None``: the camera's whole frame) in SQLite (WAL mode, the default) or PostgreSQL (a
``postgresql://`` URL), connected to as :class:`streamrec.database.Database` connects every table. With
``retain_days`` the segments older than that are deleted at start and every hour.

A segment is written, and committed, the moment it closes (the shown label changes, or
the labels stop: an outage ends it at its last label); a clean shutdown closes the open ones,
and :meth:`HistoryStore.query` shows them meanwhile, ending now. So a ``kill -9`` loses at most each camera's
open segment. Writes go through a bounded queue to one writer thread: a slow disk
drops (and counts) segments, it never stalls inference.

Example:
    >>> store = HistoryStore(":memory:")
    >>> t = SegmentTracker("court-1", store.add)
    >>> t.update("serve", 0.8, 10.0); t.update("serve", 0.6, 11.0); t.update("smash", 0.9, 12.0)
    >>> store.flush(); [(s["label"], s["start"], s["end"], s["mean_score"]) for s in store.query()]
    [('serve', 10.0, 12.0, 0.7)]
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import ExitStack, closing
from typing import Any, Callable, Iterator

from streamrec.database import (BUSY_TIMEOUT_S, INTEGER, NONE, NUMBER, RECONNECT, TEXT, Database, close_quietly,
                                typed_row)
from streamrec.errors import StreamrecError
from streamrec.redact import printable
from streamrec.live.segments import STALE_FACTOR, STALE_FLOOR_S, Segment, SegmentTracker  # noqa: F401 - re-exported
from streamrec.supervision import Deadline, Supervisor

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    camera TEXT NOT NULL,
    label TEXT NOT NULL,
    start_ts DOUBLE PRECISION NOT NULL,
    end_ts DOUBLE PRECISION NOT NULL,
    mean_score DOUBLE PRECISION NOT NULL,
    peak_score DOUBLE PRECISION NOT NULL,
    windows INTEGER NOT NULL,
    zone TEXT NOT NULL DEFAULT ''
)"""  # zone last: where an older database gets it (ADDED_COLUMNS), so both have one layout
INDEXES = ("CREATE INDEX IF NOT EXISTS segments_camera_start ON segments (camera, start_ts)",
           "CREATE INDEX IF NOT EXISTS segments_end ON segments (end_ts)")  # the page's last minutes; pruning
PRUNE_BATCH = 10_000  # segments deleted per statement: a year of them is never one statement past its timeout
ADDED_COLUMNS = {"zone": "TEXT NOT NULL DEFAULT ''"}  # a database from before zones: its segments are whole frames
COLUMNS = ("camera", "zone", "label", "start", "end", "mean_score", "peak_score", "windows")
KINDS = {"camera": TEXT, "zone": TEXT + NONE, "label": TEXT, "start": NUMBER, "end": NUMBER, "mean_score": NUMBER,
         "peak_score": NUMBER, "windows": INTEGER}
WHOLE_FRAME = ""  # the zone column of a camera's whole frame (rows show it as None)


class HistoryStore:
    """SQLite (a path, or ``:memory:``) or PostgreSQL (``postgresql://...``); ``busy_timeout_s``:
    how long a SQLite write waits for another writer's lock (the events tables' too)."""

    def __init__(self, target: str, *, queue_size: int = 10_000, retain_days: float | None = None,
                 clock: Callable[[], float] = time.time, prune_every_s: float = 3600.0,
                 supervisor: Supervisor | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        if retain_days is not None and not retain_days > 0:
            raise StreamrecError(f"--history-days: expected > 0, got {retain_days}")
        self.db = Database(target, what="the history database", busy_timeout_s=busy_timeout_s)
        self.target = target
        self.postgres = self.db.postgres
        self.retain_days = retain_days
        self._clock = clock
        self._prune_every_s = prune_every_s
        self._q: queue.Queue[Segment | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.written = 0
        self.pruned = 0
        self.reconnects = 0
        self._lock = threading.Lock()
        self._open: dict[str, tuple[Segment, float]] = {}  # stream key -> its open segment, fresh until
        self._open_lock = threading.Lock()
        self._closing = threading.Event()
        self._conn = self._connect()
        self._prune_now()  # at start, then every ``prune_every_s`` from the writer thread
        self._next_prune = clock() + prune_every_s
        self.supervisor = supervisor or Supervisor()
        self._writer = threading.Thread(target=self.supervisor.run, args=("history-writer", self._write_loop, self._closing),
                                        name="history-writer", daemon=True)
        self._writer.start()
        self._closed = False

    def _connect(self):
        return self.db.connect(self._create)

    def _create(self, conn) -> None:
        conn.execute(SCHEMA)
        self.db.add_columns(conn, "segments", ADDED_COLUMNS)
        for index in INDEXES:
            conn.execute(index)

    def tracker(self, camera: str, zone: str | None = None) -> SegmentTracker:
        """A :class:`SegmentTracker` for ``camera``'s ``zone`` (``None``: its whole frame) that
        writes here and shows its open segment in :meth:`query`."""
        return SegmentTracker(camera, self.add, self.note_open, zone=zone)

    def note_open(self, key: str, seg: Segment | None, fresh_until: float) -> None:
        """The open segment of the stream ``key`` (``None``: none), which goes on until
        ``fresh_until`` at least."""
        with self._open_lock:
            if seg is None:
                self._open.pop(key, None)
            else:
                self._open[key] = (seg, fresh_until)

    def open_rows(self, *, camera: str | None = None, since: float | None = None, until: float | None = None,
                  zone: str | None = None) -> list[dict[str, Any]]:
        """The open segments as rows: one still going ends now (``"open": True``), or at ``until``
        when that is earlier (never past its last label's end, though); one whose labels stopped
        (an outage) ends at its last label."""
        now = self._clock()
        with self._open_lock:
            found = list(self._open.values())
        rows = []
        for seg, fresh_until in found:
            going = now <= fresh_until
            end = max(seg.end, now if until is None else min(now, until)) if going else seg.end
            if (camera and seg.camera != camera) or (since is not None and end < since) or \
                    (until is not None and seg.start > until) or (zone is not None and (seg.zone or "") != zone):
                continue
            rows.append({**dict(zip(COLUMNS, (seg.camera, seg.zone, seg.label, seg.start, end, seg.mean_score,
                                               seg.peak_score, seg.windows))), "open": going})
        return rows

    def add(self, seg: Segment) -> None:
        """Queue ``seg`` for writing; never blocks (a full queue drops and counts)."""
        try:
            self._q.put_nowait(seg)
        except queue.Full:
            self.dropped += 1

    def prune(self) -> int:
        """Delete the segments that ended more than ``retain_days`` ago (none without it);
        return how many were deleted."""
        if self.retain_days is None:
            return 0
        cutoff = self._clock() - self.retain_days * 86400.0
        row = "ctid" if self.postgres else "rowid"
        sql = self.db.sql(f"DELETE FROM segments WHERE {row} IN "
                          f"(SELECT {row} FROM segments WHERE end_ts < ? LIMIT {PRUNE_BATCH})")
        n, batch = 0, PRUNE_BATCH
        while batch == PRUNE_BATCH and not self._closing.is_set():
            with self._lock:
                batch = max(self._conn.execute(sql, (cutoff,)).rowcount, 0)
            n += batch
            self.pruned += batch
        if n > 0:
            logger.info("history: deleted %d segments older than %g days", n, self.retain_days)
        return n

    def _said(self, exc: BaseException, limit: int | None = None) -> str:
        """What ``exc`` says, on one line, with the database's password masked."""
        return self.db.said(exc, limit)

    def _prune_now(self) -> None:
        """:meth:`prune`, a failure logged (the next round tries again), never raised."""
        try:
            self.prune()
        except Exception as exc:  # noqa: BLE001 - keep the writer alive (and a start going)
            logger.warning("history: cannot delete old segments now (%s); trying again in %g s",
                           self._said(exc), self._prune_every_s)

    def stats(self) -> dict[str, Any]:
        """What ``/healthz`` shows of the history."""
        return {"written": self.written, "dropped": self.dropped, "pruned": self.pruned, "reconnects": self.reconnects,
                "retain_days": self.retain_days}

    def _write_loop(self) -> None:
        while True:
            if self.retain_days is not None and self._clock() >= self._next_prune:
                self._next_prune = self._clock() + self._prune_every_s
                self._prune_now()
            try:
                seg = self._q.get(timeout=None if self.retain_days is None else min(self._prune_every_s, 60.0))
            except queue.Empty:
                continue
            try:
                if seg is None:
                    return
                self._write(seg)
            finally:
                self._q.task_done()

    def _write(self, seg: Segment) -> None:
        """Insert ``seg``; a PostgreSQL server that went away (restarted, network cut) is
        reconnected to, with backoff, and the segment written then; a database that is there but
        not now (a SQLite file another writer holds past the busy timeout, a full disk) is tried
        again with backoff: meanwhile new segments wait in the queue (a full queue drops and
        counts). Any other failure, or the store closing meanwhile, drops and counts."""
        sql = (f"INSERT INTO segments (camera, zone, label, start_ts, end_ts, mean_score, peak_score, windows) "
               f"VALUES ({', '.join([self.db.ph] * 8)})")
        values = (seg.camera, seg.zone or WHOLE_FRAME, seg.label, seg.start, seg.end, seg.mean_score, seg.peak_score,
                  seg.windows)
        reconnected, waits = False, 0
        while True:
            try:
                with self._lock:
                    self._conn.execute(sql, values)
                self.written += 1
                return
            except Exception as exc:  # noqa: BLE001 - keep the writer alive; say what was lost
                if self._lost():
                    if not reconnected and self._reconnect(exc):
                        reconnected = True
                        continue
                elif self.db.unavailable(exc, self._conn) and not self._closing.is_set():
                    if waits == 0:
                        logger.warning("history: the database %s is busy (%s); trying again", self.db.shown,
                                       self._said(exc))
                    self._closing.wait(RECONNECT.delay(waits))
                    waits += 1
                    continue
                self.dropped += 1
                logger.error("history: a segment of %s was not written: %s", seg.camera, printable(exc))
                return

    def _lost(self) -> bool:
        """Whether the connection itself is gone (PostgreSQL), not just this statement."""
        return self.db.broken(self._conn)

    def _reconnect(self, exc: Exception) -> bool:
        """Connect again, waiting :data:`RECONNECT` between tries, until it works (True) or the store closes (False)."""
        logger.warning("history: lost the database %s (%s); reconnecting", self.db.shown,
                       self._said(exc))
        attempt = 0
        while not self._closing.is_set():
            try:
                conn = self._connect()
            except StreamrecError as err:
                logger.debug("history: reconnect failed: %s", err)
                self._closing.wait(RECONNECT.delay(attempt))
                attempt += 1
                continue
            self._swap(conn)
            return True
        return False

    def _swap(self, conn) -> None:
        with self._lock:
            old, self._conn = self._conn, conn
        close_quietly(old)
        self.reconnects += 1
        logger.info("history: reconnected to %s", self.db.shown)

    def flush(self) -> None:
        """Wait until every queued segment is written."""
        self._q.join()

    def query(self, *, camera: str | None = None, since: float | None = None, until: float | None = None,
              limit: int | None = None, zone: str | None = None) -> list[dict[str, Any]]:
        """The segments that overlap ``since``..``until`` (of ``camera``; of ``zone``, ``""`` for the
        whole frames only), oldest first, each stream's open one included (:meth:`open_rows`; the
        others have ``"open": False``); with ``limit``, only the newest ``limit`` of them. A row's
        ``"zone"`` is ``None`` for a camera's whole frame."""
        rows = [{**r, "open": False} for r in self.rows(camera=camera, since=since, until=until, limit=limit,
                                                         zone=zone)]
        rows = sorted(rows + self.open_rows(camera=camera, since=since, until=until, zone=zone),
                      key=lambda r: (r["start"], r["camera"], r["zone"] or ""))
        return rows[-limit:] if limit is not None else rows

    def rows(self, *, camera: str | None = None, since: float | None = None, until: float | None = None,
             limit: int | None = None, batch: int = 1000, zone: str | None = None) -> Iterator[dict[str, Any]]:
        """:meth:`query`, read ``batch`` rows at a time (a year of history does not have to fit
        in memory). Arguments are checked at the call, not at the first row; close the iterator
        (or read it to the end): its cursor holds the store's lock until then."""
        if limit is not None and limit < 1:
            raise StreamrecError(f"--limit: expected >= 1, got {limit}")
        where, args = [], []
        if camera:
            where.append(f"camera = {self.db.ph}")
            args.append(camera)
        if zone is not None:
            where.append(f"zone = {self.db.ph}")
            args.append(zone)
        if since is not None:
            where.append(f"end_ts >= {self.db.ph}")
            args.append(since)
        if until is not None:
            where.append(f"start_ts <= {self.db.ph}")
            args.append(until)
        sql = "SELECT camera, zone, label, start_ts, end_ts, mean_score, peak_score, windows FROM segments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:  # the newest ``limit``, put back in time order
            sql = f"SELECT * FROM ({sql} ORDER BY start_ts DESC, camera DESC, zone DESC LIMIT {int(limit)}) AS newest"
        sql += " ORDER BY start_ts, camera, zone"
        if self._lost():  # the server came back after a restart: one attempt, the writer retries its own
            self._swap(self._connect())
        return self._fetch(sql, args, batch)

    def _fetch(self, sql: str, args: list[Any], batch: int) -> Iterator[dict[str, Any]]:
        """The rows of ``sql``, ``batch`` at a time; on PostgreSQL from a server-side cursor (a
        client-side one reads every row before the first, past the statement timeout on a large
        table). A database error is a :class:`StreamrecError` in one line."""
        with self._lock, ExitStack() as stack:
            try:
                if self.postgres:
                    stack.enter_context(self._conn.transaction())  # a server-side cursor lives in one
                cur = stack.enter_context(closing(self._conn.cursor(**({"name": "history_rows"} if self.postgres else {}))))
                cur.execute(sql, args)
                while chunk := cur.fetchmany(batch):
                    yield from ({**typed_row(COLUMNS, r, KINDS, "a segment of the history database"),
                                 "zone": r[1] or None} for r in chunk)
            except Exception as exc:
                if not self.db.driver_error(exc):
                    raise
                raise StreamrecError("cannot read the history database: "
                                     f"{self._said(exc, limit=300)}") from None

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and close the database, waiting ``timeout`` s at most for the
        writer (what it has not written by then is lost, logged); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()  # a database lost now is not waited for: what it misses is counted as dropped
        deadline = Deadline(timeout)
        try:
            self._q.put(None, timeout=deadline.left(cap=5.0))
        except queue.Full:  # the writer is stuck: it is a daemon thread
            pass
        self._writer.join(deadline.left())
        if self._writer.is_alive():
            logger.warning("history: %d segments not written within %.0f s of the stop", self._q.qsize(), timeout)
        if self._lock.acquire(timeout=max(deadline.left(), 0.1)):  # a writer stuck in a write keeps it
            try:
                self._conn.close()
            finally:
                self._lock.release()


def default_db() -> str:
    """``$XDG_DATA_HOME/streamrec/history.db`` (``~/.local/share/...``): ``serve``'s and ``history``'s default."""
    import os
    from pathlib import Path

    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "streamrec"
    base.mkdir(parents=True, exist_ok=True)
    return str(base / "history.db")
