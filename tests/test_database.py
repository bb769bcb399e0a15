"""The one storage layer under the history and the events tables (streamrec.database): the
target's dialect, the connection policy both stores share (a real SQLite busy timeout, WAL; a
real PostgreSQL server's statement timeout and keepalives), which errors mean "not now" (a real
SQLITE_BUSY from a second connection holding the write lock), the columns an old table gains,
and the one-line errors of a database that cannot be opened."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from contextlib import closing

import pytest

from streamrec.database import Database
from streamrec.errors import StreamrecError
from streamrec.events.store import EventStore
from streamrec.live.history import HistoryStore, Segment

try:
    from test_postgres import pytestmark as postgres_only, server  # noqa: F401 - the PostgreSQL server fixture
except pytest.skip.Exception:  # psycopg is not installed
    postgres_only = pytest.mark.skip(reason="psycopg is not installed: the PostgreSQL tests need it")

    @pytest.fixture
    def server():
        yield None


@pytest.mark.parametrize("target, postgres, ph, serial, sql", [
    ("history.db", False, "?", "INTEGER", "a = ? AND b = ?"),
    (":memory:", False, "?", "INTEGER", "a = ? AND b = ?"),
    ("postgresql://u:pw@db.example:5432/streamrec", True, "%s", "BIGSERIAL", "a = %s AND b = %s"),
    ("postgres://db.example/streamrec", True, "%s", "BIGSERIAL", "a = %s AND b = %s"),
    ("postgresql.db", False, "?", "INTEGER", "a = ? AND b = ?"),  # a file whose name starts like the scheme
])
def test_the_target_names_the_dialect(target, postgres, ph, serial, sql):
    db = Database(target)  # nothing is connected to yet
    assert (db.postgres, db.ph, db.serial, db.sql("a = ? AND b = ?")) == (postgres, ph, serial, sql)


def test_a_target_shows_its_credentials_masked():
    assert Database("postgresql://admin:hunter2@db.example/x?password=pw2").shown == \
        "postgresql://admin:***@db.example/x?password=***"
    assert Database("/data/a\nb.db").shown == "/data/a\\nb.db"


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "10", True])
def test_a_busy_timeout_that_is_no_number_of_seconds_is_refused(value):
    with pytest.raises(ValueError) as info:
        Database("h.db", busy_timeout_s=value)
    assert str(info.value) == f"busy_timeout_s: expected a finite number of seconds >= 0, got {value!r}"


def test_a_sqlite_file_is_connected_to_in_wal_mode_with_the_busy_timeout(tmp_path):
    for db in (Database(str(tmp_path / "a.db")), Database(str(tmp_path / "b.db"), busy_timeout_s=0.25)):
        with closing(db.connect()) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: no sync per written row
            assert conn.execute("PRAGMA busy_timeout").fetchone() == (int(db.busy_timeout_s * 1000),)
            assert conn.in_transaction is False  # autocommit: each statement lands on its own
    with closing(Database(":memory:").connect()) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("memory",)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (10000,)


def test_a_second_writer_holding_the_lock_is_unavailable_not_an_error(tmp_path):
    path = str(tmp_path / "h.db")
    db = Database(path, busy_timeout_s=0.05)
    conn = db.connect(lambda c: c.execute("CREATE TABLE t (a INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("INSERT INTO t VALUES (1)")
        assert time.monotonic() - started >= 0.04  # it waited the busy timeout first
        assert str(info.value) == "database is locked" and info.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
        assert db.unavailable(info.value) is True
        holder.execute("COMMIT")
        conn.execute("INSERT INTO t VALUES (1)")  # the lock released: it writes
    finally:
        holder.close()
    for exc_of in ("INSERT INTO nowhere VALUES (1)", "SELEC 1"):  # errors that trying again never mends
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute(exc_of)
        assert db.unavailable(info.value) is False
    conn.execute("CREATE TABLE u (a INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO u VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as info:
        conn.execute("INSERT INTO u VALUES (1)")
    assert db.unavailable(info.value) is False and db.broken(conn) is False
    conn.close()
    assert db.unavailable(ValueError("not a database error")) is False


def test_a_full_disk_is_unavailable_and_writes_again_once_there_is_room(tmp_path):
    """A write the file has no room for (here: the page limit, as a full disk) is tried again later."""
    db = Database(str(tmp_path / "h.db"))
    conn = db.connect(lambda c: c.execute("CREATE TABLE t (a TEXT)"))
    pages, = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as info:
        for _ in range(1000):
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 1000,))
    assert str(info.value) == "database or disk is full" and info.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    assert db.unavailable(info.value) is True
    conn.execute(f"PRAGMA max_page_count = {pages + 100}")  # room again
    conn.execute("INSERT INTO t VALUES ('y')")
    conn.close()


def test_an_events_table_from_before_its_newer_columns_is_read_and_written(tmp_path):
    """The first events table had no clip_bytes, clip_codec or zone: serve and the CLI open it."""
    from conftest import run_main

    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as c:
        c.execute("CREATE TABLE events (id TEXT PRIMARY KEY, rule TEXT NOT NULL, camera TEXT NOT NULL, label TEXT NOT NULL, "
                  "start_ts DOUBLE PRECISION NOT NULL, end_ts DOUBLE PRECISION, last_ts DOUBLE PRECISION NOT NULL, "
                  "peak_score DOUBLE PRECISION NOT NULL, mean_score DOUBLE PRECISION NOT NULL, clip TEXT, "
                  "thumbnail TEXT, state TEXT NOT NULL)")
        c.execute("INSERT INTO events VALUES ('1764770000-1a2b3c4d', 'lift', 'gym', 'deadlifting', 1764770000.0, "
                  "1764770010.0, 1764770010.0, 0.9, 0.8, 'gym/a.mp4', NULL, 'closed')")
        c.commit()
    proc = run_main("events", "--db", str(path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    store = EventStore(str(path))
    try:
        [row] = store.query()
        assert (row["id"], row["clip_bytes"], row["clip_codec"], row["zone"]) == ("1764770000-1a2b3c4d", 0, None, None)
    finally:
        store.close()


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_sqlite_file_deleted_or_replaced_while_in_use_is_said_to_be(tmp_path, caplog, change):
    import os

    path = tmp_path / "h.db"
    db = Database(str(path))
    conn = db.connect(lambda c: c.execute("CREATE TABLE t (a INTEGER)"))
    assert db.file_problem() is None
    for p in tmp_path.glob("h.db*"):
        p.unlink()
    if change == "replaced":
        path.write_bytes(os.urandom(8192))
    why = (f"the database file {path} was {change} while in use; what is written now is lost at the stop "
           "(restart streamrec)")
    with caplog.at_level(logging.ERROR, logger="streamrec.database"):
        assert db.file_problem() == why and db.file_problem() == why
    assert [r.getMessage() for r in caplog.records] == [why]  # told once
    conn.close()
    assert Database(":memory:").file_problem() is None


def test_postgresql_errors_that_mean_not_now():
    psycopg = pytest.importorskip("psycopg")
    db = Database("postgresql://db.example/x")
    assert db.unavailable(psycopg.OperationalError("server closed the connection unexpectedly")) is True
    assert db.unavailable(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")) is True
    assert db.unavailable(psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"))
    assert db.unavailable(psycopg.errors.UniqueViolation("duplicate key")) is False
    assert db.unavailable(psycopg.errors.UndefinedTable("relation does not exist")) is False


OLD_SEGMENTS = """CREATE TABLE segments (camera TEXT NOT NULL, label TEXT NOT NULL, start_ts DOUBLE PRECISION NOT NULL,
    end_ts DOUBLE PRECISION NOT NULL, mean_score DOUBLE PRECISION NOT NULL, peak_score DOUBLE PRECISION NOT NULL,
    windows INTEGER NOT NULL)"""


def test_add_columns_gives_an_old_sqlite_table_the_columns_it_lacks(tmp_path):
    db = Database(str(tmp_path / "old.db"))
    with closing(db.connect()) as conn:
        conn.execute(OLD_SEGMENTS)
        conn.execute("INSERT INTO segments VALUES ('gate', 'walking', 1.0, 2.0, 0.5, 0.6, 2)")
        for _ in range(2):  # the second time, it has them all: nothing to add
            db.add_columns(conn, "segments", {"windows": "INTEGER", "zone": "TEXT NOT NULL DEFAULT ''", "note": "TEXT"})
        assert [r[1] for r in conn.execute("PRAGMA table_info(segments)")] == [
            "camera", "label", "start_ts", "end_ts", "mean_score", "peak_score", "windows", "zone", "note"]
        assert conn.execute("SELECT camera, zone, note FROM segments").fetchall() == [("gate", "", None)]
        for table, columns in (("segments; DROP TABLE segments", {"a": "TEXT"}), ("segments", {"a b": "TEXT"})):
            with pytest.raises(ValueError) as info:
                db.add_columns(conn, table, columns)
            bad = table if " " in table else "a b"
            assert str(info.value) == f"add_columns: expected a table and column names that are SQL identifiers, got {bad!r}"
    history = HistoryStore(db.target)  # the history store migrates the same table at open
    try:
        assert [(r["camera"], r["zone"], r["label"]) for r in history.query()] == [("gate", None, "walking")]
    finally:
        history.close()


def test_both_stores_are_connected_to_the_same_way(tmp_path):
    path = str(tmp_path / "h.db")
    history, events = HistoryStore(path), EventStore(path)
    try:
        assert (history.db.busy_timeout_s, history.db.what) == (10.0, "the history database")
        assert (events.db.busy_timeout_s, events.db.what) == (10.0, "the events tables")
    finally:
        history.close()
        events.close()


def test_a_history_write_waits_for_another_writer_past_its_busy_timeout(tmp_path, caplog):
    """A lock held longer than the busy timeout is "not now": the segment is tried again (a
    warning says so once), never dropped, and written when the lock goes."""
    path = str(tmp_path / "h.db")
    HistoryStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    waits, quick = HistoryStore(path), HistoryStore(path, busy_timeout_s=0.05)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING, logger="streamrec.live.history"):
            quick.add(Segment("gate", "walking", 1.0, 2.0, 0.5, 0.6, 2))
            waits.add(Segment("gate", "running", 2.0, 3.0, 0.5, 0.6, 2))
            time.sleep(1.0)  # both writers wait for the lock meanwhile, the quick one past its busy timeout
        assert (quick.written, quick.dropped, waits.written, waits.dropped) == (0, 0, 0, 0)
        assert [r.getMessage() for r in caplog.records] == [
            f"history: the database {path} is busy (database is locked); trying again"]
        holder.execute("COMMIT")
        quick.flush()
        waits.flush()
        assert (quick.written, quick.dropped, waits.written, waits.dropped) == (1, 0, 1, 0)
        assert [r["label"] for r in waits.query()] == ["walking", "running"]
    finally:
        holder.close()
        waits.close()
        quick.close()


def test_a_database_that_cannot_be_opened_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no such folder" / "h.db"
    for store, what in ((HistoryStore, "the history database"), (EventStore, "the events tables")):
        with pytest.raises(StreamrecError) as info:
            store(str(missing))
        assert str(info.value) == f"--db {missing}: cannot open {what}: unable to open database file"


def test_a_missing_psycopg_names_the_command_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    for store in (HistoryStore, EventStore):
        with pytest.raises(StreamrecError) as info:
            store("postgresql://u:pw@127.0.0.1:1/x")
        message = str(info.value)
        assert message.startswith("--db postgresql://: psycopg is not installed; pip install -e ")
        assert message.endswith("[postgres]'")


def test_a_postgresql_server_that_refuses_is_one_line_with_the_password_masked():
    pytest.importorskip("psycopg")
    for store, what in ((HistoryStore, "the history database"), (EventStore, "the events tables")):
        with pytest.raises(StreamrecError) as info:
            store("postgresql://u:hunter2@127.0.0.1:1/x")
        message = str(info.value)
        assert message.startswith(f"--db postgresql://u:***@127.0.0.1:1/x: cannot open {what}: ")
        assert "hunter2" not in message and "\n" not in message


@postgres_only
@pytest.mark.slow
def test_both_stores_connect_to_postgresql_with_the_timeouts_and_keepalives(server):  # noqa: F811 - fixture
    import psycopg

    history, events = HistoryStore(server.url), EventStore(server.url)
    try:
        for db in (history.db, events.db):
            conn = db.connect()
            assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
            params = conn.info.get_parameters()  # libpq's own: the keepalives of the client's socket
            assert {k: params.get(k) for k in ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                                               "keepalives_count")} == {"connect_timeout": "10", "keepalives": "1",
                                                                        "keepalives_idle": "10", "keepalives_interval": "5",
                                                                        "keepalives_count": "3"}
            assert conn.autocommit is True and db.broken(conn) is False
            with pytest.raises(psycopg.errors.UndefinedTable) as info:
                conn.execute("SELECT * FROM nowhere")
            assert db.unavailable(info.value, conn) is False
            conn.close()
            assert db.broken(conn) is True and db.unavailable(info.value, conn) is True
    finally:
        history.close()
        events.close()
