"""``streamrec serve``: cameras, batched inference workers, history and the web server.

One capture thread per camera; one inference worker per loaded model, batching the
newest windows of all its cameras; smoothing and history per camera. Cameras can be
added and removed at run time (``POST``/``DELETE /api/cameras``, token required).

Start-up fails fast with a :class:`StreamrecError` (exit 2) on a bad source, bad weights
or a busy port. Ctrl-C and SIGTERM stop everything within about 2 s: the stop event is
set, the server closes, threads are joined with a timeout, cameras are released and the
open history segments are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import cv2

from streamrec.config import CameraConfig, ServeConfig
from streamrec.runtime.classifier import Classifier
from streamrec.errors import StreamrecError
from streamrec.live.history import HistoryStore, SegmentTracker
from streamrec.live.camera import JOIN_TIMEOUT_S, Camera, InferenceWorker, adding_camera
from streamrec.live.messages import MEANINGLESS, status_message
from streamrec.serve.metrics import Metrics
from streamrec.runtime import prepared
from streamrec.serve.server import ApiRoute, Hub, Reply, Route, WebServer, json_route, page_html, stop_on_signals, watched_ticks
from streamrec.live.sources import SourceSpec, open_source
from streamrec.validate import from_text

logger = logging.getLogger(__name__)


def default_db() -> str:
    """``$XDG_DATA_HOME/streamrec/history.db`` (``~/.local/share/...``)."""
    import os
    from pathlib import Path

    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "streamrec"
    base.mkdir(parents=True, exist_ok=True)
    return str(base / "history.db")


class LiveApp:
    """All cameras, end to end. ``await run()`` serves until :meth:`request_stop`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.hub = Hub()
        self.started = time.time()
        self.wake = threading.Condition()
        self._lock = threading.RLock()
        self.cameras: dict[str, Camera] = {}
        self.adding: set[str] = set()  # cameras being added at run time (opening the source, loading a model)
        self._load_lock = threading.Lock()  # one model load at a time: two cameras of a new model load it once
        self.trackers: dict[str, SegmentTracker] = {}
        self.workers: dict[tuple, InferenceWorker] = {}
        self.classifiers: dict[tuple, Classifier] = {}
        check_port_free(config.host, config.port)  # before the slow model load
        # OpenCV's per-frame work here (a resize per captured frame, a JPEG per shown frame) is
        # small; its own thread pool would only wake on the cores inference is using and stall
        # the model's parallel sections. In the capture thread it runs on one. On 2 vCPUs,
        # `latency_ms` p95 - inference p50 over six interleaved 60 s runs: 26-108 ms (median 47)
        # against 38-201 ms (median 86) with OpenCV's default pool.
        cv2.setNumThreads(1)
        self.history = HistoryStore(config.db or default_db(), retain_days=config.history_days)
        try:
            for cam in config.all_cameras():
                self._add_camera(cam, start=False)
        except BaseException:
            self._close_cameras()
            self.history.close()
            raise
        self.metrics = Metrics(self.hub, lambda: [(n, c.capture.stats(), c) for n, c in list(self.cameras.items())],
                               self.history.stats)
        routes = {
            "/": Route("text/html; charset=utf-8", page_html),
            "/healthz": json_route(self.health),
            "/metrics": Route(Metrics.CONTENT_TYPE, self.metrics.render),
        }
        cameras = cameras_api(
            listing=lambda: {"cameras": {n: self.camera_health(c) for n, c in list(self.cameras.items())},
                             "adding": sorted(self.adding)},
            add=lambda cam: self._add_camera(cam, start=True), remove=self.remove_camera)
        api = {"/api/history": history_api(self.history), "/api/cameras": cameras}
        self.server = WebServer(self.hub, host=config.host, port=config.port, routes=routes, api=api, token=config.token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._preview_pool: ThreadPoolExecutor | None = None

    # -- cameras ----------------------------------------------------------------
    def _classifier(self, cam: CameraConfig) -> tuple[tuple, Classifier]:
        key = (cam.model, str(cam.weights), self.config.device, self.config.backend)
        if key not in self.classifiers:
            loaded = prepared.load(cam.model, str(cam.weights or "DEFAULT"), device=self.config.device)
            sharing = sum(1 for c in self.config.all_cameras() if self.config.resolve(c).model == cam.model)
            self.classifiers[key] = Classifier(loaded, device=self.config.device, backend=self.config.backend,
                                               batch_hint=sharing,
                                               threads=self.config.threads)
        return key, self.classifiers[key]

    def _add_camera(self, cam: CameraConfig, *, start: bool) -> Camera:
        """Open the camera's source and (when no camera uses its model yet) load the model, then
        start it when ``start``. At run time this runs in a worker thread (see :func:`cameras_api`):
        the event loop keeps serving every other camera meanwhile; ``health()["adding"]`` names it."""
        cam = self.config.resolve(cam)
        with adding_camera(self._lock, self.cameras, self.adding, cam.name):
            first = open_source(SourceSpec.of_camera(cam))  # fail fast: missing file, not a video, unreachable URL
            try:
                with self._load_lock:
                    key, clf = self._classifier(cam)
                camera = Camera(cam, clf, self.config.smoothing, first=first, wake=self.wake)
            except BaseException:
                first.close()
                raise
            with self._lock:
                if start and self.stop.is_set():
                    camera.close()
                    raise StreamrecError("the server is shutting down")
                self.cameras[cam.name] = camera
                self.trackers[cam.name] = SegmentTracker(cam.name, self.history.add)
                worker = self.workers.get(key)
                if worker is None:
                    worker = InferenceWorker(clf, self._publish_predictions, stop=self.stop, wake=self.wake,
                                             batch_wait_s=self.config.batch_wait_ms / 1e3,
                                             stride_s=self.config.stride_ms / 1e3, name=f"inference-{len(self.workers)}")
                    self.workers[key] = worker
                    if start:
                        worker.start()
                worker.add(camera)
                if start:
                    camera.start()
        return camera

    def remove_camera(self, name: str) -> bool:
        with self._lock:  # the lock _publish_predictions takes: no label of it follows the removal notice
            cam = self.cameras.pop(name, None)
            if cam is None:
                return False
            for w in self.workers.values():
                w.remove(name)
            tracker = self.trackers.pop(name)
            self.metrics.forget(name)
            self.hub.forget_threadsafe(f":{name}")
            self.hub.publish_threadsafe("removed", json.dumps({"type": "removed", "camera": name}))
        cam.close()
        tracker.close(time.time())
        return True

    def _close_cameras(self) -> None:
        for cam in list(self.cameras.values()):
            cam.close()

    # -- state ------------------------------------------------------------------
    @property
    def meaningless(self) -> bool:
        return any(c.loaded.meaningless for c in self.classifiers.values())

    def camera_health(self, cam: Camera) -> dict[str, Any]:
        return {**cam.capture.stats(), **cam.stats(), "model": cam.classifier.loaded.name,
                "backend": cam.classifier.backend, "meaningless": cam.classifier.loaded.meaningless,
                "sports_only": cam.subset is not None}

    def health(self) -> dict[str, Any]:
        cams = {name: self.camera_health(c) for name, c in list(self.cameras.items())}
        first = next(iter(cams.values()), {})
        states = {c["state"] for c in cams.values()}
        return {
            "status": "ok" if states == {"running"} else ",".join(sorted(states)) or "no cameras",
            "cameras": cams,
            # single-camera summary (the first camera), as the page and scripts read it
            "source": {k: first.get(k) for k in ("state", "source", "frames", "capture_fps", "dropped",
                                                  "decode_errors", "reconnects", "error")},
            "capture_fps": first.get("capture_fps", 0.0),
            "inference_rate": first.get("inference_rate", 0.0),
            "dropped": first.get("dropped", 0),
            "skipped_windows": first.get("skipped_windows", 0),
            "predictions": first.get("predictions", 0),
            "model": first.get("model"),
            "weights": next(iter(self.classifiers.values())).loaded.weights if self.classifiers else None,
            "device": str(next(iter(self.classifiers.values())).device) if self.classifiers else None,
            "backend": first.get("backend"),
            "meaningless": self.meaningless,
            "warning": MEANINGLESS if self.meaningless else None,
            "adding": sorted(self.adding),
            "clients": len(self.hub.clients),
            "history": self.history.stats(),
            "batching": self.batching(),
            "threads": sorted(t.name for t in threading.enumerate()),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def batching(self) -> dict[str, Any]:
        sizes = [b for w in self.workers.values() for b in w.batch_sizes]
        return {"batches": sum(w.batches for w in self.workers.values()),
                "mean_batch": round(sum(sizes) / len(sizes), 3) if sizes else 0.0,
                "max_batch": max(sizes, default=0)}

    def status_message(self, cam: Camera) -> dict[str, Any]:
        return status_message(camera=cam.name, source=cam.capture.stats(), inference=cam.stats(),
                              model=cam.classifier.loaded.name, device=str(cam.classifier.device),
                              backend=cam.classifier.backend, meaningless=cam.classifier.loaded.meaningless)

    def _publish_predictions(self, items: list[tuple[Camera, dict[str, Any]]]) -> None:
        """One batch's messages: metrics, history, then to the browsers in one hand-off to the loop.
        A camera removed while its window was in the model is left out (under the lock
        :meth:`remove_camera` takes)."""
        with self._lock:
            items = [(cam, msg) for cam, msg in items if self.cameras.get(cam.name) is cam]
            for cam, msg in items:
                self.metrics.observe_prediction(msg)
                self.trackers[cam.name].update(msg["label"], msg["score"], msg["window"]["end_ts"])
            self.hub.publish_many_threadsafe([(f"prediction:{cam.name}", json.dumps(msg)) for cam, msg in items])

    # -- HTTP API ---------------------------------------------------------------
    # -- tasks ------------------------------------------------------------------
    async def _status_task(self) -> None:
        while True:
            for cam in list(self.cameras.values()):
                self.hub.publish(f"status:{cam.name}", json.dumps(self.status_message(cam)))
            await asyncio.sleep(1.0)

    async def _preview_task(self) -> None:
        """Downscaled JPEG frames to the browsers, at most ``display_fps`` per camera (:func:`frame_message`)."""
        period = 1.0 / self.config.display_fps
        last: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        async for _ in watched_ticks(self.hub, period):
            for name, cam in list(self.cameras.items()):
                rgb, ts = cam.capture.latest_rgb, cam.capture.latest_ts
                if rgb is None or ts == last.get(name):
                    continue
                last[name] = ts
                jpeg = await loop.run_in_executor(self._preview_pool, encode_preview, rgb,
                                                  preview_width(self.config, len(self.cameras)))
                if self.cameras.get(name) is cam:  # not removed while it was encoded: no frame after its removal notice
                    self.hub.publish(f"frame:{name}", frame_message(name, jpeg))

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        stop_on_signals(self._loop, self.request_stop)
        try:
            await self.server.start()
        except OSError as exc:
            self._close_cameras()
            self.history.close()
            raise StreamrecError(f"--port {self.config.port}: cannot listen on {self.config.host}: {exc.strerror or exc}") from None
        names = ", ".join(f"{n} ({c.spec.display_name})" for n, c in self.cameras.items())
        page = "/?token=<the token>" if self.config.token else "/"  # the page needs it; the log never shows it
        logger.info("serving %s at http://%s:%d%s (Ctrl-C to stop)", names, self.config.host, self.server.port, page)
        with self._lock:
            for cam in self.cameras.values():
                cam.start()
            for w in self.workers.values():
                w.start()
        # one named thread encodes the previews, one at a time (the task awaits each): asyncio's default
        # executor would add threads whenever a finished one had not yet marked itself idle
        self._preview_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")
        tasks = [asyncio.create_task(self._status_task()), asyncio.create_task(self._preview_task())]
        try:
            await self._stopped.wait()
        finally:
            self._preview_pool.shutdown(wait=False, cancel_futures=True)
            self.stop.set()
            for cam in list(self.cameras.values()):
                cam.stop.set()
            with self.wake:
                self.wake.notify_all()
            for t in tasks:
                t.cancel()
            await self.server.close()
            for w in self.workers.values():
                w.join(JOIN_TIMEOUT_S)
            self._close_cameras()
            now = time.time()
            for tracker in self.trackers.values():
                tracker.close(now)
            self.history.close()
            alive = [t.name for t in threading.enumerate() if t.name.startswith(("capture-", "inference-")) and t.is_alive()]
            if alive:
                logger.warning("threads still running at exit: %s", ", ".join(alive))
            logger.info("stopped")

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (safe from any thread, idempotent)."""
        self.stop.set()
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)


def check_port_free(host: str, port: int) -> None:
    """Fail fast (before loading a model) when ``host:port`` cannot be bound."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StreamrecError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            s.bind(addr)
        except OSError as exc:
            raise StreamrecError(f"--port {port}: cannot listen on {host}: {exc.strerror}") from None


HISTORY_API_LIMIT = 10_000  # segments in one /api/history answer: the newest; "truncated" says so


def history_api(store: HistoryStore, *, limit: int = HISTORY_API_LIMIT) -> ApiRoute:
    """``GET /api/history?camera=&since=&until=``: the recorded segments (the page's timelines),
    at most the newest ``limit``, oldest first; ``"truncated": true`` when there were more."""
    from streamrec.live.history import parse_time

    def handler(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        if method != "GET":
            return Reply(405, {"error": "GET only"})
        one = lambda k: (query.get(k) or [None])[0]  # noqa: E731
        try:
            since, until = parse_time(one("since")), parse_time(one("until"))
        except StreamrecError as exc:
            return Reply(400, {"error": str(exc)})
        try:
            rows = store.query(camera=one("camera"), since=since, until=until, limit=limit + 1)
        except Exception as exc:  # noqa: BLE001 - the database went away: the page asks again in 5 s
            logger.warning("history: cannot read the database: %s", str(exc).strip())
            return Reply(503, {"error": f"history database unavailable: {str(exc).strip()}"})
        return Reply(200, {"segments": rows[-limit:], "truncated": len(rows) > limit})

    return ApiRoute(handler)


def cameras_api(*, listing: Callable[[], dict[str, Any]], add: Callable[[CameraConfig], Any],
                remove: Callable[[str], bool]) -> ApiRoute:
    """The admin camera API (token required): ``GET /api/cameras`` (``listing()``), ``POST
    /api/cameras?name=...&source=...&loop=...`` (``add``: values in the query string, converted to
    each option's type; a :class:`StreamrecError` is a 400 naming it) and ``DELETE /api/cameras/NAME``.
    Each request runs in a thread of its own (see :class:`~streamrec.serve.server.WebServer`)."""

    def handler(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        if method == "GET":
            return Reply(200, listing())
        if method == "POST":
            text = {k: v[0] for k, v in query.items() if k != "token"}
            try:
                cam = CameraConfig.from_dict(from_text(CameraConfig, text))
                add(cam)
            except StreamrecError as exc:
                return Reply(400, {"error": str(exc)})
            return Reply(201, {"added": cam.name})
        if method == "DELETE":
            name = path.rsplit("/", 1)[-1]
            if path.count("/") < 3 or not name:
                return Reply(400, {"error": "DELETE /api/cameras/NAME: expected a camera name in the path"})
            if not remove(name):
                return Reply(404, {"error": f"no camera {name!r}"})
            return Reply(200, {"removed": name})
        return Reply(405, {"error": "GET, POST or DELETE"})

    return ApiRoute(handler, admin=True)


def preview_width(config: ServeConfig, cameras: int) -> int:
    """Preview width: ``display_width`` for one camera, at most 320 px for a dashboard of several."""
    return config.display_width if cameras == 1 else min(config.display_width, 320)


def frame_message(camera: str, jpeg: bytes) -> bytes:
    r"""A preview frame for the page: 1 byte name length, the camera name (UTF-8), then the JPEG.

    >>> frame_message("pool", b"\xff\xd8")
    b'\x04pool\xff\xd8'
    """
    tag = camera.encode()
    return struct.pack("B", len(tag)) + tag + jpeg


def encode_preview(rgb, width: int) -> bytes:
    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    return buf.tobytes() if ok else b""
