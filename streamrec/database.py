"""The storage layer under the history and the events tables: which database a target names
(a SQLite file, ``:memory:``, or a ``postgresql://`` / ``postgres://`` URL), how it is connected
to (one policy of timeouts for every table), its SQL dialect, which errors mean "not now, try
again", and the columns a database made by an older streamrec gains at open. The drivers are
the DB-API ones: ``sqlite3``, and ``psycopg``, imported only for a PostgreSQL URL.

Example:
    >>> db = Database(":memory:", what="the example table")
    >>> conn = db.connect(lambda c: c.execute("CREATE TABLE t (a TEXT)"))
    >>> db.add_columns(conn, "t", {"b": "TEXT NOT NULL DEFAULT ''"})
    >>> [r[1] for r in conn.execute("PRAGMA table_info(t)")], db.ph, db.serial, db.sql("b = ?")
    (['a', 'b'], '?', 'INTEGER', 'b = ?')
    >>> Database("postgresql://u:pw@db.example/x").sql("b = ?")
    'b = %s'
    >>> conn.close()
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import sys
from typing import Any, Callable

from streamrec.errors import StreamrecError, install_hint
from streamrec.redact import mask_credentials, mask_quoted, printable
from streamrec.retry import Backoff

logger = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a server that does not answer the connection fails it after this
BUSY_TIMEOUT_S = 10.0  # SQLite: how long a write waits for another writer's lock by default
# PostgreSQL: a statement or a dead connection answers within seconds, never hangs a thread
PG_TIMEOUTS = {"options": "-c statement_timeout=10000", "keepalives": 1, "keepalives_idle": 10,
               "keepalives_interval": 5, "keepalives_count": 3}
# another writer holds the file; the disk is full (space may be freed): a write tried again later may land
SQLITE_NOT_NOW = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL)
RECONNECT = Backoff(base_s=0.5, cap_s=30.0)  # a lost database: connected to again after these waits


class DatabaseUnavailable(StreamrecError):
    """The database does not answer now (a PostgreSQL server restarting, a lost network, a
    SQLite file another writer holds); nothing of the failed call was written, and trying it
    again later is safe."""


class Database:
    """The database ``target`` names, and the one way every table of streamrec connects to it.

    SQLite: ``check_same_thread=False`` (one connection shared under the caller's lock),
    autocommit (``isolation_level=None``), a write waits ``busy_timeout_s`` for another writer's
    lock, and a file is in WAL mode (readers never wait for the writer). PostgreSQL: autocommit,
    :data:`CONNECT_TIMEOUT_S` to connect, and :data:`PG_TIMEOUTS` (a statement timeout and TCP
    keepalives). ``what`` names the tables in the one-line error of a database that cannot be opened.
    """

    def __init__(self, target: str, *, what: str = "the database", busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        if not isinstance(target, str):
            raise TypeError(f"--db: expected a path, :memory: or a postgresql:// URL as text, got {type(target).__name__}")
        if isinstance(busy_timeout_s, bool) or not isinstance(busy_timeout_s, (int, float)) or \
                not (math.isfinite(busy_timeout_s) and busy_timeout_s >= 0):
            raise ValueError(f"busy_timeout_s: expected a finite number of seconds >= 0, got {busy_timeout_s!r}")
        self.target = target
        self.what = what
        self._identity: tuple[int, int] | None = None  # the SQLite file's (device, inode) when connected
        self._told = False
        self.busy_timeout_s = float(busy_timeout_s)
        self.postgres = target.startswith(POSTGRES_SCHEMES)

    # -- the dialect ------------------------------------------------------------------
    @property
    def ph(self) -> str:
        """The driver's placeholder for one value: ``%s`` (psycopg) or ``?`` (sqlite3)."""
        return "%s" if self.postgres else "?"

    @property
    def serial(self) -> str:
        """The column type of an id the database numbers itself (with ``PRIMARY KEY``)."""
        return "BIGSERIAL" if self.postgres else "INTEGER"

    def sql(self, text: str) -> str:
        """``text`` written with ``?`` placeholders, in this database's placeholders (no ``?``
        may stand in a literal)."""
        return text.replace("?", self.ph) if self.postgres else text

    @property
    def shown(self) -> str:
        """The target as messages show it: credentials masked, control characters escaped."""
        return printable(mask_credentials(self.target))

    # -- connecting -------------------------------------------------------------------
    def connect(self, setup: Callable[[Any], object] | None = None):
        """A new connection, after ``setup(conn)`` ran on it (the tables' ``CREATE ... IF NOT
        EXISTS`` and :meth:`add_columns`). Any failure, of the connection or of ``setup``, is a
        one-line :class:`StreamrecError` naming the target with its credentials masked."""
        conn = None
        try:
            conn = self._open()
            if setup is not None:
                setup(conn)
            return conn
        except StreamrecError:
            close_quietly(conn)
            raise
        except Exception as exc:  # noqa: BLE001 - sqlite3 / psycopg errors: one line for the user
            close_quietly(conn)
            words = self.said(exc)
            raise StreamrecError(f"--db {self.shown}: cannot open {self.what}: {words}") from None

    def _open(self):
        if self.postgres:
            try:
                import psycopg
            except ImportError:
                raise StreamrecError("--db postgresql://: psycopg is not installed; " + install_hint("postgres")) from None
            return psycopg.connect(self.target, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **PG_TIMEOUTS)
        conn = sqlite3.connect(self.target, check_same_thread=False, isolation_level=None, timeout=self.busy_timeout_s)
        if self.target != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: never corrupt; a power cut loses the last commits, not a sync per row
            self._identity = file_identity(self.target)
        return conn

    def file_problem(self) -> str | None:
        """Why the SQLite file connected to is no longer the one at its path (deleted or replaced
        while in use: what is written now goes to a file no one can open again), else ``None``;
        logged the first time it is seen."""
        if self._identity is None:
            return None
        now = file_identity(self.target)
        if now == self._identity:
            return None
        why = f"the database file {self.shown} was {'deleted' if now is None else 'replaced'} while in use; " \
              "what is written now is lost at the stop (restart streamrec)"
        if not self._told:
            self._told = True
            logger.error("%s", why)
        return why

    def broken(self, conn) -> bool:
        """Whether the connection itself is gone (a PostgreSQL server that restarted, a network
        that went), not just one statement: only a new connection helps."""
        return self.postgres and bool(getattr(conn, "closed", False) or getattr(conn, "broken", False))

    def unavailable(self, exc: BaseException, conn=None) -> bool:
        """Whether ``exc`` means "not now" (a call tried again later may work): a lost PostgreSQL
        connection (``conn`` broken, or an ``OperationalError``: also a statement timeout, a lock
        or serialization conflict), a read-only server after a failover, a SQLite file another
        writer held longer than ``busy_timeout_s`` (``SQLITE_BUSY`` / ``SQLITE_LOCKED``), or a full
        disk (``SQLITE_FULL``)."""
        if conn is not None and self.broken(conn):
            return True
        if isinstance(exc, sqlite3.Error):  # the primary code of an extended one
            return getattr(exc, "sqlite_errorcode", -1) & 0xFF in SQLITE_NOT_NOW
        psycopg = sys.modules.get("psycopg")  # imported already wherever one of its errors was raised
        return psycopg is not None and isinstance(exc, (psycopg.OperationalError,
                                                        psycopg.errors.ReadOnlySqlTransaction))

    def said(self, exc: BaseException, limit: int | None = None) -> str:
        """What ``exc`` (the driver's or the server's words) says, on one line, with the database's
        password masked: the text a log, ``/healthz`` or a stored error may show."""
        return printable(mask_quoted(" ".join(str(exc).split()), self.target), limit=limit)

    @staticmethod
    def driver_error(exc: BaseException) -> bool:
        """Whether ``exc`` is an error of the database driver (``sqlite3`` or ``psycopg``), not of the code."""
        psycopg = sys.modules.get("psycopg")
        return isinstance(exc, sqlite3.Error) or (psycopg is not None and isinstance(exc, psycopg.Error))

    def add_columns(self, conn, table: str, columns: dict[str, str]) -> None:
        """Give ``table`` each of ``columns`` (name: its type and constraints) that it lacks: a
        database made before them. SQLite reads ``PRAGMA table_info``; PostgreSQL adds them
        ``IF NOT EXISTS``."""
        for name in (table, *columns):
            if not name.isidentifier():
                raise ValueError(f"add_columns: expected a table and column names that are SQL identifiers, got {name!r}")
        have: set[str] = set()
        if not self.postgres:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
        for name, ddl in columns.items():
            if name not in have:
                exists = "IF NOT EXISTS " if self.postgres else ""
                try:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {exists}{name} {ddl}")
                except sqlite3.OperationalError:  # another process opening it added it meanwhile
                    if name not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}:
                        raise
                    continue
                if not self.postgres:  # PostgreSQL does not say whether it had the column
                    logger.info("database %s: the table %s gained the column %s", self.shown, table, name)


