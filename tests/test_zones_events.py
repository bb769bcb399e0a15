"""Zones in the history, the rules, the events and MQTT: the zone columns added to a database
made before them (SQLite and PostgreSQL), a rule scoped to one zone driven with prediction
messages, per-zone history rows (store, CLI, API), per-zone MQTT topics and Home Assistant
sensors read back from a real mosquitto, and a rule naming a zone no camera has."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from conftest import error_line, run_main, wait_until
from servers import Subscriber, broker  # noqa: F401 - fixture
from streamrec.errors import StreamrecError
from streamrec.event_config import MqttConfig, NotifyConfig, RecordingConfig, RuleConfig, check_mqtt_cameras
from streamrec.events.manager import EventManager
from streamrec.events.store import Event, EventStore, row_event
from streamrec.live.history import HistoryStore
from streamrec.live.messages import prediction_message
from streamrec.live.smoothing import Smoothed
from streamrec.serve.routes import history_api
from streamrec.supervision import Supervisor

try:
    from test_postgres import pytestmark as postgres_only, server  # noqa: F401 - the PostgreSQL server fixture
except pytest.skip.Exception:  # psycopg is not installed
    postgres_only = pytest.mark.skip(reason="psycopg is not installed: the PostgreSQL migration test needs it")

    @pytest.fixture
    def server():
        yield None

CLASSES = ["squat", "walking"]
OLD_SEGMENTS = """CREATE TABLE segments (camera TEXT NOT NULL, label TEXT NOT NULL, start_ts DOUBLE PRECISION NOT NULL,
    end_ts DOUBLE PRECISION NOT NULL, mean_score DOUBLE PRECISION NOT NULL, peak_score DOUBLE PRECISION NOT NULL,
    windows INTEGER NOT NULL)"""
OLD_EVENTS = """CREATE TABLE events (id TEXT PRIMARY KEY, rule TEXT NOT NULL, camera TEXT NOT NULL, label TEXT NOT NULL,
    start_ts DOUBLE PRECISION NOT NULL, end_ts DOUBLE PRECISION, last_ts DOUBLE PRECISION NOT NULL,
    peak_score DOUBLE PRECISION NOT NULL, mean_score DOUBLE PRECISION NOT NULL, clip TEXT, thumbnail TEXT,
    clip_bytes BIGINT NOT NULL DEFAULT 0, state TEXT NOT NULL)"""
OLD_ROWS = ("INSERT INTO segments VALUES ('gym', 'squat', 10.0, 20.0, 0.5, 0.75, 3)",
            "INSERT INTO events VALUES ('e-old', 'lifting', 'gym', 'squat', 10.0, 20.0, 20.0, 0.9, 0.8, NULL, NULL, 0, "
            "'closed')")


def message(ts: float, label: str, camera: str = "gym", zone: str | None = None) -> dict:
    """A real prediction message of ``camera``'s ``zone`` at ``ts``."""
    idx = CLASSES.index(label)
    scores = np.array([0.9 if i == idx else 0.1 for i in range(len(CLASSES))], dtype=np.float32)
    smoothed = Smoothed(label_index=idx, score=0.9, uncertain=False, raw_index=idx, raw_score=0.9, scores=scores)
    return prediction_message(seq=int(ts), smoothed=smoothed, classes=CLASSES, probs=scores, start_ts=ts - 1.0,
                              end_ts=ts, frames=16, infer_ms=5.0, sent_ts=ts + 0.01, capture_fps=30.0, camera=camera,
                              zone=zone)


def check_migrated(history: HistoryStore, events: EventStore) -> None:
    """The old rows read as whole frames; new rows keep their zone."""
    assert [(r["camera"], r["zone"], r["label"]) for r in history.query()] == [("gym", None, "squat")]
    t = history.tracker("gym", "rack")
    t.update("walking", 0.8, 30.0)
    t.update("walking", 0.6, 31.0)
    t.close()
    history.flush()
    assert [(r["camera"], r["zone"], r["start"], r["end"]) for r in history.query(zone="rack")] == \
        [("gym", "rack", 30.0, 31.0)]
    assert [r["zone"] for r in history.query(zone="")] == [None]
    assert [(r["id"], r["zone"], r["state"]) for r in events.query()] == [("e-old", None, "closed")]
    events.opened(Event("e-new", "lifting", "gym", "squat", 40.0, 0.9, 0.9, zone="rack"), now=40.0)
    assert [(r["id"], r["zone"]) for r in events.query()] == [("e-new", "rack"), ("e-old", None)]
    assert [r["id"] for r in events.query(zone="rack")] == ["e-new"]
    assert [r["id"] for r in events.query(zone="")] == ["e-old"]
    assert row_event(events.get("e-new"))["zone"] == "rack"


