"""Beyond one machine: a local Ray cluster (a head and two worker nodes) runs capture
actors for several cameras and a batched inference actor; labels arrive for every camera,
on the dashboard too, and ``streamrec cluster`` serves it and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from streamrec.config import ServeConfig
from streamrec.live.history import HistoryStore
from streamrec.models.kinetics import sport_classes
from streamrec.live.messages import MEANINGLESS, validate_prediction
from streamrec.models.registry import build_model, kinetics_classes, make_checkpoint, model_spec

from conftest import ROOT, streamrec_cmd, json_request, wait_until
from servers import receiver  # noqa: F401 - the fixture

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_labels_arrive_for_every_camera_across_two_workers(cluster, demo_clip, tmp_path):
    from streamrec.cluster.runner import ClusterRunner

    names = [demo_clip] * 4
    cams = [{"name": f"cam{i}", "source": str(n), "loop": True} for i, n in enumerate(names)]
    cams[0]["sports_only"] = True
    # two Kinetics sport classes and two others, so that sports_only has something to leave out
    sports = sport_classes()[:2]
    others = [c for c in kinetics_classes() if c not in set(sport_classes())][:2]
    ckpt = tmp_path / "four.pt"
    torch.save(make_checkpoint(build_model("tiny3d", num_classes=4), model="tiny3d", classes=sports + others,
                               spec=model_spec("tiny3d")), ckpt)
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": str(ckpt), "device": "cpu"}, {})
    got: dict[str, list] = {}
    runner = ClusterRunner(config, lambda items: [got.setdefault(name, []).append(msg) for name, msg in items])
    try:
        batches = []
        for _ in range(400):
            batches.append(runner.step())
            if all(len(got.get(c["name"], [])) >= 3 for c in cams):
                break
        stats = runner.stats()
    finally:
        runner.close()
    assert set(got) == {c["name"] for c in cams}
    for name, msgs in got.items():
        assert msgs, name
        for m in msgs:
            validate_prediction(m)
            assert m["camera"] == name
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
        assert m["capture_fps"] > 0  # the camera node's capture rate, sent with the window
        assert runner.stream(name).seq == len(msgs)
    assert got["cam0"]
    for m in got["cam0"]:  # sports_only: the other classes at 0, the sport classes' scores summing to 1
        scores = {t["label"]: t["score"] for t in m["top"]}
        assert [scores[c] for c in others] == [0.0, 0.0] and abs(sum(scores[c] for c in sports) - 1) < 1e-4
        assert m["raw_label"] in sports
    for name in ("cam1", "cam2", "cam3"):
        assert all(t["score"] > 0 for m in got[name] for t in m["top"])  # all four classes scored
    assert max(batches) > 1  # windows of several cameras went through one call
    nodes = {s["node"] for s in stats.values()}
    assert len(nodes) == 2, stats  # capture actors spread over both worker nodes
    assert all(s["state"] == "running" for s in stats.values())


async def _dashboard_messages(port: int, want: set[str], timeout: float = 90) -> tuple[dict, dict, dict]:
    """Predictions, statuses and preview frames per camera, until every camera has 3, 1 and 1."""
    import websockets

    preds: dict[str, list] = {}
    status: dict[str, dict] = {}
    frames: dict[str, bytes] = {}
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22) as ws:
        deadline = time.monotonic() + timeout
        while not (all(len(preds.get(c, [])) >= 3 for c in want) and set(status) >= want and set(frames) >= want):
            m = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            if isinstance(m, bytes):
                n = m[0]
                frames[m[1:1 + n].decode()] = m[1 + n:]
                continue
            d = json.loads(m)
            if d["type"] == "prediction":
                preds.setdefault(d["camera"], []).append(d)
            elif d["type"] == "status" and d["source"]["state"] == "running":
                status[d["camera"]] = d
    return preds, status, frames


def serve_in_thread(app) -> threading.Thread:
    """``app.run()`` in a thread of its own; returns once its dashboard listens."""
    runner = threading.Thread(target=lambda: asyncio.run(app.run()), name="test-cluster-app")
    runner.start()
    deadline = time.monotonic() + 60
    while app.server.port == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return runner


def stop_thread(app, runner: threading.Thread) -> None:
    app.request_stop()
    runner.join(20)


@pytest.mark.slow
def test_dashboard_shows_every_cluster_camera_and_stops_cleanly(cluster, demo_clip, tmp_path):
    from streamrec.cluster.app import ClusterApp

    names = [demo_clip] * 3
    cams = [{"name": f"cam{i}", "source": str(n), "loop": True} for i, n in enumerate(names)]
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": "none", "device": "cpu",
                                       "port": 0}, {})
    lines = io.StringIO()
    app = ClusterApp(config, db=str(tmp_path / "history.db"), lines=lines)
    runner = serve_in_thread(app)
    try:
        port = app.server.port
        want = {c["name"] for c in cams}
        preds, status, frames = asyncio.run(_dashboard_messages(port, want))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            page = r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            health = json.loads(r.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = {(s.name, s.labels.get("camera")): s.value
                       for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}
    finally:
        stop_thread(app, runner)
    assert not runner.is_alive()
    assert not any(t.name.startswith(("cluster-driver", "cluster-poll")) and t.is_alive() for t in threading.enumerate())

    for name in want:
        seqs = [m["seq"] for m in preds[name]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for m in preds[name]:
            validate_prediction(m)
            assert m["meaningless"] is True
        st = status[name]
        assert st["source"]["capture_fps"] > 0 and st["node"] and st["model"] == "tiny3d" and st["warning"] == MEANINGLESS
        img = cv2.imdecode(np.frombuffer(frames[name], np.uint8), cv2.IMREAD_COLOR)  # a real JPEG of the camera
        assert img is not None and 0 < img.shape[1] <= 320  # several cameras: previews at most 320 px wide
    assert "<html" in page.lower() and "/ws" in page
    assert set(health["cameras"]) == want and len(health["nodes"]) == 2
    assert health["model"] == "tiny3d" and health["device"] == "cpu" and health["warning"] == MEANINGLESS
    assert health["backend"] and all(status[name]["backend"] == health["backend"] for name in want)
    assert all(c["state"] == "running" and c["predictions"] >= 3 for c in health["cameras"].values())
    assert health["batching"]["max_batch"] > 1
    for name in want:  # Prometheus: labels counted at the driver, capture stats from the camera's node
        assert metrics[("streamrec_predictions_total", name)] >= 3
        # observed as each batch is published, after its labels were counted: at most one batch behind
        assert 3 <= metrics[("streamrec_inference_latency_ms_count", name)] <= metrics[("streamrec_predictions_total", name)]
        assert metrics[("streamrec_capture_fps", name)] > 0
    assert metrics[("streamrec_clients", None)] >= 0 and metrics[("process_open_fds", None)] > 0

    # every prediction sent was also printed as a JSON line, and the history has every camera
    printed = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert printed
    for m in printed:
        validate_prediction(m)
    for name in want:
        seqs = [m["seq"] for m in printed if m["camera"] == name]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= len(preds[name])
    store = HistoryStore(str(tmp_path / "history.db"))
    try:
        assert {row["camera"] for row in store.query()} == want
    finally:
        store.close()


@pytest.mark.slow
def test_cluster_command_serves_the_dashboard_and_stops_on_sigterm(cluster, demo_clip, tmp_path):
    names = [demo_clip] * 2
    cfg = tmp_path / "cams.toml"
    cfg.write_text('model = "tiny3d"\nweights = "none"\ndevice = "cpu"\n' + "".join(
        f'\n[[cameras]]\nname = "cam{i}"\nsource = "{n}"\nloop = true\n' for i, n in enumerate(names)))
    proc = subprocess.Popen(streamrec_cmd("cluster", "--config", str(cfg), "--address", cluster.address, "--port", "0",
                                          "--db", str(tmp_path / "h.db")),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err: list[str] = []
    reader = threading.Thread(target=lambda: [err.append(line) for line in proc.stderr], daemon=True)
    reader.start()
    try:
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while len(seen) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()  # every prediction is a JSON line
            if not line:
                break
            m = json.loads(line)
            validate_prediction(m)
            seen[m["camera"]] = m["seq"]
        assert set(seen) == {"cam0", "cam1"}, "".join(err)
        port = next(int(m.group(1)) for line in err
                    if (m := re.search(r"dashboard of 2 cluster cameras at http://127\.0\.0\.1:(\d+)/", line)))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            health = json.loads(r.read())
        assert set(health["cameras"]) == {"cam0", "cam1"} and health["model"] == "tiny3d"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        finally:
            proc.kill()
    reader.join(5)
    text = "".join(err)
    assert rc == 0, text
    assert "Traceback" not in text
    assert "random weights, every label shown is meaningless" in text


@pytest.mark.slow
def test_a_lost_camera_actor_reads_unreachable_while_the_others_go_on(cluster, demo_clip):
    from streamrec.cluster.runner import ClusterRunner

    names = [demo_clip] * 2
    cams = [{"name": f"cam{i}", "source": str(n), "loop": True} for i, n in enumerate(names)]
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": "none", "device": "cpu"}, {})
    got: dict[str, int] = {}
    runner = ClusterRunner(config, lambda items: [got.__setitem__(name, got.get(name, 0) + 1) for name, _ in items])
    try:
        for _ in range(400):
            runner.step()
            if len(got) == 2:
                break
        assert set(got) == {"cam0", "cam1"}
        ray.kill(runner.actor_of("cam1"))
        lost_at, before = dict(got), got["cam0"]
        for _ in range(400):
            runner.step()
            if got["cam0"] >= before + 3 and "cam1" in runner.lost:
                break
        stats, lost = runner.stats(timeout=5), runner.lost
    finally:
        runner.close()
    assert got["cam0"] >= before + 3  # the other camera kept getting labels
    assert lost == {"cam1"} and got["cam1"] <= lost_at["cam1"] + 1  # at most a window already in flight
    assert stats["cam1"]["state"] == "unreachable" and stats["cam0"]["state"] == "running"


@pytest.mark.slow
@pytest.mark.browser
def test_cluster_dashboard_in_chromium(cluster, demo_clip, tmp_path, artifacts):
    from streamrec.cluster.app import ClusterApp
    from browser import CHROMIUM, chromium_page

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed; .ci/run installs it")
    names = [demo_clip] * 3
    cams = [{"name": f"cam{i}", "source": str(n), "loop": True} for i, n in enumerate(names)]
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": "none", "device": "cpu",
                                       "port": 0}, {})
    app = ClusterApp(config, db=str(tmp_path / "history.db"))
    runner = serve_in_thread(app)
    try:
        with chromium_page(1000, 760) as page:
            page.goto(f"http://127.0.0.1:{app.server.port}/")
            page.wait_for_function("document.querySelectorAll('[data-testid=camera]').length === 3", timeout=60_000)
            page.wait_for_function("[...document.querySelectorAll('[data-testid=label]')]"
                                   ".every(l => Number(l.dataset.seq) >= 2)", timeout=60_000)
            page.wait_for_function("[...document.querySelectorAll('[data-testid=video]')]"
                                   ".every(i => Number(i.dataset.frames) >= 2)", timeout=30_000)
            page.wait_for_function("[...document.querySelectorAll('.state')].every(s => s.textContent === 'running')",
                                   timeout=30_000)
            models = page.locator(".model").all_inner_texts()
            backend = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{app.server.port}/healthz",
                                                        timeout=10).read())["backend"]
            banner = page.inner_text("[data-testid=banner]")
            page.screenshot(path=str(artifacts / "cluster-dashboard.png"))
    finally:
        stop_thread(app, runner)
    assert backend and models == [f"tiny3d (cpu, {backend})"] * 3  # the backend the worker's auto picked
    assert "meaningless" in banner


class GoneReader(io.StringIO):
    """stdout piped into a reader that quits after the first line."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > 1:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


