"""The activity history against a real PostgreSQL server that the test starts itself."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from streamrec.live.history import HistoryStore, SegmentTracker

from conftest import ROOT, free_port, run_cli, streamrec_cmd, wait_http, wait_until

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(not BIN or shutil.which("runuser") is None and os.geteuid() == 0,
                                reason="PostgreSQL server not installed (Debian: postgresql); .ci/run installs it")
pytest.importorskip("psycopg")


class Server:
    """A PostgreSQL server of the test's own, that a test may stop and start again."""

    def __init__(self, data: Path, port: int, as_user: list[str]) -> None:
        self.data, self.port, self.as_user = data, port, as_user
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run([*self.as_user, f"{BIN[-1]}/pg_ctl", "-D", str(self.data / "db"), *args], check=check,
                       capture_output=True)

    def start(self) -> None:
        self.pg_ctl("-w", "-l", str(self.data / "log"), "-o", f"-p {self.port} -h 127.0.0.1 -k {self.data}", "start")

    def stop(self, check: bool = True) -> None:
        self.pg_ctl("-m", "fast", "stop", check=check)


@pytest.fixture(scope="module")
def server():
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="streamrec-pg-"))  # under /tmp: the postgres user must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        os.chmod(data, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, f"{BIN[-1]}/initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    pg = Server(data, free_port(), as_user)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop(check=False)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres(server):
    return server.url


@pytest.mark.slow
def test_store_roundtrip(postgres):
    store = HistoryStore(postgres)
    t = SegmentTracker("pg-cam", store.add)
    for label, score, ts in [("a", 0.4, 1.0), ("b", 0.8, 2.0), ("b", 0.6, 3.0)]:
        t.update(label, score, ts)
    t.close(4.0)
    store.flush()
    rows = store.query(camera="pg-cam")
    newest = store.query(camera="pg-cam", limit=1)
    batched = list(store.rows(camera="pg-cam", batch=1))
    store.close()
    assert [(r["label"], r["start"], r["end"], r["mean_score"], r["peak_score"]) for r in rows] == [
        ("a", 1.0, 2.0, 0.4, 0.4), ("b", 2.0, 4.0, 0.7, 0.8)]
    assert newest == rows[1:] and batched == [{k: v for k, v in r.items() if k != "open"} for r in rows]
    assert [r["open"] for r in rows] == [False, False]  # closed: none is still going
    store = HistoryStore(postgres, retain_days=1, clock=lambda: 3.0 + 86400)  # "a" ended at 2.0: over a day ago
    try:
        assert store.pruned == 1 and [r["label"] for r in store.query(camera="pg-cam")] == ["b"]
    finally:
        store.close()