def test_an_old_sqlite_database_gains_the_zone_columns_at_open(tmp_path):
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as conn:
        for sql in (OLD_SEGMENTS, OLD_EVENTS, *OLD_ROWS):
            conn.execute(sql)
        conn.commit()
    history, events = HistoryStore(str(db)), EventStore(str(db))
    try:
        check_migrated(history, events)
    finally:
        history.close()
        events.close()
    with closing(sqlite3.connect(db)) as conn:  # the whole frame is '' in segments, NULL in events
        assert conn.execute("SELECT zone FROM segments ORDER BY start_ts").fetchall() == [("",), ("rack",)]
        assert conn.execute("SELECT zone FROM events ORDER BY start_ts").fetchall() == [(None,), ("rack",)]


@postgres_only
def test_an_old_postgresql_database_gains_the_zone_columns_at_open(server):  # noqa: F811 - fixture
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE zones_old")
    url = server.url.rsplit("/", 1)[0] + "/zones_old"
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in (OLD_SEGMENTS, OLD_EVENTS, *OLD_ROWS):
            conn.execute(sql)
    history, events = HistoryStore(url), EventStore(url)
    try:
        check_migrated(history, events)
    finally:
        history.close()
        events.close()
    history = HistoryStore(url)  # opened again: the migration is not tried twice
    try:
        assert [r["zone"] for r in history.query()] == [None, "rack"]
    finally:
        history.close()


def test_a_rule_scoped_to_one_zone_opens_events_from_its_labels_only(tmp_path):
    published: list[dict] = []
    rule = RuleConfig("rack-squats", labels=("squat",), zones=("rack",), min_seconds=1.0, end_seconds=2.0,
                      cooldown_seconds=0.0)
    whole = RuleConfig("anywhere", labels=("squat",), min_seconds=1.0, end_seconds=2.0)
    events = EventManager(rules=(rule, whole), notify=NotifyConfig(), recording=RecordingConfig(enabled=False),
                          db=str(tmp_path / "h.db"), classes=CLASSES, supervisor=Supervisor(),
                          publish=published.append)
    events.start(["gym", "gym/rack", "gym/mat", "gym/bench", "gym/door"])
    try:
        for ts in (100.0, 100.5, 101.0, 101.5, 102.0):
            for zone in ("mat", "bench", "door", "rack"):
                events.observe(f"gym/{zone}", message(ts, "squat", zone=zone))
        assert events.flush()
        rows = events.store.query()
        assert [(r["rule"], r["camera"], r["zone"], r["state"], r["start_ts"]) for r in rows] == \
            [("rack-squats", "gym", "rack", "open", 100.0)]
        for ts in (103.0, 104.0, 105.0):  # the rack's squats stop: its event closes; the whole frame's start
            events.observe("gym/rack", message(ts, "walking", zone="rack"))
            events.observe("gym", message(ts, "squat"))
        assert events.flush()
        rows = events.store.query()
        assert [(r["rule"], r["zone"], r["state"], r["start_ts"], r["end_ts"]) for r in rows] == \
            [("anywhere", None, "open", 103.0, None), ("rack-squats", "rack", "closed", 100.0, 102.0)]
        assert [(m["rule"], m["zone"], m["state"]) for m in published] == \
            [("rack-squats", "rack", "open"), ("rack-squats", "rack", "closed"), ("anywhere", None, "open")]
        for ts in (106.0, 106.5, 107.0, 107.5):  # the rack again: a second event of its own
            events.observe("gym/rack", message(ts, "squat", zone="rack"))
        assert events.flush()
        assert [(r["zone"], r["state"]) for r in events.store.query(state="open")] == [("rack", "open"), (None, "open")]
        assert events.forget("gym").wait(10)  # the camera goes: its zones' events close with its own
        assert [(r["zone"], r["state"], r["end_ts"]) for r in events.store.query()] == [
            ("rack", "closed", 107.5), (None, "closed", 105.0), ("rack", "closed", 102.0)]
    finally:
        events.close()


