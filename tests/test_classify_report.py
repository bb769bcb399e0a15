"""What `streamrec classify` tells its user: a segment table (every window on request), progress
with percent and ETA on a terminal, the files it wrote, a colour per class, and random weights
marked in the CSV and in MQTT activity payloads."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios

import pytest

from conftest import ROOT, run_main, streamrec_cmd
from servers import Subscriber, broker  # noqa: F401 - the broker fixture
from streamrec.events.mqtt import activity_payload
from streamrec.live.smoothing import UNCERTAIN
from streamrec.offline import classify as classify_module
from streamrec.offline.classify import Timeline, WindowResult
from streamrec.offline.segments import ClipSegment

pytestmark = pytest.mark.timeout(600)

RANDOM = ("--model", "tiny3d", "--weights", "none")


def timeline(labels: list[str], seconds: float = 10.0, *, meaningless: bool = False) -> Timeline:
    """A timeline of one window and one segment per label, ``seconds`` each."""
    segs = [ClipSegment(label, i * seconds, (i + 1) * seconds, 0.5 + i / 1000, 0.9, 1) for i, label in enumerate(labels)]
    wins = [WindowResult(i, s.start, s.end, s.label, s.score, [{"label": s.label, "score": s.score}])
            for i, s in enumerate(segs)]
    return Timeline(file="match.mp4", model="tiny3d", weights="m.pt", meaningless=meaningless, stride=seconds,
                    first_ts=0.0, last_ts=segs[-1].end, windows=wins, segments=segs,
                    verdict=[{"label": labels[0], "score": 0.5}])


def test_the_table_lists_segments_in_mm_ss_and_windows_only_on_request():
    tl = timeline(["run", "jump", UNCERTAIN, "run"], seconds=1234.5)  # the last ends at 1:22:18
    lines = tl.to_table().splitlines()
    head = lines.index("   #  start-end        mean score  windows  label")
    assert lines[head + 1:head + 5] == [
        "   0  00:00-20:34           0.500        1  run",
        "   1  20:34-41:09           0.501        1  jump",
        "   2  41:09-1:01:44         0.502        1  uncertain",
        "   3  1:01:44-1:22:18       0.503        1  run",
    ]
    assert lines[head + 5:] == [tl.summary, "average over the clip: run 0.500"]
    assert "windows (seconds):" not in lines
    full = tl.to_table(windows=True).splitlines()
    rows = full[full.index("windows (seconds):") + 2:-2]
    assert rows == [f"{w.index:>4}  {w.start:>8.2f}  {w.end:>8.2f}  {w.score:>6.3f}  {w.label}" for w in tl.windows]


@pytest.mark.slow
def test_the_cli_prints_segments_by_default_and_windows_with_the_flag(demo_clip):
    plain = run_main("classify", str(demo_clip), *RANDOM)
    assert plain.returncode == 0, plain.stderr
    assert "windows (seconds):" not in plain.stdout
    assert re.search(r"^   0  00:00-00:10 ", plain.stdout, re.M), plain.stdout  # 10 s (as the summary says 0.0-10.0 s)
    full = run_main("classify", str(demo_clip), *RANDOM, "--windows")
    assert full.returncode == 0, full.stderr
    rows = full.stdout.split("windows (seconds):\n", 1)[1].splitlines()[1:-2]
    assert [int(r.split()[0]) for r in rows] == list(range(10))  # a window a second over 10 s


@pytest.mark.slow
def test_out_and_plot_say_what_they_wrote(demo_clip, tmp_path):
    out, png = tmp_path / "t.csv", tmp_path / "t.png"
    proc = run_main("classify", str(demo_clip), *RANDOM, "--format", "csv", "--out", str(out), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    rows = out.read_text().splitlines()[1:]
    lines = proc.stderr.splitlines()
    assert f"wrote {out} ({len(rows)} rows, one a window, with its segment)" in lines
    segments = len({r.split(",")[6] for r in rows})
    plot_line = f"wrote {png} (the timeline plot: {segments} segment{'s' if segments != 1 else ''}, {len(rows)} windows)"
    assert plot_line in lines and png.read_bytes()[:4] == b"\x89PNG"
    js = tmp_path / "t.json"
    proc = run_main("classify", str(demo_clip), *RANDOM, "--format", "json", "--out", str(js))
    d = json.loads(js.read_text())
    n = len(d["segments"])
    assert f"wrote {js} (JSON: {n} segment{'s' if n != 1 else ''}, {len(d['windows'])} windows)" in proc.stderr


@pytest.mark.slow
def test_the_csv_marks_random_weights_in_a_column_pandas_reads(demo_clip, tmp_path):
    import pandas as pd
    import torch

    from streamrec.models.registry import build_model, make_checkpoint, model_spec

    out = tmp_path / "t.csv"
    assert run_main("classify", str(demo_clip), *RANDOM, "--format", "csv", "--out", str(out)).returncode == 0
    df = pd.read_csv(out)
    assert df["random_weights"].dtype == bool and df["random_weights"].all() and len(df) == 10
    frame = timeline(["run", "jump"], meaningless=True).to_dataframe()
    assert frame["random_weights"].tolist() == [True, True]
    assert timeline(["run"]).to_dataframe()["random_weights"].tolist() == [False]
    ckpt = tmp_path / "m.pt"
    torch.save(make_checkpoint(build_model("tiny3d", num_classes=2), model="tiny3d", classes=["a", "b"],
                               spec=model_spec("tiny3d")), ckpt)
    proc = run_main("classify", str(demo_clip), "--weights", str(ckpt), "--format", "csv", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not pd.read_csv(out)["random_weights"].any()


def test_every_class_of_the_plot_has_its_own_colour(monkeypatch, tmp_path):
    labels = [f"class {i}" for i in range(10)] + [UNCERTAIN] + [f"class {i}" for i in range(10, 20)]
    seen = {}

    def capture(fig, path, **kw):
        band = fig.axes[0]
        for patch, label in zip(band.patches, labels):
            seen.setdefault(label, set()).add(tuple(round(c, 4) for c in patch.get_facecolor()[:3]))

    monkeypatch.setattr(classify_module, "save_figure", capture)
    classify_module.plot_timeline(timeline(labels), tmp_path / "t.png")
    assert all(len(c) == 1 for c in seen.values())
    colours = {label: next(iter(c)) for label, c in seen.items()}
    assert colours[UNCERTAIN] == (0.6, 0.6, 0.6)
    classes = [colours[label] for label in labels if label != UNCERTAIN]
    assert len(set(classes)) == 20  # no two classes alike
    assert not any(r == g == b for r, g, b in classes)  # and none grey like "uncertain"


@pytest.mark.slow
def test_a_terminal_sees_progress_with_the_total_percent_and_eta(demo_clip):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(streamrec_cmd("classify", str(demo_clip), *RANDOM), cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    bars = [part for part in re.split(r"[\r\n]+", shown) if part.startswith("classifying:")]
    assert bars, shown
    form = r"classifying: +(\d+)%\|.*\| \d+\.\d/10\.0 s \[\d\d:\d\d<(\d\d:\d\d|\?)\]"  # ? until a rate is known
    assert all(re.fullmatch(form, b) for b in bars), bars
    assert any(re.fullmatch(form, b)[2] != "?" for b in bars) and bars[-1].startswith("classifying: 100%|")


def test_mqtt_activity_says_when_the_weights_are_random():
    assert json.loads(activity_payload("court-1", "class_3", 0.12, 5.0, False, True)) == {
        "camera": "court-1", "zone": None, "label": "class_3", "score": 0.12, "ts": 5.0, "uncertain": False, "random_weights": True}
    assert "random_weights" not in json.loads(activity_payload("court-1", "run", 0.9, 5.0, False))


def test_served_activity_on_mqtt_says_random_weights(tmp_path, broker):
    """A prediction of a model with random weights, observed by the events manager, reaches the
    broker's activity topic with random_weights: true; one of a real model without it."""
    from conftest import wait_until
    from streamrec.event_config import MqttConfig, NotifyConfig, RecordingConfig
    from streamrec.events.manager import EventManager
    from streamrec.supervision import Supervisor

    sub = Subscriber(broker, "sr/+/activity")
    manager = EventManager(rules=(), notify=NotifyConfig(mqtt=MqttConfig(f"mqtt://127.0.0.1:{broker.port}",
                                                                         topic_prefix="sr")),
                           recording=RecordingConfig(enabled=False), db=str(tmp_path / "e.db"), classes=["run", "jump"],
                           supervisor=Supervisor(), publish=lambda msg: None)
    try:
        manager.start(["random", "trained"])
        wait_until(lambda: manager.notifier.stats()["channels"]["mqtt"]["connected"], "the MQTT connection", timeout=30)
        for camera, meaningless in (("random", True), ("trained", False)):
            manager.observe(camera, {"label": "run", "score": 0.5, "uncertain": False, "window": {"end_ts": 7.0},
                                     "meaningless": meaningless})
        wait_until(lambda: sub.on("sr/random/activity") and sub.on("sr/trained/activity"), "both activities", timeout=30)
        assert json.loads(sub.on("sr/random/activity")[-1][0])["random_weights"] is True
        assert "random_weights" not in json.loads(sub.on("sr/trained/activity")[-1][0])
    finally:
        manager.close()
        sub.close()


@pytest.mark.slow
@pytest.mark.parametrize("name, first", [("out.csv", "index,start,end,label,score,top,segment"), ("out.json", "{"),
                                         ("out.txt", "WARNING: random weights (--weights none): labels are meaningless")])
def test_the_out_files_suffix_names_its_format_when_format_is_not_given(demo_clip, tmp_path, name, first):
    from conftest import run_main

    proc = run_main("classify", str(demo_clip), "--model", "tiny3d", "--weights", "none", "--out", str(tmp_path / name))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / name).read_text().splitlines()[0].startswith(first)