@pytest.mark.slow
def test_cameras_added_and_removed_while_the_cluster_runs(cluster, demo_clip, tmp_path):
    from streamrec.cluster.app import ClusterApp

    names = [demo_clip] * 2
    config = ServeConfig.from_sources({"cameras": [{"name": "cam0", "source": str(names[0]), "loop": True}],
                                       "model": "tiny3d", "weights": "none", "device": "cpu", "port": 0,
                                       "token": "s3cret"}, {})
    lines = GoneReader()  # like `streamrec cluster ... | head -1`: the JSON lines end, the run goes on
    app = ClusterApp(config, db=str(tmp_path / "history.db"), lines=lines)
    runner = serve_in_thread(app)
    try:
        base = f"http://127.0.0.1:{app.server.port}/api/cameras"
        assert json_request("POST", f"{base}?name=gate&source={names[1]}&loop=true", "wrong")[0] == 401
        status, body = json_request("POST", f"{base}?name=gate&source={names[1]}&loop=true", "s3cret")
        assert (status, body) == (201, {"added": "gate"})
        status, body = json_request("POST", f"{base}?name=gate&source={names[1]}", "s3cret")
        assert (status, body) == (400, {"error": "camera 'gate' already exists"})
        status, body = json_request("POST", f"{base}?name=lobby&source={tmp_path / 'nope.mp4'}", "s3cret")
        assert status == 400 and body["error"].startswith("camera lobby: ") and "nope.mp4" in body["error"]
        status, body = json_request("POST", f"{base}?name=lobby&source={names[1]}&weights={tmp_path / 'no.pt'}", "s3cret")
        assert status == 400 and body["error"].startswith("camera lobby: ") and "no.pt" in body["error"], body
        # a camera with a model of its own: a two-class tiny3d checkpoint, next to the random 400-class one
        ckpt = tmp_path / "two.pt"
        torch.save(make_checkpoint(build_model("tiny3d", num_classes=2), model="tiny3d", classes=["jump", "run"],
                                   spec=model_spec("tiny3d")), ckpt)
        status, body = json_request("POST", f"{base}?name=court&source={names[0]}&loop=true&weights={ckpt}", "s3cret")
        assert (status, body) == (201, {"added": "court"})

        async def until_gate_labelled_then_removed() -> tuple[list, dict]:
            import websockets

            got: list = []
            court: dict = {}
            async with websockets.connect(f"ws://127.0.0.1:{app.server.port}/ws?token=s3cret", max_size=2**22) as ws:
                while len(got) < 2 or "prediction" not in court or "status" not in court:
                    m = await asyncio.wait_for(ws.recv(), 60)
                    if not isinstance(m, str):
                        continue
                    d = json.loads(m)
                    if d["type"] == "prediction" and d["camera"] == "gate":
                        got.append(d)
                    if d["type"] in ("prediction", "status") and d["camera"] == "court":
                        court[d["type"]] = d
                loop = asyncio.get_running_loop()
                removed = await loop.run_in_executor(None, json_request, "DELETE", f"{base}/gate", "s3cret")
                while True:  # up to the removal notice
                    m = await asyncio.wait_for(ws.recv(), 30)
                    if isinstance(m, str) and json.loads(m)["type"] == "removed":
                        assert json.loads(m)["camera"] == "gate"
                        break
                later = []  # then 2 s of messages: cam0's go on, none of gate
                end = loop.time() + 2.0
                while (left := end - loop.time()) > 0:
                    try:
                        m = await asyncio.wait_for(ws.recv(), left)
                    except asyncio.TimeoutError:
                        break
                    later.append((d["type"], d["camera"]) if isinstance(m, str) and (d := json.loads(m))
                                 else ("frame", m[1:1 + m[0]].decode()))
                return got, {"removed": removed, "later": later, "court": court}

        got, rest = asyncio.run(until_gate_labelled_then_removed())
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{app.server.port}/healthz?token=s3cret", timeout=10).read())
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{app.server.port}/metrics?token=s3cret", timeout=10).read().decode()
        listing = json_request("GET", base, "s3cret")
        assert json_request("DELETE", f"{base}/gate", "s3cret") == (404, {"error": "no camera 'gate'"})
    finally:
        stop_thread(app, runner)
    assert got[0]["seq"] < got[1]["seq"]
    assert rest["removed"] == (200, {"removed": "gate"})
    assert lines.writes == 2 and app.lines is None  # one line went out, the second found the reader gone
    assert "cam0" in {cam for _, cam in rest["later"]}
    assert [(kind, cam) for kind, cam in rest["later"] if cam == "gate"] == []  # no frame, status or label of it
    assert 'camera="gate"' not in metrics and 'streamrec_predictions_total{camera="court",zone=""}' in metrics
    court = rest["court"]  # its own model's classes, and no random-weights warning
    validate_prediction(court["prediction"])
    assert {t["label"] for t in court["prediction"]["top"]} == {"jump", "run"}
    assert court["prediction"]["meaningless"] is False and got[0]["meaningless"] is True
    assert court["status"]["warning"] is None and court["status"]["model"] == "tiny3d"
    assert health["cameras"]["court"]["meaningless"] is False and health["cameras"]["cam0"]["meaningless"] is True
    assert listing[0] == 200 and set(listing[1]["cameras"]) == {"cam0", "court"} and listing[1]["adding"] == []
    store = HistoryStore(str(tmp_path / "history.db"))
    try:
        assert {row["camera"] for row in store.query()} == {"cam0", "gate", "court"}  # gate's closed at removal
    finally:
        store.close()