def test_history_rows_per_zone_in_the_store_the_cli_and_the_api(tmp_path):
    db = tmp_path / "h.db"
    store = HistoryStore(str(db))
    try:
        for zone, label in ((None, "walking"), ("rack", "squat"), ("mat", "walking")):
            t = store.tracker("gym", zone)
            for ts in (10.0, 11.0, 12.0):
                t.update(label, 0.8, ts)
            t.close()
        store.flush()
        rows = store.query()
        assert [(r["camera"], r["zone"], r["label"], r["start"], r["end"]) for r in rows] == [
            ("gym", None, "walking", 10.0, 12.0), ("gym", "mat", "walking", 10.0, 12.0),
            ("gym", "rack", "squat", 10.0, 12.0)]
        reply = history_api(store).handler("GET", "/api/history", {"camera": ["gym"], "zone": ["rack"]})
        assert [(s["zone"], s["label"]) for s in reply.body["segments"]] == [("rack", "squat")]
    finally:
        store.close()
    proc = run_main("history", "--db", str(db), "--zone", "mat", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert [(r["camera"], r["zone"], r["label"]) for r in json.loads(proc.stdout)] == [("gym", "mat", "walking")]
    proc = run_main("history", "--db", str(db), "--zone", "")
    assert [line.split()[:2] for line in proc.stdout.splitlines()] == [["camera", "zone"], ["gym", "-"]]


def test_mqtt_topics_and_home_assistant_sensors_per_zone(tmp_path, broker):  # noqa: F811 - fixture
    keys = ["gym", "gym/rack", "gym/mat", "gym/door"]
    mqtt = MqttConfig(f"mqtt://127.0.0.1:{broker.port}", topic_prefix="sr", homeassistant_discovery=True,
                      discovery_prefix="ha")
    events = EventManager(rules=(), notify=NotifyConfig(mqtt=mqtt), recording=RecordingConfig(enabled=False),
                          db=str(tmp_path / "h.db"), classes=CLASSES, supervisor=Supervisor(), publish=lambda m: None)
    sub = Subscriber(broker, "sr/#", "ha/#")
    try:
        events.start(keys)
        wait_until(lambda: events.notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
        events.observe("gym/rack", message(100.0, "squat", zone="rack"))
        events.observe("gym", message(100.0, "walking"))
        wait_until(lambda: sub.on("sr/gym/rack/activity") and sub.on("sr/gym/activity"), "the activity", timeout=30)
        assert json.loads(sub.on("sr/gym/rack/activity")[0][0]) == {
            "camera": "gym", "zone": "rack", "label": "squat", "score": 0.9, "ts": 100.0, "uncertain": False}
        assert json.loads(sub.on("sr/gym/activity")[0][0])["zone"] is None
        topics = {f"ha/sensor/streamrec_{oid}/activity/config": key
                  for oid, key in zip(["gym", "gym__rack", "gym__mat", "gym__door"], keys)}
        wait_until(lambda: all(sub.on(t) for t in topics), "4 sensors", timeout=30)
        configs = {topics[t]: json.loads(sub.on(t)[0][0]) for t in topics}
        assert {k: (c["name"], c["state_topic"], c["unique_id"]) for k, c in configs.items()} == {
            "gym": ("Activity", "sr/gym/activity", "streamrec_gym_activity"),
            "gym/rack": ("rack activity", "sr/gym/rack/activity", "streamrec_gym__rack_activity"),
            "gym/mat": ("mat activity", "sr/gym/mat/activity", "streamrec_gym__mat_activity"),
            "gym/door": ("door activity", "sr/gym/door/activity", "streamrec_gym__door_activity")}
        assert {c["device"]["identifiers"][0] for c in configs.values()} == {"streamrec_gym"}  # one device
        late = Subscriber(broker, "ha/#")  # after the publishes: the configs are retained
        try:
            wait_until(lambda: all(late.on(t) for t in topics), "the 4 retained sensors", timeout=30)
            assert {t: [retained for _, retained in late.on(t)] for t in topics} == dict.fromkeys(topics, [True])
        finally:
            late.close()
    finally:
        sub.close()
        events.close()


def test_zones_saved_at_run_time_add_and_remove_their_home_assistant_sensors(tmp_path, broker):  # noqa: F811
    mqtt = MqttConfig(f"mqtt://127.0.0.1:{broker.port}", topic_prefix="sr", homeassistant_discovery=True,
                      discovery_prefix="ha")
    events = EventManager(rules=(), notify=NotifyConfig(mqtt=mqtt), recording=RecordingConfig(enabled=False),
                          db=str(tmp_path / "h.db"), classes=CLASSES, supervisor=Supervisor(), publish=lambda m: None)
    sub = Subscriber(broker, "sr/#", "ha/#")
    config = "ha/sensor/streamrec_{}/activity/config".format
    try:
        events.start(["gym", "gym/rack", "gym/mat"])
        wait_until(lambda: events.notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
        events.observe("gym/mat", message(100.0, "squat", zone="mat"))
        wait_until(lambda: sub.on(config("gym__mat")) and sub.on("sr/gym/mat/activity"), "mat's sensor", timeout=30)
        # the zones saved: mat deleted, bench drawn (the whole frame and rack stay)
        events.announce(["gym", "gym/rack", "gym/bench"], gone=["gym", "gym/rack", "gym/mat"])
        wait_until(lambda: sub.on(config("gym__bench")) and len(sub.on(config("gym__mat"))) == 2, "the change", timeout=30)
        assert sub.on(config("gym__mat"))[-1][0] in (b"", "")  # an empty retained config: HA removes the sensor
        wait_until(lambda: len(sub.on("sr/gym/mat/activity")) == 2, "mat's activity cleared", timeout=30)
        assert len(sub.on(config("gym__rack"))) == 1 and len(sub.on(config("gym"))) == 1  # kept, not re-sent
        late = Subscriber(broker, "ha/#", "sr/#")  # what a Home Assistant started now finds retained
        try:
            wait_until(lambda: late.on(config("gym__bench")), "the retained sensors", timeout=30)
            stale = [t for t in (config("gym__mat"), "sr/gym/mat/activity") if late.on(t)]
            assert stale == [] and all(late.on(config(k)) for k in ("gym", "gym__rack", "gym__bench"))
        finally:
            late.close()
    finally:
        sub.close()
        events.close()


@pytest.mark.slow
def test_a_zone_removed_while_the_broker_is_away_is_withdrawn_when_it_is_back(tmp_path, broker):  # noqa: F811
    mqtt = MqttConfig(f"mqtt://127.0.0.1:{broker.port}", topic_prefix="sr", homeassistant_discovery=True,
                      discovery_prefix="ha")
    events = EventManager(rules=(), notify=NotifyConfig(mqtt=mqtt), recording=RecordingConfig(enabled=False),
                          db=str(tmp_path / "h.db"), classes=CLASSES, supervisor=Supervisor(), publish=lambda m: None)
    connected = lambda: events.notifier.stats()["channels"]["mqtt"]["connected"]  # noqa: E731
    try:
        events.start(["gym", "gym/mat"])
        wait_until(connected, "the MQTT connection", timeout=30)
        broker.stop()
        wait_until(lambda: not connected(), "the broker gone", timeout=30)
        events.announce(["gym"], gone=["gym", "gym/mat"])  # mat deleted meanwhile
        broker.start()
        sub = Subscriber(broker, "ha/#", "sr/#")  # Home Assistant, back with the broker
        try:
            wait_until(lambda: sub.on("ha/sensor/streamrec_gym__mat/activity/config"), "mat's removal", timeout=90)
            assert sub.on("ha/sensor/streamrec_gym__mat/activity/config")[0][0] == ""
            wait_until(lambda: sub.on("sr/gym/mat/activity"), "mat's activity cleared", timeout=30)
            wait_until(lambda: sub.on("ha/sensor/streamrec_gym/activity/config"), "gym announced again", timeout=30)
            assert sub.on("ha/sensor/streamrec_gym/activity/config")[0][0] != ""
        finally:
            sub.close()
    finally:
        events.close()


CONFIG = """
db = "{db}"
[[cameras]]
name = "gym"
source = "rtsp://127.0.0.1:1/gym"
[[cameras.zones]]
name = "rack"
x = 0
y = 0
w = 0.5
h = 0.5
[[rules]]
name = "lifting"
labels = ["squat"]
{extra}
"""


YARD = '[[cameras]]\nname = "yard"\nsource = "rtsp://127.0.0.1:1/yard"\n'


@pytest.mark.parametrize("extra, expected", [
    ('zones = ["bench"]', "[[rules]] 'lifting': zones: no zone 'bench' on any camera; expected one of rack"),
    # the zone is gym's: a rule for the yard only cannot have it
    ('zones = ["rack"]\ncameras = ["yard"]\n' + YARD,
     "[[rules]] 'lifting': zones: no zone 'rack' on cameras yard; expected [[cameras.zones]] with that name"),
    ('zones = ["rack/x"]', "[[rules]] 'lifting': zones: name: expected 1-40 ASCII letters"),
])
def test_a_rule_naming_a_zone_no_camera_has_stops_serve_in_one_line(tmp_path, extra, expected):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(db=tmp_path / "h.db", extra=extra))
    proc = run_main("serve", "--config", str(cfg), "--port", "0")
    assert expected in error_line(proc)


def test_a_zone_and_a_camera_that_would_share_a_home_assistant_id_are_refused():
    mqtt = MqttConfig("mqtt://127.0.0.1", homeassistant_discovery=True)
    check_mqtt_cameras(mqtt, ["gym", "gym/rack", "gym/mat", "rack"])  # distinct ids: accepted
    with pytest.raises(StreamrecError) as err:
        check_mqtt_cameras(mqtt, ["gym/rack", "gym__rack"])
    assert str(err.value) == ("[notify.mqtt] homeassistant_discovery: streams 'gym/rack' and 'gym__rack' would share "
                              "the Home Assistant id 'streamrec_gym__rack'; expected distinct ids, rename one")
