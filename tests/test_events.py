"""Events: the rule engine's decisions, config errors at start, and an event through a real
server (the API, the websocket, the database and the ``events`` command)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from streamrec.event_config import RuleConfig
from streamrec.events.engine import RuleEngine
from streamrec.models.registry import build_model, make_checkpoint, model_spec

from conftest import error_line, free_port, run_main, sigterm, streamrec_cmd, wait_http, write_video


def feed(engine: RuleEngine, seq: list[tuple[float, str, float]], camera: str = "cam") -> list[tuple]:
    out = []
    for ts, label, score in seq:
        out += [(c.kind, ts, c.event.start_ts, c.event.end_ts) for c in engine.update(camera, label, score, ts)
                if c.kind != "seen"]
    return out


def test_an_event_of_days_keeps_its_peak_and_mean_in_constant_memory():
    """A camera that sees one activity for days (an office's "sitting"): each label costs the same,
    and the open event holds no record per label."""
    import tracemalloc

    eng = RuleEngine([RuleConfig("sit", labels=("sitting",), min_seconds=1.0, end_seconds=2.0)], new_id=lambda ev: "e")
    scores = [0.5 + (t % 7) / 20 for t in range(30_000)]  # 0.5 .. 0.8; four hours of labels at 2 a second

    def run(start: int, stop: int) -> list:  # the changes of the last label (earlier ones are let go)
        changes: list = []
        for t in range(start, stop):
            changes = eng.update("cam", "sitting", scores[t], t / 2)
        return changes

    run(0, 10_000)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    changes = run(10_000, 30_000)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename")
                if s.traceback[0].filename.endswith("engine.py"))
    tracemalloc.stop()
    assert grown < 10_000, grown  # was 8 bytes and more a label: 200 kB over these 20,000
    ev = changes[-1].event
    assert (ev.start_ts, ev.peak_score) == (0.0, 0.8)
    assert ev.mean_score == pytest.approx(sum(scores) / len(scores), abs=1e-9)


def test_an_event_opens_after_min_seconds_and_closes_after_end_seconds():
    eng = RuleEngine([RuleConfig("run", labels=("running",), min_seconds=1.0, end_seconds=2.0, cooldown_seconds=5.0)],
                     new_id=lambda ev: "e")
    seq = [(t / 2, "running", 0.9) for t in range(0, 6)] + [(3.0 + t / 2, "walking", 0.9) for t in range(0, 6)]
    assert feed(eng, seq) == [("start", 1.0, 0.0, None), ("end", 4.5, 0.0, 2.5)]


def test_low_scores_uncertain_labels_and_short_runs_open_nothing():
    eng = RuleEngine([RuleConfig("run", labels=("running",), min_score=0.5, min_seconds=1.0)], new_id=lambda ev: "e")
    seq = [(0.0, "running", 0.9), (0.5, "running", 0.4), (1.0, "running", 0.9), (1.5, "walking", 0.9),
           (2.0, "running", 0.9), (2.5, "running", 0.9)]
    assert feed(eng, seq) == []
    assert [c.kind for c in eng.update("cam", "running", 0.9, 3.0, uncertain=True)] == []


def test_cooldown_keeps_a_second_event_away_and_cameras_are_separate():
    rule = RuleConfig("run", labels=("running",), min_seconds=0.0, end_seconds=1.0, cooldown_seconds=10.0)
    eng = RuleEngine([rule], new_id=lambda ev: f"{ev.camera}-{ev.start_ts}")
    seq = [(0.0, "running", 0.9), (1.0, "x", 0.9), (2.0, "x", 0.9)] + [(3.0 + t, "running", 0.9) for t in range(10)]
    # the run that began at 3.0 in the cooldown (to 10.0) opens its event when the cooldown is over, dated 3.0
    assert feed(eng, seq) == [("start", 0.0, 0.0, None), ("end", 1.0, 0.0, 0.0), ("start", 10.0, 3.0, None)]
    assert feed(eng, [(3.0, "running", 0.9)], camera="other") == [("start", 3.0, 3.0, None)]


def test_an_activity_that_began_in_the_cooldown_is_dated_from_its_first_label():
    rule = RuleConfig("run", labels=("running",), min_seconds=2.0, end_seconds=2.0, cooldown_seconds=10.0)
    eng = RuleEngine([rule], new_id=lambda ev: f"e{ev.start_ts}")
    first = [(t, "running", 0.9) for t in (0.0, 1.0, 2.0)] + [(t, "walking", 0.9) for t in (3.0, 4.0)]
    # cooldown until 12.0; running from 5.0, interrupted at 7.0, again from 8.0 for 20 s
    second = [(5.0, "running", 0.9), (6.0, "running", 0.9), (7.0, "walking", 0.9)] + \
        [(8.0 + t, "running", 0.9) for t in range(21)] + [(29.0 + t, "walking", 0.9) for t in range(3)]
    assert feed(eng, first + second) == [("start", 2.0, 0.0, None), ("end", 4.0, 0.0, 2.0),
                                         ("start", 12.0, 8.0, None), ("end", 30.0, 8.0, 28.0)]
    # after the cooldown, an activity is dated from its first label too, not the label that opened it
    assert feed(eng, [(40.0 + t, "running", 0.9) for t in range(3)]) == [("start", 42.0, 40.0, None)]


@pytest.mark.parametrize("gap, start", [
    ([(6.0, "running", 0.9, True)], 5.0),  # an uncertain label inside the run: still dated 5.0
    ([(6.0, "running", 0.9, True), (7.0, "running", 0.9, True)], 8.0),  # end_seconds uncertain: a new run
    ([(6.0, "walking", 0.9, False)], 8.0),  # another activity: a new run
])
def test_a_run_in_the_cooldown_keeps_its_start_across_an_uncertain_label(gap, start):
    rule = RuleConfig("run", labels=("running",), min_seconds=1.0, end_seconds=2.0, cooldown_seconds=10.0)
    eng = RuleEngine([rule], new_id=lambda ev: f"e{ev.start_ts}")
    feed(eng, [(0.0, "running", 0.9), (1.0, "running", 0.9), (2.0, "x", 0.9), (3.0, "x", 0.9)])  # cooldown to 11
    changes = []
    for ts, label, score, uncertain in [(5.0, "running", 0.9, False)] + gap + \
            [(8.0 + t, "running", 0.9, False) for t in range(5)]:
        changes += [(c.kind, ts, c.event.start_ts) for c in eng.update("cam", label, score, ts, uncertain=uncertain)
                    if c.kind != "seen"]
    assert changes == [("start", 11.0, start)]
    # an activity that began in the cooldown and ended before it expired opens nothing
    feed(eng, [(20.0 + t, "x", 0.9) for t in range(3)])
    assert feed(eng, [(25.0, "running", 0.9), (26.0, "x", 0.9), (36.0, "x", 0.9), (37.0, "x", 0.9)]) == []


@pytest.mark.parametrize("labels, changes", [
    # one label, then nothing for 100 s: the activity after the pause is dated from its own first label
    ([(0.0, "running"), (100.0, "running"), (100.5, "running"), (101.0, "running"), (102.0, "running")],
     [("start", 102.0, 100.0, None)]),
    # an open event, then an outage (no label at all for 30 s): it ended at its last label, and a new one opens
    ([(t / 2, "running") for t in range(9)] + [(34.0 + t / 2, "running") for t in range(5)],
     [("start", 2.0, 0.0, None), ("end", 34.0, 0.0, 4.0), ("start", 36.0, 34.0, None)]),
    # a pause shorter than the outage (3 usual intervals, 2 s at least) and end_seconds: one event
    ([(t / 2, "running") for t in range(9)] + [(5.5 + t / 2, "running") for t in range(5)],
     [("start", 2.0, 0.0, None)]),
])
def test_a_pause_of_every_label_ends_the_activity_before_it(labels, changes):
    rule = RuleConfig("run", labels=("running",), min_seconds=2.0, end_seconds=1.0, cooldown_seconds=0.0)
    eng = RuleEngine([rule], new_id=lambda ev: f"e{ev.start_ts}")
    assert feed(eng, [(ts, label, 0.9) for ts, label in labels]) == changes


def test_labels_that_stop_coming_end_the_open_event_at_its_last_label():
    rule = RuleConfig("run", labels=("running",), min_seconds=1.0, end_seconds=4.0, cooldown_seconds=0.0)
    eng = RuleEngine([rule], new_id=lambda ev: f"e{ev.start_ts}")
    opened = [c.kind for t in range(5) for c in eng.update("cam", "running", 0.9, 100.0 + t, now=1000.0 + t)]
    assert opened == ["start", "seen", "seen", "seen"]
    assert eng.expire(1008.0) == []  # 4 s since the last label came: not more than end_seconds
    [end] = eng.expire(1008.5)
    assert (end.kind, end.event.start_ts, end.event.end_ts) == ("end", 100.0, 104.0)
    assert eng.expire(1020.0) == [] and eng.tracks[("run", "cam", None)].open is None
    # a run that has not opened an event yet is over too: the next activity is dated from its own start
    eng.update("cam", "running", 0.9, 200.0, now=1100.0)
    assert eng.expire(1105.0) == [] and eng.tracks[("run", "cam", None)].since is None


def test_a_deleted_open_event_is_followed_silently_and_never_closed():
    rule = RuleConfig("run", labels=("running",), min_seconds=1.0, end_seconds=2.0, cooldown_seconds=0.0)
    eng = RuleEngine([rule], new_id=lambda ev: f"e{ev.start_ts}")
    assert feed(eng, [(0.0, "running", 0.9), (1.0, "running", 0.9)]) == [("start", 1.0, 0.0, None)]
    assert eng.discard("e0.0").id == "e0.0" and eng.discard("e0.0") is None and eng.discard("nope") is None
    # the activity goes on (with a gap shorter than end_seconds), ends, and starts anew
    seq = [(2.0, "running", 0.9), (3.5, "walking", 0.9), (4.0, "running", 0.9), (5.0, "walking", 0.9),
           (6.5, "walking", 0.9), (7.0, "running", 0.9), (8.0, "running", 0.9)]
    assert feed(eng, seq) == [("start", 8.0, 7.0, None)]
    assert [c.event.id for c in eng.close_all()] == ["e7.0"]
    eng = RuleEngine([rule], new_id=lambda ev: f"e{ev.start_ts}")  # at the stop and a camera's removal:
    feed(eng, [(20.0, "running", 0.9), (21.0, "running", 0.9)])  # nothing to close
    assert eng.discard("e20.0") is not None
    assert eng.close_all() == [] and eng.forget("cam") == []


def test_a_camera_restarting_with_a_zone_unchanged_keeps_that_zones_open_event():
    """New zones: the events of zones that go (and of the whole frame, when it goes) close; a zone
    kept as it was goes on with its event, which a restart longer than an outage ends anyway."""
    rules = [RuleConfig("lift", labels=("deadlifting",), zones=("rack", "mat"), min_seconds=0.0, end_seconds=2.0),
             RuleConfig("whole", labels=("deadlifting",), min_seconds=0.0, end_seconds=2.0)]
    eng = RuleEngine(rules, new_id=lambda ev: f"{ev.zone}-{ev.start_ts}")
    for zone in ("rack", "mat", None):
        assert [c.kind for c in eng.update("gym", "deadlifting", 0.9, 10.0, zone=zone)] == ["start"]
        eng.update("gym", "deadlifting", 0.9, 11.0, zone=zone)
    closed = eng.forget("gym", keep=["rack"])
    assert sorted((c.kind, c.event.id, c.event.end_ts) for c in closed) == [("end", "None-10.0", 11.0),
                                                                            ("end", "mat-10.0", 11.0)]
    assert [c.kind for c in eng.update("gym", "deadlifting", 0.9, 12.5, zone="rack")] == ["seen"]  # 1.5 s: goes on
    [end] = eng.update("gym", "deadlifting", 0.9, 30.0, zone="rack")  # 17.5 s without labels: an outage
    assert (end.kind, end.event.id, end.event.end_ts) == ("end", "rack-10.0", 12.5)


def test_a_rule_on_some_cameras_ignores_the_others_and_peak_and_mean_follow_the_scores():
    eng = RuleEngine([RuleConfig("run", labels=("running",), cameras=("a",), min_seconds=0.0)], new_id=lambda ev: "e")
    assert eng.update("b", "running", 0.9, 0.0) == []
    [start] = eng.update("a", "running", 0.6, 0.0)
    eng.update("a", "running", 1.0, 1.0)
    eng.update("a", "running", 0.8, 2.0)
    assert (start.event.peak_score, start.event.peak_ts, round(start.event.mean_score, 6)) == (1.0, 1.0, 0.8)


def always_b(path) -> str:
    """A tiny3d checkpoint whose head always answers "b" (score about 1): a deterministic model."""
    module = build_model("tiny3d", num_classes=3)
    with torch.no_grad():
        module.fc.weight.zero_()
        module.fc.bias.copy_(torch.tensor([0.0, 12.0, 0.0]))
    torch.save(make_checkpoint(module, model="tiny3d", classes=["a", "b", "c"], spec=model_spec("tiny3d")), path)
    return str(path)


RULES = """
source = "{video}"
loop = true
camera = "gate"
db = "{db}"
[[rules]]
name = "bees"
labels = ["b"]
min_seconds = {min_seconds}
{extra}
"""


@pytest.mark.parametrize("extra, message", [
    # the hint lists the loaded checkpoint's own classes, not Kinetics-400's
    ('labels = ["z"]', "[[rules]] 'bees': labels: the model has no class 'z'; the loaded model's classes: a, b, c"),
    ('labels = ["B"]', "labels: the model has no class 'B'; did you mean 'b'? The loaded model's classes: a, b, c"),
    # the clips' folder: made when missing, refused when it cannot be made or written
    ('[recording]\ndir = "TMP/a-file/clips"', "[recording] dir: expected a folder streamrec can write clips into, "
                                               "got 'TMP/a-file/clips' (Not a directory)"),
    ('[recording]\ndir = "TMP/a-file"', "[recording] dir: expected a folder streamrec can write clips into, "
                                         "got 'TMP/a-file' (a file, not a folder)"),
    ('[recording]\npacket_ring_mb = 4096', "[recording] packet_ring_mb: expected at most 1024 MB per camera, got 4096.0"),
    ('[recording]\npacket_ring_mb = 0.001', "[recording] packet_ring_mb: expected at least 1 MB per camera"),
    ('[recording]\npacket_ring_mb = inf', "[recording] packet_ring_mb: expected a finite number, got inf"),
    ('[recording]\npacket_ring_mb = nan', "[recording] packet_ring_mb: expected a finite number, got nan"),
    # a clip starts pre_seconds before its event and stops at max_seconds: it would hold none of it
    ('[recording]\npre_seconds = 300\nmax_seconds = 120', "[recording] pre_seconds: expected less than max_seconds "
     "(120.0: a clip starts pre_seconds before its event and stops at max_seconds), got 300.0"),
    ('[recording]\npre_seconds = 1e9', "[recording] pre_seconds: expected less than max_seconds (120.0"),
    ('[recording]\ndir = "TMP/dangling"', "got 'TMP/dangling' (a link to 'TMP/nowhere', which does not exist)"),
    ('groups = ["quidditch"]', "[[rules]] 'bees': groups: no group 'quidditch'"),
    # Kinetics-400's groups on a fine-tuned checkpoint would match none of its classes
    ('groups = ["ball sports"]', "groups: the group 'ball sports' has none of the loaded model's classes"),
    ('cameras = ["nowhere"]', "[[rules]] 'bees': cameras: no camera 'nowhere'; expected one of gate"),
    ('notify = ["webhook"]', "[[rules]] 'bees': notify: webhook needs a [notify.webhook] table"),
    ('notify = ["webhook"]\n[notify.webhook]\nurl = "ftp://x"', "[notify.webhook] url: expected an http:// or https:// URL"),
    ('end_seconds = -1', "[[rules]] 'bees': end_seconds: expected >= 0 seconds, got -1.0"),
])
@pytest.mark.slow
def test_rule_errors_stop_serve_with_one_line(tmp_path, extra, message):
    video = write_video(tmp_path / "v.mp4", seconds=1)
    text = RULES.format(video=video, db=tmp_path / "h.db", min_seconds=1, extra=extra)
    if extra.startswith("labels"):
        text = text.replace('labels = ["b"]\n', "")
    (tmp_path / "a-file").write_text("a file where the clips' folder should be")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    text, message = text.replace("TMP", str(tmp_path)), message.replace("TMP", str(tmp_path))
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    proc = run_main("serve", "--config", str(cfg), "--weights", always_b(tmp_path / "b.pt"), "--port", "0")
    assert proc.returncode == 2, proc.stderr
    assert message in error_line(proc)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_an_event_reaches_the_page_the_api_the_database_and_the_events_command(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=3)
    db = tmp_path / "h.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(RULES.format(video=video, db=db, min_seconds=1, extra=f'[recording]\ndir = "{tmp_path / "clips"}"'))
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--weights", always_b(tmp_path / "b.pt"),
                                          "--port", str(port), "--device", "cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc=proc)

        async def first_event():
            import websockets

            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22) as ws:
                while True:
                    m = await asyncio.wait_for(ws.recv(), 120)
                    if isinstance(m, str) and json.loads(m)["type"] == "event":
                        return json.loads(m)

        pushed = asyncio.run(first_event())
        assert (pushed["rule"], pushed["camera"], pushed["label"], pushed["state"]) == ("bees", "gate", "b", "open")
        listed = get_json(f"{base}/api/events?camera=gate")["events"]
        assert [e["id"] for e in listed] == [pushed["id"]]
        assert get_json(f"{base}/api/events?rule=other")["events"] == []
        one = get_json(f"{base}/api/events/{pushed['id']}")
        assert one["end_ts"] is None and one["clip"] == f"/api/events/{pushed['id']}/clip.mp4"
        req = urllib.request.Request(f"{base}/api/events/{pushed['id']}", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as exc:  # deleting needs the server to run with a token
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{base}/api/events?limit=0", timeout=10)
        assert exc.value.code == 400
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            samples = {s.name: s.value for fam in text_string_to_metric_families(r.read().decode())
                       for s in fam.samples if not s.labels}
        assert (samples["streamrec_events_open"], samples["streamrec_notifications_pending"]) == (1, 0)
        health = get_json(f"{base}/healthz")
        assert (health["events"]["rules"], health["events"]["open"]) == (["bees"], 1)
    finally:
        assert sigterm(proc) == 0
    out = run_main("events", "--db", str(db), "--format", "json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["id"], row["state"], row["rule"]) == (pushed["id"], "closed", "bees")
    assert row["end_ts"] >= row["start_ts"]
    table = run_main("events", "--db", str(db), "--camera", "gate")
    assert table.returncode == 0 and pushed["id"] in table.stdout
    missing = run_main("events", "nope", "--db", str(db), "--out", str(tmp_path / "x.mp4"))
    assert (missing.returncode, error_line(missing)) == (2, "streamrec: error: events: no event 'nope'")