@pytest.mark.slow
def test_cluster_camera_that_cannot_open_is_a_one_line_error(cluster, tmp_path, demo_clip):
    cfg = tmp_path / "cams.toml"
    cfg.write_text(f'model = "tiny3d"\nweights = "none"\ndevice = "cpu"\n\n[[cameras]]\nname = "ok"\nsource = "{demo_clip}"\n'
                   f'\n[[cameras]]\nname = "gone"\nsource = "{tmp_path / "gone.mp4"}"\n')
    proc = subprocess.run(streamrec_cmd("cluster", "--config", str(cfg), "--address", cluster.address, "--port", "0",
                                        "--db", str(tmp_path / "h.db")),
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("streamrec: error:")]
    assert len(lines) == 1 and lines[0].startswith("streamrec: error: camera gone: ") and "gone.mp4" in lines[0], proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_stride_ms_spaces_each_cameras_labels(cluster, demo_clip):
    from streamrec.cluster.runner import ClusterRunner

    names = [demo_clip] * 2
    cams = [{"name": f"cam{i}", "source": str(n), "loop": True} for i, n in enumerate(names)]
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": "none", "device": "cpu",
                                       "stride_ms": 700, "threads": 1}, {})
    sent: dict[str, list[float]] = {}
    runner = ClusterRunner(config, lambda items: [sent.setdefault(n, []).append(time.monotonic()) for n, _ in items])
    try:
        deadline = time.monotonic() + 60
        while min((len(v) for v in sent.values()), default=0) < 4 and time.monotonic() < deadline:
            runner.step()
    finally:
        runner.close()
    assert set(sent) == {"cam0", "cam1"}
    for name, times in sent.items():
        gaps = np.diff(times)
        assert len(times) >= 4 and gaps.min() >= 0.7, (name, gaps)


