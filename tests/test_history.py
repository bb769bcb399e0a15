"""The activity history read back: every segment, or the newest N, never a silent cut."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import time
from datetime import datetime

import pytest

from streamrec.serve.routes import history_api
from streamrec.errors import StreamrecError
from streamrec.live.history import HistoryStore, Segment

from conftest import run_main, streamrec_cmd


def fill(path, n: int) -> None:
    """``n`` one-second segments, alternating two cameras, starting at t = 1000 s."""
    HistoryStore(str(path)).close()  # the schema
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO segments (camera, label, start_ts, end_ts, mean_score, peak_score, windows) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [(f"cam-{i % 2}", f"label-{i}", 1000.0 + i, 1001.0 + i, 0.5, 0.75, 3) for i in range(n)])


def test_query_gives_all_or_the_newest_in_time_order(tmp_path):
    fill(tmp_path / "h.db", 25)
    store = HistoryStore(str(tmp_path / "h.db"))
    try:
        assert [r["start"] for r in store.query()] == [1000.0 + i for i in range(25)]
        assert [r["label"] for r in store.query(limit=3)] == ["label-22", "label-23", "label-24"]
        assert [r["label"] for r in store.query(camera="cam-1", limit=2)] == ["label-21", "label-23"]
        assert [r["start"] for r in store.rows(since=1020.5, batch=2)] == [1020.0, 1021.0, 1022.0, 1023.0, 1024.0]
        with pytest.raises(Exception, match="--limit: expected >= 1, got 0"):
            store.query(limit=0)
    finally:
        store.close()


def test_history_command_prints_every_segment_unless_limited(tmp_path):
    db = tmp_path / "h.db"
    fill(db, 12_345)  # more than one API answer (10,000) holds
    proc = run_main("history", "--db", str(db), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 12_345 and rows[0]["label"] == "label-0" and rows[-1]["label"] == "label-12344"
    proc = run_main("history", "--db", str(db), "--format", "csv", "--limit", "2")
    assert list(csv.DictReader(io.StringIO(proc.stdout))) == [
        {"camera": "cam-1", "zone": "", "label": "label-12343", "start": "13343.0", "end": "13344.0", "mean_score": "0.5",
         "peak_score": "0.75", "windows": "3"},
        {"camera": "cam-0", "zone": "", "label": "label-12344", "start": "13344.0", "end": "13345.0", "mean_score": "0.5",
         "peak_score": "0.75", "windows": "3"}]
    proc = run_main("history", "--db", str(db), "--limit", "0")
    assert proc.returncode == 2 and proc.stderr == "streamrec: error: --limit: expected >= 1, got 0\n"


def test_history_command_into_a_reader_that_goes_away(tmp_path):
    """``streamrec history | head -1``: the command ends (its cursor holds the store's lock
    until closed), with no traceback."""
    db = tmp_path / "h.db"
    fill(db, 50_000)
    proc = subprocess.Popen(streamrec_cmd("history", "--db", str(db), "--format", "csv"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "camera,zone,label,start,end,mean_score,peak_score,windows\n"
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in proc.stderr.read()


def test_history_api_answers_the_newest_and_says_when_it_cut(tmp_path):
    fill(tmp_path / "h.db", 30)
    store = HistoryStore(str(tmp_path / "h.db"))
    try:
        reply = history_api(store, limit=4).handler("GET", "/api/history", {"camera": ["cam-0"]})
        assert reply.status == 200
        assert [s["label"] for s in reply.body["segments"]] == ["label-22", "label-24", "label-26", "label-28"]
        assert reply.body["truncated"] is True
        reply = history_api(store, limit=15).handler("GET", "/api/history", {"camera": ["cam-0"]})
        assert len(reply.body["segments"]) == 15 and reply.body["truncated"] is False
    finally:
        store.close()


def test_segments_older_than_history_days_are_deleted_at_start_and_every_round(tmp_path):
    db = tmp_path / "h.db"
    fill(db, 10)  # segments end at 1001 ... 1010 s
    now = [1005.5 + 86400.0]  # one day after 1005.5: the first five ended more than a day ago
    store = HistoryStore(str(db), retain_days=1, clock=lambda: now[0], prune_every_s=0.05)
    try:
        assert [r["end"] for r in store.query()] == [1006.0, 1007.0, 1008.0, 1009.0, 1010.0]
        assert store.stats() == {"written": 0, "dropped": 0, "pruned": 5, "reconnects": 0, "retain_days": 1}
        now[0] += 3.0  # the writer thread's next round deletes three more
        deadline = time.monotonic() + 10
        while store.pruned < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r["end"] for r in store.query()] == [1009.0, 1010.0]
        assert store.pruned == 8
    finally:
        store.close()
    keep_all = HistoryStore(str(db))  # no retain_days: nothing deleted, ever
    try:
        assert keep_all.prune() == 0 and len(keep_all.query()) == 2
    finally:
        keep_all.close()


def test_history_days_is_checked_and_read_from_the_config(tmp_path, demo_clip):
    from streamrec.config import ServeConfig

    assert ServeConfig.from_sources({"source": "a.mp4", "history_days": 30}, {}).history_days == 30
    assert ServeConfig.from_sources({"source": "a.mp4", "history_days": 30}, {"history_days": 7.5}).history_days == 7.5
    proc = run_main("serve", "--source", str(demo_clip), "--history-days", "0")
    assert (proc.returncode, proc.stderr) == (2, "streamrec: error: --history-days: expected > 0 and at most 36500, got 0.0\n")


def test_history_counters_are_prometheus_metrics():
    from prometheus_client.parser import text_string_to_metric_families

    from streamrec.serve.metrics import Metrics
    from streamrec.serve.hub import Hub

    stats = {"written": 12, "dropped": 3, "pruned": 40, "reconnects": 2, "retain_days": 30}
    text = Metrics(Hub(), lambda: [], history=lambda: stats).render().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name.startswith("streamrec_history_")}
    assert values == {"streamrec_history_segments_written_total": 12.0, "streamrec_history_segments_dropped_total": 3.0,
                      "streamrec_history_segments_pruned_total": 40.0, "streamrec_history_reconnects_total": 2.0}


@pytest.mark.parametrize("text, seconds", [
    ("0001-01-01T00:00:00+00:00", -62135596800.0), ("9999-12-31T23:59:59.999999+00:00", 253402300799.999),
    ("2026-01-01T00:00:00.5Z", 1767225600.5), ("253402300799", 253402300799.0),
])
def test_the_first_and_last_instants_of_the_years_1_to_9999_are_times(text, seconds):
    from streamrec.timespan import parse_time

    assert parse_time(text, "since") == seconds


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def test_a_local_time_at_the_edge_of_the_years_is_a_time_or_out_of_range_never_a_bad_format(tz, monkeypatch):
    import time as clock
    from streamrec.timespan import parse_time

    monkeypatch.setenv("TZ", tz)
    clock.tzset()
    try:
        for text in ("0001-01-01", "9999-12-31T23:59"):
            try:
                value = parse_time(text, "since")
            except StreamrecError as exc:  # east of UTC, year 1's first local hours are before year 1 in UTC
                assert str(exc) == f"since: expected a time within the years 1 to 9999, got {text!r}"
            else:
                assert -62135596800 <= value < 253402300800
        assert parse_time("2026-07-01T12:00", "since") == datetime(2026, 7, 1, 12).astimezone().timestamp()
    finally:
        monkeypatch.delenv("TZ")
        clock.tzset()


@pytest.mark.parametrize("command", ["history", "events"])
def test_a_database_of_another_program_is_refused_and_left_as_it_is(tmp_path, command):
    from conftest import error_line, run_main

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (n INTEGER)")
    assert error_line(run_main(command, "--db", str(path))) == (
        f"streamrec: error: --db: expected a streamrec history database, got {str(path)!r}, whose tables are "
        "invoices: not streamrec's (left as they are)")
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["invoices"]


def test_times_keep_their_microseconds_however_they_are_written():
    from streamrec.timespan import time_span

    assert time_span("1767225600.0005", "2026-01-01T00:00:00.0009+00:00") == (1767225600.0005, 1767225600.0009)
    assert time_span("1969-12-31T23:59:59.9999+00:00", None) == (-0.0001, None)


@pytest.mark.slow
def test_a_segment_waits_for_a_sqlite_lock_held_past_the_busy_timeout_and_is_written(tmp_path):
    """Another writer (the events tables, a second program) holds the file longer than the busy
    timeout: the segment is written once the lock goes, not dropped; the prune at start under
    the same lock is put off with a warning, never a raised error."""
    db = tmp_path / "h.db"
    fill(db, 2)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store = HistoryStore(str(db), busy_timeout_s=0.2, retain_days=1, clock=lambda: 1001.5 + 86400, prune_every_s=3600)
    try:
        store.add(Segment("cam-0", "squat", 2000.0, 2010.0, 0.8, 0.9, 5))
        time.sleep(1.0)  # the writer met the lock at least once
        assert store.written == 0
        holder.execute("COMMIT")
        store.flush()
        assert (store.written, store.dropped) == (1, 0)
        assert [r["label"] for r in store.query()] == ["label-0", "label-1", "squat"]  # nothing pruned yet
        assert store.prune() == 1  # the next round: label-0 ended more than a day ago
        assert [r["label"] for r in store.query()] == ["label-1", "squat"]
    finally:
        holder.close()
        store.close()


def test_a_large_prune_goes_in_batches_and_the_end_index_is_used(tmp_path):
    from streamrec.live.history import PRUNE_BATCH

    db = tmp_path / "h.db"
    fill(db, PRUNE_BATCH * 2 + 5)  # segments end at 1001 s on
    store = HistoryStore(str(db), retain_days=1, clock=lambda: 1000.5 + PRUNE_BATCH * 2 + 86400.0)
    try:
        assert store.pruned == PRUNE_BATCH * 2 and len(store.query()) == 5
        with sqlite3.connect(db) as conn:  # the page's "the last ten minutes" reads an index, not every row
            plan = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM segments WHERE end_ts >= 5"))
        assert "USING INDEX segments_end" in plan, plan
    finally:
        store.close()


def test_two_programs_opening_an_older_database_at_once_both_open_it(tmp_path):
    """Both read the table before either adds the column; one adds it, the other's ALTER then
    fails: it reads the table again and goes on."""
    from streamrec.database import Database

    class ReadBeforeTheOther:
        """``second``, whose first look at the table is the one it took before ``first`` changed it."""

        def __init__(self, conn, seen):
            self.conn, self.seen = conn, seen

        def execute(self, sql, *args):
            if sql.startswith("PRAGMA") and self.seen is not None:
                seen, self.seen = self.seen, None
                return _Rows(seen)
            return self.conn.execute(sql, *args)

    class _Rows(list):
        def fetchall(self):
            return list(self)

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE segments (camera TEXT, label TEXT)")
    first, second = sqlite3.connect(db, isolation_level=None), sqlite3.connect(db, isolation_level=None)
    seen = second.execute("PRAGMA table_info(segments)").fetchall()
    first.execute("ALTER TABLE segments ADD COLUMN zone TEXT NOT NULL DEFAULT ''")  # the other program, first
    Database(str(db)).add_columns(ReadBeforeTheOther(second, seen), "segments",
                                  {"zone": "TEXT NOT NULL DEFAULT ''", "extra": "INTEGER"})
    assert [r[1] for r in second.execute("PRAGMA table_info(segments)")] == ["camera", "label", "zone", "extra"]
    first.close()
    second.close()


def test_a_stored_time_no_date_holds_is_printed_as_a_number(tmp_path):
    db = tmp_path / "h.db"
    fill(db, 1)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE segments SET end_ts = 1e20")
    proc = run_main("history", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[2:5] == [datetime.fromtimestamp(1000.0).strftime("%Y-%m-%d"),
                                                        datetime.fromtimestamp(1000.0).strftime("%H:%M:%S"), "1e+20"]