@pytest.mark.slow
def test_serve_and_history_use_postgres(postgres, demo_clip):
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--source", str(demo_clip), "--loop", "--model",
                                          "tiny3d", "--weights", "none", "--port", str(port), "--camera", "pool",
                                          "--db", postgres), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        wait_until(lambda: json.loads(wait_http(f"http://127.0.0.1:{port}/healthz"))["predictions"] >= 3,
                   "3 predictions", timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read()
    out = run_cli("history", "--db", postgres, "--camera", "pool", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows and all(r["camera"] == "pool" for r in rows)
    assert sum(r["windows"] for r in rows) >= 3


def writer_log(caplog, text: str) -> bool:
    """Whether the history writer (a thread of its own) has logged ``text`` yet."""
    return any(text in r.getMessage() for r in caplog.records if r.name == "streamrec.live.history")


def test_history_survives_a_postgres_restart(server, caplog):
    """The database restarts (maintenance, a failover) while serving: the writer reconnects and
    writes what closed meanwhile; the API answers 503 while it is away, then again."""
    from streamrec.serve.routes import history_api
    from streamrec.live.history import Segment

    caplog.set_level(logging.DEBUG, logger="streamrec.live.history")
    store = HistoryStore(server.url)
    api = history_api(store).handler
    try:
        store.add(Segment("restart-cam", "before", 1.0, 2.0, 0.5, 0.5, 1))
        store.flush()
        server.stop()
        try:
            assert api("GET", "/api/history", {"camera": ["restart-cam"]}).status == 503
            for i in range(3):  # closed while the server is down: they wait in the queue
                store.add(Segment("restart-cam", f"during-{i}", 3.0 + i, 4.0 + i, 0.5, 0.5, 1))
            # the writer found the server gone and tried to connect again, in vain: nothing written meanwhile
            wait_until(lambda: writer_log(caplog, "reconnect failed"), "a failed reconnect", timeout=30)
            assert store.written == 1
        finally:
            server.start()
        store.flush()
        assert store.stats()["dropped"] == 0 and store.written == 4 and store.reconnects >= 1
        reply = api("GET", "/api/history", {"camera": ["restart-cam"]})
        assert reply.status == 200
        assert [s["label"] for s in reply.body["segments"]] == ["before", "during-0", "during-1", "during-2"]
    finally:
        store.close()


def test_closing_with_the_database_gone_is_prompt_and_counts_the_loss(server, caplog):
    from streamrec.live.history import Segment

    caplog.set_level(logging.DEBUG, logger="streamrec.live.history")
    store = HistoryStore(server.url)
    server.stop()
    try:
        store.add(Segment("gone-cam", "lost", 1.0, 2.0, 0.5, 0.5, 1))
        wait_until(lambda: writer_log(caplog, "reconnecting"), "the writer to start reconnecting", timeout=30)
        store.close()
        # the writer left its reconnect wait (0.5 s doubling to 30 s) as close() began, and counted
        # the segment as lost before close() returned: it did not wait for the database
        assert (store.written, store.dropped) == (0, 1)
    finally:
        server.start()


def test_events_survive_a_postgres_restart(server):
    """The database restarts while an event is open: the labels go on (queued), and once it is
    back the event's end lands with its notification, on a new connection."""
    from test_events_manager import an_event, make

    from streamrec.events.store import EventStore
    from streamrec.serve.routes import events_api

    published: list = []
    manager = make(server.url, published)
    manager.start(["cam"])
    msgs = an_event(t0=5000.0)
    try:
        for msg in msgs[:4]:
            manager.observe("cam", msg)
        assert manager.flush(30) and [m["state"] for m in published] == ["open"]
        server.stop()
        try:
            for msg in msgs[4:]:  # handed over at once; the event's end waits for the database
                manager.observe("cam", msg)
            wait_until(lambda: manager.waiting_db, "the events thread waiting for the database", timeout=30)
            assert [m["state"] for m in published] == ["open"] and manager.stats()["waiting_db"] is True
            [problem] = manager.problems()  # /healthz: degraded, saying why
            assert problem.startswith("events: the database does not answer (events database lost: ") and problem.endswith(" labels wait")
            assert problem.isprintable(), problem  # the server's words on one line, escaped
            api = events_api(manager).handler  # the API says "not now", never a 500 with a traceback
            for path in ("/api/events", f"/api/events/{published[0]['id']}",
                         f"/api/events/{published[0]['id']}/clip.mp4", f"/api/events/{published[0]['id']}/thumb.jpg"):
                reply = api("GET", path, {})
                assert reply.status == 503 and reply.body["error"].startswith("events database unavailable: "), path
        finally:
            server.start()
        assert manager.flush(60)
        stats = manager.stats()
    finally:
        manager.close()
    assert [m["state"] for m in published] == ["open", "closed"]
    assert stats["db_reconnects"] >= 1 and stats["waiting_db"] is False and manager.errors == 0
    assert manager.problems() == []
    store = EventStore(server.url)
    try:
        row = store.get(published[0]["id"])
        assert (row["state"], row["start_ts"], row["end_ts"]) == ("closed", 5000.0, 5002.0)
        assert [(n.kind, n.channel) for n in store.pending(now=2e9) if n.event_id == row["id"]] == \
            [("event_start", "webhook"), ("event_end", "webhook")]
    finally:
        store.close()


@pytest.mark.parametrize("method, path, query, status", [
    ("GET", "/api/events/a\x00b", {}, 404), ("GET", "/api/events/a\x00b/clip.mp4", {}, 404),
    ("DELETE", "/api/events/\x00", {}, 404), ("GET", "/api/events", {"camera": ["\x00"]}, 400),
    ("GET", "/api/events", {"rule": ["x\x00"]}, 400), ("GET", "/api/history", {"camera": ["c\x00"]}, 400),
])
@pytest.mark.slow
def test_a_nul_in_an_api_name_is_answered_not_sent_to_postgres(server, tmp_path, method, path, query, status):
    from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
    from streamrec.events.manager import EventManager
    from streamrec.serve.routes import events_api, history_api
    from streamrec.supervision import Supervisor

    rule = RuleConfig(name="pour", labels=("pouring",), min_seconds=1.0, end_seconds=1.0)
    events = EventManager(rules=(rule,), notify=NotifyConfig(), recording=RecordingConfig(dir=str(tmp_path)),
                          db=server.url, classes=["pouring"], supervisor=Supervisor(), publish=lambda message: None)
    history = HistoryStore(server.url)
    try:
        route = history_api(history) if path == "/api/history" else events_api(events)
        reply = route.handler(method, path, query)  # PostgreSQL refuses text with a NUL: was a 500 or a 503
        assert reply.status == status and "\\x00" in reply.body["error"]
    finally:
        history.close()
        events.store.close()


@pytest.mark.slow
def test_history_rows_come_from_a_server_side_cursor_and_a_read_error_is_one_line(server):
    """A client-side cursor reads every row before the first (a year of history: past the
    statement timeout, and all in memory); the rows come batch by batch from a cursor on the
    server. A read that fails there (the server ended the session) is a StreamrecError."""
    import psycopg

    from streamrec.errors import StreamrecError

    store = HistoryStore(server.url)
    try:
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute("DELETE FROM segments WHERE camera = 'bulk'")
            admin.execute("INSERT INTO segments (camera, zone, label, start_ts, end_ts, mean_score, peak_score, windows) "
                          "SELECT 'bulk', '', 'run', g, g + 1, 0.5, 0.5, 1 FROM generate_series(1, 2500) AS g")
            rows = store.rows(camera="bulk", batch=1000)
            assert next(rows)["start"] == 1.0
            reading = admin.execute("SELECT pid, state, query FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                                    "AND query LIKE 'FETCH%'").fetchall()
            assert [(state, query) for _, state, query in reading] == [
                ("idle in transaction", 'FETCH FORWARD 1000 FROM "history_rows"')]
            admin.execute("SELECT pg_terminate_backend(%s)", (reading[0][0],))
        with pytest.raises(StreamrecError, match=r"^cannot read the history database: terminating connection"):
            for _ in rows:  # the first 1000 were fetched; the next batch finds the session gone
                pass
    finally:
        store.close()


@pytest.mark.slow
def test_a_server_refusal_reaches_healthz_on_one_line_with_the_password_hidden(postgres):
    """The server's words (a trigger's, here: multi-line, with an escape and the password) are
    escaped and masked before they become the events' "database does not answer" reason."""
    import psycopg

    from streamrec.database import DatabaseUnavailable
    from streamrec.events.store import Event, EventStore

    url = postgres.replace("postgres@", "postgres:hunter2@")  # trust: the password is not asked for
    store = EventStore(url)
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute("CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      "RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = E'busy\\x1b[2J\\nFAKE: ok for hunter2'; "
                      "END $$")
        admin.execute("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_event()")
        try:
            with pytest.raises(DatabaseUnavailable) as err:  # 40001: a serialization conflict, "not now"
                store.opened(Event("e-refused", "r", "cam", "walking", 1.0, 0.9, 0.9))
        finally:
            admin.execute("DROP TRIGGER refuse ON events")
            admin.execute("DROP FUNCTION refuse_event()")
            store.close()
    assert str(err.value) == ("events database cannot write now: busy\\x1b[2J FAKE: ok for *** "
                              "CONTEXT: PL/pgSQL function refuse_event() line 1 at RAISE")