@pytest.mark.slow
def test_cluster_command_without_dashboard_runs_for_seconds(cluster, demo_clip, tmp_path):
    busy = socket.socket()  # the config's port is taken: --no-dashboard never binds it
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cfg = tmp_path / "cams.toml"
    cfg.write_text(f'model = "tiny3d"\nweights = "none"\ndevice = "cpu"\nport = {busy.getsockname()[1]}\n' + "".join(
        f'\n[[cameras]]\nname = "cam{i}"\nsource = "{n}"\nloop = true\n' for i, n in enumerate([demo_clip] * 2)))
    try:
        proc = subprocess.run(streamrec_cmd("cluster", "--config", str(cfg), "--address", cluster.address,
                                            "--no-dashboard", "--seconds", "6", "--db", str(tmp_path / "h.db")),
                              cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        busy.close()
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {m["camera"] for m in printed} == {"cam0", "cam1"}
    assert "dashboard of" not in proc.stderr and "Traceback" not in proc.stderr
    store = HistoryStore(str(tmp_path / "h.db"))
    try:
        assert {row["camera"] for row in store.query()} == {"cam0", "cam1"}
    finally:
        store.close()


def fetched(url: str, headers: dict) -> bytes | None:
    """The body at ``url``, or ``None`` while it answers 404."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        return None


@pytest.mark.slow
def test_cluster_events_have_clips_written_on_the_camera_nodes(cluster, tmp_path, directions_model, receiver):
    """A rule on the driver opens an event; the camera's actor, on a worker node, copies its
    packets into the clip (no re-encoding) and writes the thumbnail; the driver serves both. A
    camera removed during its event, and one whose event is open at the stop, still get their
    events closed, their clips and their thumbnails."""
    from streamrec.cluster.app import ClusterApp
    from streamrec.events.store import EventStore
    from test_events_live import get, hooks, switching_clip
    from conftest import motion_frames, write_frames

    _, weights, _ = directions_model
    video = switching_clip(tmp_path / "switch.mp4")
    rng = np.random.default_rng(5)  # 6 s one way, then 20 s the rule's way: open when the app stops
    held = write_frames(tmp_path / "held.mp4", motion_frames("left_to_right", 180, (128, 96), rng)
                        + motion_frames("top_to_bottom", 600, (128, 96), rng), 30, gop=30)
    clips = tmp_path / "clips"
    config = ServeConfig.from_sources({
        "cameras": [{"name": name, "source": str(video), "loop": True} for name in ("lane", "pool")]
        + [{"name": "dock", "source": str(held)}],
        "weights": str(weights), "device": "cpu", "port": 0, "db": str(tmp_path / "h.db"), "token": "s3cret",
        "rules": [{"name": "downward", "labels": ["top_to_bottom"], "min_seconds": 1.0, "end_seconds": 1.0,
                   "cooldown_seconds": 600, "notify": ["webhook"]}],
        "notify": {"webhook": {"url": receiver.url, "sign": False}},
        "recording": {"dir": str(clips), "pre_seconds": 2, "post_seconds": 2}}, {})
    app = ClusterApp(config, db=str(tmp_path / "h.db"))
    runner = serve_in_thread(app)
    base, auth = f"http://127.0.0.1:{app.server.port}", {"Authorization": "Bearer s3cret"}

    def event_of(kind: str, camera: str) -> dict | None:
        return next((e for r in hooks(receiver, kind) if (e := json.loads(r["body"])["event"])["camera"] == camera), None)

    def row(event_id: str) -> dict:
        return json.loads(get(f"{base}/api/events/{event_id}", auth)[2])

    try:
        wait_until(lambda: event_of("event_start", "pool"), "pool's event_start at the webhook", timeout=180)
        assert json_request("DELETE", f"{base}/api/cameras/pool", "s3cret") == (200, {"removed": "pool"})
        removed = wait_until(lambda: event_of("event_end", "pool"), "pool's event_end", timeout=30)
        ev = wait_until(lambda: event_of("event_end", "lane"), "lane's event_end at the webhook", timeout=180)
        done = {e["id"]: wait_until(lambda: (r := row(e["id"]))["clip_bytes"] and r, f"{e['camera']}'s clip", timeout=60)
                for e in (ev, removed)}
        # the codec comes from the camera's actor: the page knows whether a browser plays the clip
        assert {(r["clip_codec"], r["clip_plays_in_browser"]) for r in done.values()} == {("h264", True)}
        status, headers, part = get(f"{base}/api/events/{ev['id']}/clip.mp4", {"Range": "bytes=0-99", **auth})
        _, _, clip = get(f"{base}/api/events/{ev['id']}/clip.mp4", auth)
        thumbs = [wait_until(lambda: fetched(f"{base}/api/events/{e['id']}/thumb.jpg", auth), "a thumbnail", timeout=30)
                  for e in (ev, removed)]
        health = json.loads(get(f"{base}/healthz", auth)[2])
        metrics = {(s.name, s.labels.get("camera")): s.value
                   for f in text_string_to_metric_families(get(f"{base}/metrics", auth)[2].decode()) for s in f.samples}
        assert event_of("event_start", "dock") and not event_of("event_end", "dock")  # open as the app stops
    finally:
        stop_thread(app, runner)
    assert not runner.is_alive()
    store = EventStore(str(tmp_path / "h.db"))
    try:  # dock's event: closed at the stop, its clip and thumbnail finished by its actor as it stopped
        [held_event] = store.query(camera="dock")
    finally:
        store.close()
    assert held_event["state"] == "closed" and held_event["clip_bytes"] > 0
    assert (clips / held_event["clip"]).stat().st_size == held_event["clip_bytes"]
    assert (clips / held_event["thumbnail"]).stat().st_size > 0
    assert (ev["label"], ev["state"], removed["state"]) == ("top_to_bottom", "closed", "closed")
    assert health["cameras"]["lane"]["node"] in health["nodes"]  # captured (and recorded) on a worker node
    size = done[ev["id"]]["clip_bytes"]
    assert (status, len(part), headers["Content-Range"]) == (206, 100, f"bytes 0-99/{size}")
    assert len(clip) == size == (clips / "lane" / f"{ev['id']}.mp4").stat().st_size
    assert done[removed["id"]]["clip_bytes"] == (clips / "pool" / f"{removed['id']}.mp4").stat().st_size
    assert metrics[("streamrec_clips_written_total", None)] == 2  # lane's and pool's (dock's is still open)
    assert metrics[("streamrec_packet_ring_bytes", "lane")] > 0  # the ring's size on the camera's node
    assert ("streamrec_packet_ring_bytes", "pool") not in metrics  # a removed camera's ring is gone
    assert not list(clips.glob(".streamrec-probe-*"))  # the start's shared-folder check cleaned up
    out = tmp_path / "clip.mp4"
    out.write_bytes(clip)
    import av

    with av.open(str(video)) as src, av.open(str(out)) as got:  # remuxed: the source's codec parameters
        s, o = src.streams.video[0], got.streams.video[0]
        assert (o.codec_context.name, o.width, o.height) == (s.codec_context.name, s.width, s.height)
        assert bytes(o.codec_context.extradata or b"") == bytes(s.codec_context.extradata or b"")
        frames = list(got.decode(video=0))
    span = frames[-1].time - frames[0].time
    # pre-roll, the event, post-roll: the clip starts at the key frame before its pre-roll (one a second here)
    assert abs(span - (2 + (ev["end_ts"] - ev["start_ts"]) + 2)) <= 1.5, span
    for thumb in thumbs:
        assert cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3


@pytest.mark.slow
def test_cluster_recording_dir_not_writable_on_a_camera_node_is_a_one_line_error(cluster, tmp_path, demo_clip):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = tmp_path / "cams.toml"
    cfg.write_text(f'model = "tiny3d"\nweights = "none"\ndevice = "cpu"\n\n[[cameras]]\nname = "gate"\n'
                   f'source = "{demo_clip}"\n\n[[rules]]\nname = "any"\nlabels = ["abseiling"]\n\n'
                   f'[recording]\ndir = "a-file/clips"\n')  # relative to the config file
    proc = subprocess.run(streamrec_cmd("cluster", "--config", str(cfg), "--address", cluster.address, "--port", "0",
                                        "--db", str(tmp_path / "h.db")),
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("streamrec: error:")]
    assert line.startswith("streamrec: error: camera gate: [recording] dir: expected a folder writable on camera "
                           "node "), line
    assert line.endswith(f"got {str(blocker / 'clips')!r} (NotADirectoryError: [Errno 20] Not a directory: "
                         f"{str(blocker / 'clips')!r})"), line


def test_a_recording_dir_the_driver_does_not_see_is_refused(tmp_path):
    from streamrec.cluster.clips import check_shared, write_probe
    from streamrec.errors import StreamrecError

    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"  # two nodes' local folders at one path
    write_probe(node_a, "t1", "node-a-id")
    write_probe(node_b, "t2", "node-b-id")
    check_shared(node_a, {"cam1": "t1"}, lambda camera: "node-a-id")  # the driver sees node a's file
    assert not list(node_a.iterdir())  # and removed it
    with pytest.raises(StreamrecError) as err:
        check_shared(node_a, {"cam2": "t2"}, {"cam2": "node-b-id"}.get)
    assert str(err.value) == ("[recording] dir: expected one folder shared by the driver and every camera node (an NFS "
                              f"or SMB mount at the same path), got {str(node_a)!r} where the files written by camera "
                              "cam2 (node node-b-id) do not appear")


def test_a_cluster_camera_that_reconnects_starts_its_labels_anew_in_every_zone():
    """As a camera on one machine does: the smoothers of its whole frame and zones forget the
    stream before the gap (a label held over from it would be shown for the new one)."""
    from streamrec.cluster.runner import RemoteCamera
    from streamrec.config import CameraConfig, SmoothingConfig
    from streamrec.live.labels import StreamLabels

    smoothing = SmoothingConfig(alpha=0.4, margin=0.05, hold=3, threshold=0.2)
    cam = RemoteCamera(cfg=CameraConfig(name="gate", source="x.mp4"), actor=None, model=(None, None), subset=None,
                       streams={z: StreamLabels("gate", z, smoothing) for z in (None, "door")})
    first, second = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    for stream in cam.streams.values():
        for _ in range(5):
            stream.smoother.update(first)
    cam.note_interruptions(0)  # no gap yet: the label holds against one window of another class
    assert [s.smoother.update(second).label_index for s in cam.streams.values()] == [0, 0]
    cam.note_interruptions(1)  # reconnected: the new stream's first window is its label
    assert [s.smoother.update(second).label_index for s in cam.streams.values()] == [1, 1]
    assert cam.gaps_seen == 1
