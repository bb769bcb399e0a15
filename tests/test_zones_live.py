"""Zones on the live path: one decode per frame, a crop per zone into its own ring, one batch for
every stream of a camera, messages and smoothing per stream, serve's websocket, /healthz and
/metrics per zone, and a running camera's zones replaced."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time

import numpy as np
import pytest

from streamrec.config import CameraConfig, ServeConfig, SmoothingConfig
from streamrec.errors import StreamrecError
from streamrec.live.camera import Camera
from streamrec.live.capture import CaptureThread, camera_capture
from streamrec.live.messages import status_message, validate_prediction
from streamrec.live.sources import Source, SourceSpec
from streamrec.models.preprocess import FramePreprocessor
from streamrec.models.registry import load_model, model_spec
from streamrec.runtime.classifier import Classifier
from streamrec.serve.worker import InferenceWorker
from streamrec.zones import ZoneConfig, stream_key

from conftest import free_port, streamrec_cmd, wait_http, write_video

W, H = 192, 144  # each tile 96 x 72: smaller than the 112 x 112 crop, so upscaled
QUARTERS = {"tl": (0.0, 0.0), "tr": (0.5, 0.0), "bl": (0.0, 0.5), "br": (0.5, 0.5)}


def tiles(k: int) -> dict[str, np.ndarray]:
    """Frame ``k``'s four tiles, each of its own content (solid, gradient, checkerboard, noise)."""
    th, tw = H // 2, W // 2
    solid = np.zeros((th, tw, 3), np.uint8)
    solid[..., 0] = 200 - k
    gradient = np.tile(np.linspace(0, 255, tw, dtype=np.uint8)[None, :, None], (th, 1, 3))
    gradient[..., 2] = k * 3
    yy, xx = np.mgrid[:th, :tw]
    checker = np.repeat((((yy // 8 + xx // 8 + k) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    noise = np.random.default_rng(k).integers(0, 256, (th, tw, 3), dtype=np.uint8)
    return {"tl": solid, "tr": gradient, "bl": checker, "br": noise}


def mosaic(k: int) -> np.ndarray:
    t = tiles(k)
    return np.concatenate([np.concatenate([t["tl"], t["tr"]], 1), np.concatenate([t["bl"], t["br"]], 1)], 0)


class Mosaic(Source):
    """A live source of ``n`` 2x2 mosaics that counts its decoded frames."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def frames(self):
        for k in range(self.n):
            self.reads += 1
            yield mosaic(k), None

    def close(self) -> None:
        pass


ZONES = tuple(ZoneConfig(name, x, y, 0.5, 0.5) for name, (x, y) in QUARTERS.items())


@pytest.mark.parametrize("whole_frame", [True, False])
def test_each_zone_ring_holds_its_tile_preprocessed_alone_from_one_decode(whole_frame, caplog):
    spec = model_spec("r2plus1d_18")
    pre = FramePreprocessor(spec)
    n, stop, source = 6, threading.Event(), Mosaic(6)
    ticks = iter(range(1000))
    seen = []

    def on_frame(rgb, ts) -> None:
        seen.append(ts)
        if len(seen) == n:
            stop.set()

    rings, cap = camera_capture(SourceSpec("rtsp://127.0.0.1:1/mosaic", "network"), spec, stop_event=stop,
                                name="mosaic", first=source, on_frame=on_frame, zones=ZONES, whole_frame=whole_frame)
    assert isinstance(cap, CaptureThread)
    cap.clock = lambda: next(ticks) / 15  # 15 fps: every frame is in the window below
    with caplog.at_level(logging.WARNING, logger="streamrec.live.capture"):
        cap.start()
        cap.join(30)
    assert not cap.is_alive() and source.reads == n  # decoded once per frame, for all the streams
    assert list(rings) == ([None] if whole_frame else []) + ["tl", "tr", "bl", "br"]
    for zone, ring in rings.items():
        assert ring.written == n
        got = ring.newest_window(n, 15.0).frames
        for k in range(n):
            want = pre.resize_crop(mosaic(k) if zone is None else tiles(k)[zone])
            assert got[k].dtype == np.uint8 and np.array_equal(got[k], want), (zone, k)
    warnings = [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()]
    assert warnings == [f"camera 'mosaic': zone {z!r} is 96x72 pixels of a 192x144 frame, smaller than the model's "
                        "112x112 crop: it is upscaled" for z in QUARTERS]  # once, not once per frame


def test_one_batch_holds_every_stream_and_smoothing_stays_per_stream(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=1, fps=10)
    clf = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    classes = clf.loaded.classes
    wake, stop = threading.Condition(), threading.Event()
    cfg = CameraConfig("gym", str(video), zones=ZONES[:3])
    cam = Camera(cfg, clf, SmoothingConfig(), wake=wake)
    published: list[list] = []
    got = threading.Event()

    def publish(items):
        published.append(items)
        got.set()

    worker = InferenceWorker(clf, publish, stop_event=stop, wake=wake, frame_wait_s=0.0, clock=lambda: 100.0)
    worker.add(cam)
    frame = np.zeros(cam.ring.frame_shape, cam.ring.dtype)
    try:
        for k in range(36):  # a 30 fps camera, never started: frames written here
            for stream in cam.streams.values():
                stream.ring.write(frame, k / 30)
        worker.start()
        assert got.wait(30)
    finally:
        stop.set()
        with wake:
            wake.notify_all()
        worker.join(5)
        cam.close()
    assert list(worker.batch_sizes) == [4]  # the whole frame and 3 zones: one forward pass
    cam.start()  # closed before it started: starting it is no error, and no capture runs
    cam.start()
    assert cam.capture.ident is not None
    cam.close()
    assert not cam.capture.is_alive()
    msgs = [m for _, m in published[0]]
    assert [(m["camera"], m["zone"]) for m in msgs] == [("gym", None), ("gym", "tl"), ("gym", "tr"), ("gym", "bl")]
    assert [s.name for s, _ in published[0]] == ["gym", "gym/tl", "gym/tr", "gym/bl"]
    for m in msgs:
        validate_prediction(m)
        assert m["seq"] == 1 and m["latency_ms"] == round((100.0 - 35 / 30) * 1e3, 2)

    # each stream its own smoother: four different classes, four different labels
    for stream in cam.streams.values():
        stream.ring.write(frame, 36 / 30)
    batch = worker.collect()
    assert [s.name for s, _ in batch] == ["gym", "gym/tl", "gym/tr", "gym/bl"]
    probs = np.full((4, len(classes)), 0.02 / (len(classes) - 1), np.float32)
    for row, k in enumerate((0, 1, 2, 1)):
        probs[row, k] = 0.98
    for _ in range(6):
        published.clear()
        worker.emit(batch, probs, 5.0)
    labels = {m["zone"]: (m["label"], m["raw_label"], m["seq"]) for _, m in published[0]}
    assert labels == {None: (classes[0], classes[0], 7), "tl": (classes[1], classes[1], 7),
                      "tr": (classes[2], classes[2], 7), "bl": (classes[1], classes[1], 7)}
    assert {z: s.seq for z, s in cam.streams.items()} == {None: 7, "tl": 7, "tr": 7, "bl": 7}
    assert cam.zone_stats()["tr"]["predictions"] == 7


def test_messages_carry_the_zone_and_status_the_zones():
    msg = {"type": "prediction", "seq": 1, "label": "a", "score": 0.5, "raw_label": "a", "raw_score": 0.5,
           "top": [{"label": "a", "score": 0.5}], "window": {"start_ts": 0.0, "end_ts": 1.0, "frames": 16},
           "infer_ms": 1.0, "latency_ms": 1.0, "capture_fps": 15.0, "camera": "gym", "zone": "rack"}
    validate_prediction(msg)
    validate_prediction({**msg, "zone": None})
    with pytest.raises(ValueError) as err:
        validate_prediction({**msg, "zone": "a/b"})
    assert str(err.value) == "prediction.zone: expected a zone's name or null (the whole frame), got 'a/b'"
    m = status_message(camera="gym", source={}, inference={}, model="tiny3d", device="cpu", backend="torch",
                       meaningless=True, zones=ZONES[:1], whole_frame=False)
    assert (m["zones"], m["whole_frame"]) == ([{"name": "tl", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5}], False)


async def zone_predictions(port: int, want: set, timeout: float = 90.0, after=None) -> list[dict]:
    """Predictions from the websocket until each (camera, zone) of ``want`` sent one (after one that ``after`` accepts)."""
    import websockets

    out, started = [], after is None
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22) as ws:
        deadline = time.monotonic() + timeout
        while not want <= {(m["camera"], m["zone"]) for m in out}:
            m = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            if isinstance(m, str) and (d := json.loads(m))["type"] == "prediction":
                started = started or after(d)
                if started:
                    out.append(d)
    return out


@pytest.mark.slow
def test_serve_labels_each_zone_with_health_and_metrics(demo_clip, tmp_path):
    import subprocess

    port = free_port()
    cfg = tmp_path / "zones.toml"
    cfg.write_text(f'model = "tiny3d"\nweights = "none"\ndevice = "cpu"\n\n[[cameras]]\nname = "gym"\n'
                   f'source = "{demo_clip}"\nloop = true\n\n'
                   '[[cameras.zones]]\nname = "rack"\nx = 0\ny = 0\nw = 0.5\nh = 0.5\n\n'
                   '[[cameras.zones]]\nname = "mat"\npolygon = [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]]\n')
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--port", str(port),
                                          "--db", str(tmp_path / "h.db")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        msgs = asyncio.run(zone_predictions(port, {("gym", None), ("gym", "rack"), ("gym", "mat")}))
        for m in msgs:
            validate_prediction(m)
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz"))
        gym = health["cameras"]["gym"]
        assert gym["whole_frame"] is True and sorted(gym["zones"]) == ["mat", "rack"]
        assert all(gym["zones"][z]["predictions"] >= 1 for z in ("mat", "rack"))
        metrics = wait_http(f"http://127.0.0.1:{port}/metrics").decode()
        for zone in ("", "rack", "mat"):
            assert f'streamrec_predictions_total{{camera="gym",zone="{zone}"}}' in metrics
            assert f'streamrec_inference_latency_ms_count{{camera="gym",zone="{zone}"}}' in metrics
        assert 'streamrec_capture_fps{camera="gym"}' in metrics
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert "Traceback" not in err
    # the 340x256 clip's mat is 102x102 pixels: said once, at start-up; the rack (170x128) is not upscaled
    line = "camera 'gym': zone 'mat' is 102x102 pixels of a 340x256 frame, smaller than the model's 112x112 crop: it is upscaled"
    assert err.count(line) == 1 and "zone 'rack'" not in err, err


@pytest.mark.slow
def test_set_zones_on_a_running_app_changes_its_streams(demo_clip, tmp_path):
    from streamrec.serve.app import LiveApp

    config = ServeConfig(model="tiny3d", weights="none", device="cpu", port=0, db=str(tmp_path / "h.db"),
                         cameras=(CameraConfig("gym", str(demo_clip), loop=True, zones=ZONES[:1]),))
    app = LiveApp(config)
    runner = threading.Thread(target=lambda: asyncio.run(app.run()), name="app-under-test")
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while app.server.port in (0, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = app.server.port
        asyncio.run(zone_predictions(port, {("gym", None), ("gym", "tl")}))

        with pytest.raises(StreamrecError) as err:
            app.set_zones("nope", (), True)
        assert str(err.value) == "camera 'nope': no such camera"
        with pytest.raises(StreamrecError) as err:
            app.set_zones("gym", (), False)
        assert "\n" not in str(err.value) and "whole_frame" in str(err.value)

        new = app.set_zones("gym", ({"name": "door", "x": 0.25, "y": 0.25, "w": 0.5, "h": 0.5},), False)
        assert (new.zones, new.whole_frame, new.source) == ((ZoneConfig("door", 0.25, 0.25, 0.5, 0.5),), False,
                                                             str(demo_clip))
        got = asyncio.run(zone_predictions(port, {("gym", "door")}, after=lambda m: m["zone"] == "door"))
        assert {m["zone"] for m in got} == {"door"}  # none of the removed streams after the new zone's first
        assert list(app.cameras["gym"].streams) == ["door"]
        status = app.status_message("gym")
        assert (status["zones"], status["whole_frame"]) == ([ZoneConfig("door", 0.25, 0.25, 0.5, 0.5).to_json()], False)
        assert sorted(app.health()["cameras"]["gym"]["zones"]) == ["door"]
    finally:
        app.request_stop()
        runner.join(30)
    assert not runner.is_alive()



@pytest.mark.slow
def test_zones_changed_at_run_time_keep_the_rules_working_and_the_name_taken(demo_clip, tmp_path):
    """A change that would leave a rule without its zone is refused (the config would not start
    again); while a camera restarts with new zones, its name is neither added again nor removed;
    a camera removed leaves no packet ring and no thread records behind."""
    from streamrec.event_config import RecordingConfig, RuleConfig
    from streamrec.serve.app import LiveApp

    rule = RuleConfig(name="rack-use", labels=("class_0",), zones=("tl",))
    config = ServeConfig(model="tiny3d", weights="none", device="cpu", port=0, db=str(tmp_path / "h.db"),
                         cameras=(CameraConfig("gym", str(demo_clip), loop=True, zones=ZONES[:1]),
                                  CameraConfig("pool", str(demo_clip), loop=True)),
                         rules=(rule,), recording=RecordingConfig(dir=str(tmp_path / "clips")))
    app = LiveApp(config)
    runner = threading.Thread(target=lambda: asyncio.run(app.run()), name="app-under-test")
    runner.start()
    try:
        with pytest.raises(StreamrecError) as err:
            app.set_zones("gym", (ZoneConfig("door", 0.25, 0.25, 0.5, 0.5),), True)
        assert str(err.value) == ("camera 'gym': these zones would leave [[rules]] 'rack-use': zones: no zone 'tl' on "
                                  "any camera; expected one of door (change the rule in the config first)")
        assert app.cameras["gym"].cfg.zones == ZONES[:1]

        outcomes: list[str] = []
        change = threading.Thread(target=lambda: app.set_zones("gym", ZONES[:2], True), name="zones-change")
        change.start()
        while change.is_alive():  # meanwhile no camera takes the restarting camera's name
            try:
                app.add_camera(CameraConfig("gym", str(demo_clip)))
                outcomes.append("added")
            except StreamrecError as exc:
                outcomes.append(str(exc))
            time.sleep(0.01)
        change.join()
        assert outcomes and set(outcomes) == {"camera 'gym' already exists"}
        assert app.cameras["gym"].cfg.zones == ZONES[:2]

        app.restarting.add("pool")  # as while its zones change: not removed meanwhile
        with pytest.raises(StreamrecError) as err:
            app.remove_camera("pool")
        assert str(err.value) == "camera 'pool': its zones are being changed; try again in a few seconds"
        with pytest.raises(StreamrecError) as err:
            app.set_zones("pool", (), True)
        assert str(err.value) == "camera 'pool': its zones are being changed; try again in a few seconds"
        app.restarting.discard("pool")
        assert "pool" in app.health()["events"]["recording"]["rings"]
        assert app.remove_camera("pool")
        health = app.health()
        assert "pool" not in health["events"]["recording"]["rings"]
        assert not [t for t in health["supervised"] if t.endswith("-pool")]
    finally:
        app.request_stop()
        runner.join(30)
    assert not runner.is_alive()

def test_zones_for_a_camera_still_being_added_are_a_try_again(demo_clip):
    """PUT /api/cameras/NAME/zones while NAME's source opens: a 409 (Busy), not "no such camera"."""
    from streamrec.errors import Busy
    from streamrec.serve.app import LiveApp

    app = LiveApp(ServeConfig(model="tiny3d", weights="none", device="cpu", port=0, db=":memory:",
                              cameras=(CameraConfig("pool", str(demo_clip), loop=True),)))
    app.adding_names.add("gate")
    with pytest.raises(Busy, match="^camera 'gate': it is being added; try again in a few seconds$"):
        app.set_zones("gate", (), True)
    with pytest.raises(StreamrecError, match="^camera 'door': no such camera$"):
        app.set_zones("door", (), True)


@pytest.mark.slow
def test_a_camera_being_removed_keeps_its_name_until_all_of_it_went(demo_clip, tmp_path):
    """DELETE, then POST of the same name while the removal still waits for its capture thread:
    the add is refused (try again), and once added again the camera keeps its packet ring and its
    thread record: the removal's cleanup does not take them from it."""
    from streamrec.event_config import RecordingConfig, RuleConfig
    from streamrec.serve.app import LiveApp

    config = ServeConfig(model="tiny3d", weights="none", device="cpu", port=0, db=str(tmp_path / "h.db"),
                         cameras=(CameraConfig("gym", str(demo_clip), loop=True),),
                         rules=(RuleConfig(name="any", labels=("class_0",)),),
                         recording=RecordingConfig(dir=str(tmp_path / "clips")))
    app = LiveApp(config)
    runner = threading.Thread(target=lambda: asyncio.run(app.run()), name="app-under-test")
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while "gym" not in app.cameras and time.monotonic() < deadline:
            time.sleep(0.05)
        cam, closing = app.cameras["gym"], threading.Event()
        close = cam.close
        cam.close = lambda *a, **k: (closing.wait(30), close(*a, **k))  # a capture stuck in a network read
        removal = threading.Thread(target=app.remove_camera, args=("gym",), name="removal")
        removal.start()
        while "gym" in app.cameras:
            time.sleep(0.01)
        with pytest.raises(StreamrecError, match="^camera 'gym' already exists$"):
            app.add_camera(CameraConfig("gym", str(demo_clip), loop=True))
        closing.set()
        removal.join(30)
        again = app.add_camera(CameraConfig("gym", str(demo_clip), loop=True))
        assert again.capture.packet_ring is app.events.packet_ring("gym")  # the ring the recorder keeps
        assert "gym" in app.health()["events"]["recording"]["rings"]
        assert [t for t in app.health()["supervised"] if t == "capture-gym"]
    finally:
        app.request_stop()
        runner.join(30)
    assert not runner.is_alive()


@pytest.mark.slow
def test_cluster_capture_actor_crops_the_zones_and_the_driver_batches_them(demo_clip, tmp_path):
    ray = pytest.importorskip("ray")
    from streamrec.cluster.app import ClusterApp

    cams = [{"name": "gym", "source": str(demo_clip), "loop": True,
             "zones": [{"name": "rack", "x": 0, "y": 0, "w": 0.5, "h": 0.5}, {"name": "mat", "x": 0.5, "y": 0.5,
                                                                             "w": 0.5, "h": 0.5}]}]
    config = ServeConfig.from_sources({"cameras": cams, "model": "tiny3d", "weights": "none", "device": "cpu"}, {})
    got: dict[str, list] = {}
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=False)
    try:
        lines = io.StringIO()  # every prediction as a JSON line
        app = ClusterApp(config, db=str(tmp_path / "h.db"), dashboard=False, lines=lines)
        runner = app.runner
        try:
            sizes = []
            for _ in range(400):
                sizes.append(runner.step())
                got.clear()
                for m in map(json.loads, lines.getvalue().splitlines()):
                    got.setdefault(stream_key(m["camera"], m["zone"]), []).append(m)
                if all(len(got.get(k, [])) >= 2 for k in ("gym", "gym/rack", "gym/mat")):
                    break
            health = app.camera_health("gym")
            status = app.status_message("gym")
            rows = {n: sorted(s, key=str) for n, _, s in app.metric_rows()}
            tracked = sorted(app.trackers)
        finally:
            app.close()
    finally:
        ray.shutdown()
    assert set(got) == {"gym", "gym/rack", "gym/mat"}
    for key, msgs in got.items():
        for m in msgs:
            validate_prediction(m)
            assert (m["camera"], m["zone"]) == ("gym", key.partition("/")[2] or None)
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))  # counted per stream
        assert runner.stream(key).seq == len(msgs)
    assert max(sizes) == 3  # one actor call gave the three streams' windows, classified in one batch
    assert health["whole_frame"] is True and sorted(health["zones"]) == ["mat", "rack"]
    assert health["zones"]["mat"]["predictions"] == runner.stream("gym/mat").seq
    assert [z["name"] for z in status["zones"]] == ["rack", "mat"] and status["whole_frame"] is True
    assert rows == {"gym": [None, "mat", "rack"]} and tracked == ["gym", "gym/mat", "gym/rack"]


@pytest.mark.slow
def test_new_zones_on_a_network_camera_that_is_away_keep_the_camera_reconnecting(tmp_path):
    """Zones saved while a network camera does not answer (reconnecting, or one RTSP session at a
    time): the camera was removed until the next start, its tile gone. It stays, reconnecting."""
    import functools
    import http.server

    from conftest import wait_until
    from streamrec.serve.app import LiveApp

    write_video(tmp_path / "cam.ts", seconds=2.0, size=(160, 120))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    camera = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=camera.serve_forever, name="http-camera", daemon=True).start()
    url = f"http://127.0.0.1:{camera.server_address[1]}/cam.ts"
    config = ServeConfig(model="tiny3d", weights="none", device="cpu", port=0, db=str(tmp_path / "h.db"),
                         cameras=(CameraConfig("gym", url),))
    app = LiveApp(config)
    runner = threading.Thread(target=lambda: asyncio.run(app.run()), name="app-under-test")
    runner.start()
    try:
        wait_until(lambda: app.server.port not in (0, None) and "gym" in app.cameras, "the server", timeout=60)
        camera.shutdown()
        camera.server_close()  # the camera goes away
        new = app.set_zones("gym", ZONES[:1], True)
        assert new.zones == ZONES[:1] and list(app.cameras["gym"].streams) == [None, "tl"]
        wait_until(lambda: app.status_message("gym")["source"]["state"] == "reconnecting", "reconnecting", timeout=30)
        assert "gym" in app.health()["cameras"]
    finally:
        app.request_stop()
        runner.join(30)
    assert not runner.is_alive()