def file_identity(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at ``path``, ``None`` when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def close_quietly(conn) -> None:
    """Close ``conn`` (``None``: nothing); one that is broken already says nothing."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - it is broken already
        pass


TEXT, NUMBER, INTEGER, NONE = (str,), (int, float), (int,), (type(None),)  # the kinds of a column's values


def typed_row(names: tuple[str, ...], values: tuple[Any, ...], kinds: dict[str, tuple[type, ...]],
              what: str) -> dict[str, Any]:
    """A row of ``names`` and ``values`` whose every value is of its column's ``kinds`` (numbers
    finite); else a :class:`StreamrecError` naming ``what``, the column and the value. SQLite keeps
    what any program wrote in a column whatever its type: a row streamrec did not write is said so
    in one line, not a traceback where it is printed or summed.

    >>> typed_row(("label", "score"), ("walking", 0.5), {"label": TEXT, "score": NUMBER}, "segment")
    {'label': 'walking', 'score': 0.5}
    >>> typed_row(("label", "score"), ("walking", "zz"), {"label": TEXT, "score": NUMBER}, "segment")
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: segment: its score is 'zz'; expected a finite number (a row not written by streamrec?)
    """
    row = dict(zip(names, values))
    for name, kind in kinds.items():
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, float) and not math.isfinite(value)):
            expected = " or ".join(w for w, there in (("text", str in kind), ("a finite number", float in kind),
                                                      ("an integer", float not in kind and int in kind),
                                                      ("none", type(None) in kind)) if there)
            raise StreamrecError(f"{what}: its {name} is {printable(repr(value), limit=60)}; expected {expected} "
                                 "(a row not written by streamrec?)")
    return row
