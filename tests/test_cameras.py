"""Many cameras from one config, batched inference, run-time add/remove, activity history."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from streamrec.live.history import HistoryStore, SegmentTracker

from conftest import ROOT, free_port, run_cli, streamrec_cmd, wait_http, json_request

def write_config(path, clips, names, **extra) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    for name, clip in zip(names, clips):
        lines += ["", "[[cameras]]", f'name = "{name}"', f'source = "{clip}"', "loop = true"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(streamrec_cmd("serve", *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(20)
    err = proc.stderr.read()
    assert rc == 0, err
    return err


async def predictions_by_camera(port: int, want: set[str], timeout: float = 60, token: str | None = None) -> dict:
    import websockets

    url = f"ws://127.0.0.1:{port}/ws" + (f"?token={token}" if token else "")
    got: dict[str, list] = {}
    async with websockets.connect(url, max_size=2**22) as ws:
        deadline = time.monotonic() + timeout
        while not all(len(got.get(c, [])) >= 2 for c in want):
            m = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            if isinstance(m, str) and (d := json.loads(m))["type"] == "prediction":
                got.setdefault(d["camera"], []).append(d)
    return got


@pytest.mark.slow
def test_config_cameras_batched_with_runtime_add_remove_and_history(demo_clip, tmp_path):
    port, db, token = free_port(), tmp_path / "h.db", "t0k"
    cfg = write_config(tmp_path / "gym.toml", [demo_clip] * 3, ["court-1", "court-2", "warmup"],
                       model="tiny3d", weights="none", batch_wait_ms=50)
    proc = start("--config", cfg, "--port", str(port), "--db", str(db), "--token", token)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        got = asyncio.run(predictions_by_camera(port, {"court-1", "court-2", "warmup"}, token=token))
        assert set(got) == {"court-1", "court-2", "warmup"}
        for cam, msgs in got.items():
            assert all(m["camera"] == cam for m in msgs)
            assert [m["seq"] for m in msgs] == sorted(m["seq"] for m in msgs)
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))
        assert set(health["cameras"]) == {"court-1", "court-2", "warmup"}
        assert health["batching"]["mean_batch"] > 1.0  # windows of several cameras share a forward pass

        # add a camera at run time, without touching the others
        before = {c: h["predictions"] for c, h in health["cameras"].items()}
        q = f"name=late&source={demo_clip}&loop=true"
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{q}")[0] == 401  # no token
        status, body = json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{q}", token)
        assert (status, body) == (201, {"added": "late"})
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{q}", token)[0] == 400  # same name again
        bad = f"name=bad&source={demo_clip}"  # values of the wrong type: refused, nothing added
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{bad}&loop=maybe", token) == (
            400, {"error": "loop: expected true or false (1/0, yes/no, on/off), got 'maybe'"})
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{bad}&open_timeout=abc", token) == (
            400, {"error": "open_timeout: expected a number, got 'abc'"})
        assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras", token) == (
            400, {"error": "DELETE /api/cameras/NAME: expected a camera name in the path"})
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras", token, body=b'{"name": "bad"}') == (
            415, {"error": "request body: expected Content-Type: application/json (in UTF-8), "
                           "got 'application/x-www-form-urlencoded'"})  # a form post, not a connection closed unanswered
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras", token, data={"name": "bad"}) == (
            400, {"error": "[[cameras]]: each camera needs a name and a source, got a table of 'name'"})
        # the camera as a JSON body: options typed as in a [[cameras]] table, zones included
        cam = {"name": "body", "source": str(demo_clip), "loop": True, "zones": [{"name": "left", "x": 0, "y": 0, "w": 0.5, "h": 1}]}
        assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras", token, data=cam) == (201, {"added": "body"})
        asyncio.run(predictions_by_camera(port, {"late", "body"}, token=token))
        assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras/body", token) == (200, {"removed": "body"})
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))
        assert all(health["cameras"][c]["predictions"] > before[c] for c in before)
        assert health["cameras"]["court-1"]["reconnects"] == 0

        assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras/court-2", token) == (200, {"removed": "court-2"})
        assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras/court-2", token)[0] == 404
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))
        assert set(health["cameras"]) == {"court-1", "warmup", "late"}
        assert not [t for t in ("capture-court-2",) if t in health.get("threads", [])]
        metrics = wait_http(f"http://127.0.0.1:{port}/metrics?token={token}").decode()
        assert 'camera="court-2"' not in metrics and 'streamrec_predictions_total{camera="court-1",zone=""}' in metrics

        status, hist = json_request("GET", f"http://127.0.0.1:{port}/api/history?camera=court-2", token)
        assert status == 200 and len(hist["segments"]) >= 1  # removing a camera closes its segment
        assert json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))["warning"]  # random weights
        for name in ("court-1", "warmup", "late"):
            assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras/{name}", token)[0] == 200
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))
        assert (health["meaningless"], health["warning"]) == (False, None)  # no camera serves random weights now
    finally:
        err = stop(proc)
    assert "Traceback" not in err
    # a clean shutdown closes every open segment; history survives the process
    proc = run_cli("history", "--db", str(db), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["camera"] for r in rows} == {"court-1", "court-2", "warmup", "late", "body"}
    for r in rows:
        assert r["start"] <= r["end"] and 0 <= r["mean_score"] <= r["peak_score"] <= 1 and r["windows"] >= 1
    csv_out = run_cli("history", "--db", str(db), "--camera", "late", "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "camera,zone,label,start,end,mean_score,peak_score,windows"
    assert all(line.startswith("late,") for line in csv_out[1:]) and len(csv_out) >= 2


def test_segment_tracker_and_store_exact(tmp_path):
    store = HistoryStore(str(tmp_path / "h.db"))
    t = SegmentTracker("c", store.add)
    for label, score, ts in [("a", 0.5, 1.0), ("a", 0.7, 2.0), ("b", 0.9, 3.0), ("b", 0.8, 4.0), ("a", 0.6, 5.0)]:
        t.update(label, score, ts)
    t.close(6.0)
    store.flush()
    rows = store.query()
    assert [(r["label"], r["start"], r["end"], r["mean_score"], r["peak_score"], r["windows"]) for r in rows] == [
        ("a", 1.0, 3.0, 0.6, 0.7, 2), ("b", 3.0, 5.0, 0.85, 0.9, 2), ("a", 5.0, 6.0, 0.6, 0.6, 1)]
    assert [r["label"] for r in store.query(since=4.5, until=5.5)] == ["b", "a"]
    store.close()
    mode = sqlite3.connect(tmp_path / "h.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


WRITER = """
import sys, time
from streamrec.live.history import HistoryStore, SegmentTracker
store = HistoryStore(sys.argv[1])
t = SegmentTracker("cam", store.add)
i = 0
while True:
    t.update("label%d" % (i % 2), 0.5, float(i))
    if i:
        store.flush()
        print(i, flush=True)  # i segments are closed and committed
    i += 1
    time.sleep(0.01)
"""


def test_kill_9_loses_at_most_the_open_segment(tmp_path):
    db = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    last = 0
    while last < 40:
        last = int(proc.stdout.readline())
    proc.kill()  # SIGKILL
    proc.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
    assert last <= n <= last + 1  # every acknowledged segment is there; only the open one is lost
    assert conn.execute("SELECT MAX(end_ts) FROM segments").fetchone()[0] >= last


@pytest.mark.slow
def test_adding_a_camera_with_a_new_model_does_not_stop_the_server(demo_clip, tmp_path):
    import threading

    port, token = free_port(), "t0k"
    cfg = write_config(tmp_path / "one.toml", [demo_clip], ["court-1"], model="tiny3d", weights="none",
                       backend="torch")
    proc = start("--config", cfg, "--port", str(port), "--db", str(tmp_path / "h.db"), "--token", token)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        q = f"name=big&source={demo_clip}&loop=true&model=mc3_18"
        reply: list = []
        post = threading.Thread(target=lambda: reply.append(json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{q}", token)))
        post.start()
        seen_adding = False
        while post.is_alive():  # the server answers while it opens the source and loads mc3_18
            health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))
            seen_adding |= health["adding"] == ["big"]
            time.sleep(0.05)
        post.join()
        assert reply == [(201, {"added": "big"})]
        assert seen_adding, "no health reply came while the camera was being added"
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))
        assert health["adding"] == [] and health["cameras"]["big"]["model"] == "mc3_18"
        assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras/big", token) == (200, {"removed": "big"})

        # SIGTERM while a camera is being added: a clean exit, without waiting for the model load
        q = f"name=big2&source={demo_clip}&loop=true&model=r2plus1d_18"

        def post_cut_short():
            try:
                reply.append(json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{q}", token))
            except OSError as exc:  # the server went away mid-request: what this part expects
                reply.append(type(exc).__name__)

        post = threading.Thread(target=post_cut_short, daemon=True)
        post.start()
        while json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token={token}"))["adding"] != ["big2"]:
            assert post.is_alive(), reply
            time.sleep(0.05)
    finally:
        err = stop(proc)
    assert "Traceback" not in err
