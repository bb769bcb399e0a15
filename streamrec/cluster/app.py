"""``streamrec cluster``: the Ray cluster's cameras on the same dashboard as ``streamrec serve``.

The driver runs :class:`~streamrec.cluster.runner.ClusterRunner` in a named thread
(``cluster-driver``): it gathers the cameras' newest windows, classifies them in one batch on
an inference actor, smooths them per camera and hands the batch's messages to the event loop
at once. The event loop owns the sockets and serves what ``serve`` serves: the page, ``/ws``
(predictions, a status per camera once a second, preview JPEGs encoded on the camera's own
node), ``/healthz``, ``/metrics``, ``/api/history`` and ``/api/cameras`` (adding and removing
cameras at run time, token required). Every prediction is also printed as a JSON line (for
scripts) and recorded in the activity history. Ctrl-C and SIGTERM stop the driver thread,
the server and the cluster's actors. The command line is in :mod:`streamrec.cli.cluster`.

Example (a local Ray cluster, the three clip cameras of the example config)::

    streamrec cluster --config configs/gym.toml --address local --port 8000
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from streamrec.serve.app import cameras_api, frame_message, history_api, preview_width
from streamrec.config import CameraConfig, ServeConfig
from streamrec.cluster.runner import ClusterRunner
from streamrec.errors import StreamrecError
from streamrec.live.history import HistoryStore, SegmentTracker
from streamrec.live.camera import JOIN_TIMEOUT_S
from streamrec.live.messages import MEANINGLESS, status_message
from streamrec.serve.metrics import Metrics
from streamrec.serve.server import Hub, Route, WebServer, json_route, page_html, stop_on_signals, watched_ticks

logger = logging.getLogger(__name__)

# what the page reads of a camera's capture before its actor has answered once (or after it stopped answering)
_NO_STATS = {"state": "starting", "error": None, "capture_fps": 0.0, "dropped": 0, "frames": 0}


class ClusterApp:
    """The driver of a cluster run. ``await run()`` serves until :meth:`request_stop` (or ``seconds``).

    ``ray.init`` must have been called. ``lines`` gets every prediction as a JSON line;
    ``dashboard=False`` runs without the web server (JSON lines and history only)."""

    def __init__(self, config: ServeConfig, *, db: str, replicas: int = 1, lines: TextIO | None = None,
                 dashboard: bool = True) -> None:
        self.config = config
        self.lines = lines
        self.hub = Hub()
        self.stop = threading.Event()
        self.started = time.time()
        self.history = HistoryStore(db, retain_days=config.history_days)
        self.trackers: dict[str, SegmentTracker] = {}
        self._publish_lock = threading.Lock()
        try:
            self.runner = ClusterRunner(config, self._publish, inference_replicas=replicas)
        except BaseException:
            self.history.close()
            raise
        self.source_stats: dict[str, dict[str, Any]] = {}  # each camera's capture stats, refreshed once a second
        self.metrics = Metrics(self.hub, lambda: [(n, self.camera_source(n), s) for n, s in list(self.runner.labels.items())],
                               self.history.stats)
        self.error: str | None = None  # the driver's last failure, until a round succeeds again
        self.errors = 0
        self.server = None
        if dashboard:
            routes = {"/": Route("text/html; charset=utf-8", page_html), "/healthz": json_route(self.health),
                      "/metrics": Route(Metrics.CONTENT_TYPE, self.metrics.render)}
            cameras = cameras_api(listing=lambda: {"cameras": self.health()["cameras"], "adding": sorted(self.runner.adding)},
                                  add=self.add_camera, remove=self.remove_camera)
            self.server = WebServer(self.hub, host=config.host, port=config.port, routes=routes, token=config.token,
                                    api={"/api/history": history_api(self.history), "/api/cameras": cameras})
        self._thread = threading.Thread(target=self._drive, name="cluster-driver", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cluster-poll")  # status, previews
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._closed = False

    # -- the driver thread ------------------------------------------------------
    def _drive(self) -> None:
        while not self.stop.is_set():
            try:
                self.runner.step()
                self.error = None
            except Exception as exc:  # noqa: BLE001 - an inference actor lost with its node: say so, retry
                if self.stop.is_set():
                    break
                self.errors += 1
                text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                if text != self.error:
                    logger.error("cluster round failed: %s", text)
                self.error = text
                self.stop.wait(1.0)

    def _publish(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """One batch's messages (in the driver thread): JSON lines, history, then the browsers.
        Under the lock :meth:`remove_camera` takes: a removed camera's last label never follows
        its ``removed`` message."""
        with self._publish_lock:
            self._publish_locked([(name, msg) for name, msg in items if name in self.runner.labels])

    def _publish_locked(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        out = []
        for name, msg in items:
            self.metrics.observe_prediction(msg)
            text = json.dumps(msg)
            self._line(text)
            self.trackers.setdefault(name, SegmentTracker(name, self.history.add)).update(
                msg["label"], msg["score"], msg["window"]["end_ts"])
            out.append((f"prediction:{name}", text))
        self._line(None)
        self.hub.publish_many_threadsafe(out)

    def _line(self, text: str | None) -> None:
        """Print a JSON line (``None``: flush). A reader that went away (``... | head``) ends the
        lines, not the run: the dashboard and the history go on."""
        if self.lines is None:
            return
        try:
            if text is None:
                self.lines.flush()
            else:
                self.lines.write(text + "\n")
        except (BrokenPipeError, ValueError) as exc:  # ValueError: the stream was closed
            logger.warning("no more JSON lines: their reader is gone (%s); the dashboard and history go on",
                           type(exc).__name__)
            self.lines = None

    # -- cameras at run time (``/api/cameras``, token required) -----------------------
    def add_camera(self, cam: CameraConfig) -> None:
        """Start a capture actor for ``cam`` (in the API's own thread: the dashboard keeps serving)."""
        if self.stop.is_set():
            raise StreamrecError("the server is shutting down")
        self.runner.add_camera(cam)
        logger.info("camera %s added", cam.name)

    def remove_camera(self, name: str) -> bool:
        with self._publish_lock:
            actor = self.runner.detach_camera(name)
            if actor is None:
                return False
            self.source_stats.pop(name, None)
            self.metrics.forget(name)
            tracker = self.trackers.pop(name, None)
            if tracker is not None:
                tracker.close(time.time())
            self.hub.forget_threadsafe(f":{name}")
            self.hub.publish_threadsafe("removed", json.dumps({"type": "removed", "camera": name}))
        self.runner.stop_actor(actor)
        logger.info("camera %s removed", name)
        return True

    # -- state ------------------------------------------------------------------
    @property
    def meaningless(self) -> bool:
        return self.runner.meaningless

    def camera_source(self, name: str) -> dict[str, Any]:
        return {**_NO_STATS, **self.source_stats.get(name, {})}

    def model_of(self, name: str) -> dict[str, Any]:
        group = self.runner.group_of(name)
        if group is None:  # removed meanwhile
            return {"model": None, "device": None, "backend": None, "meaningless": False}
        return {"model": group.name, "device": group.device, "backend": group.backend, "meaningless": group.meaningless}

    def health(self) -> dict[str, Any]:
        cams = {name: {**self.camera_source(name), **labels.stats(), **self.model_of(name)}
                for name, labels in list(self.runner.labels.items())}
        first = next(iter(cams.values()), {})
        states = {c["state"] for c in cams.values()}
        sizes = list(self.runner.batch_sizes)
        status = "ok" if states == {"running"} else ",".join(sorted(states)) or "no cameras"
        return {
            "status": f"error: {self.error}" if self.error else status,
            "adding": sorted(self.runner.adding),
            "cameras": cams,
            "nodes": sorted({c["node"] for c in cams.values() if c.get("node")}),
            # the first camera's, as serve's single-camera summary; each camera's own are under cameras
            "model": first.get("model"),
            "device": first.get("device"),
            "backend": first.get("backend"),
            "meaningless": self.meaningless,
            "warning": MEANINGLESS if self.meaningless else None,
            "clients": len(self.hub.clients),
            "history": self.history.stats(),
            "batching": {"batches": self.runner.rounds, "mean_batch": round(sum(sizes) / len(sizes), 3) if sizes else 0.0,
                         "max_batch": max(sizes, default=0)},
            "errors": self.errors,
            "threads": sorted(t.name for t in threading.enumerate()),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def status_messages(self) -> list[tuple[str, str]]:
        out = []
        for name, labels in list(self.runner.labels.items()):
            source = self.camera_source(name)
            model = self.model_of(name)
            msg = status_message(camera=name, source={k: v for k, v in source.items() if k != "node"},
                                 inference=labels.stats(), model=model["model"], device=model["device"],
                                 backend=model["backend"], meaningless=model["meaningless"], node=source.get("node"))
            out.append((f"status:{name}", json.dumps(msg)))
        return out

    # -- tasks ------------------------------------------------------------------
    async def _status_task(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.source_stats = await loop.run_in_executor(self._pool, self.runner.stats, 2.0)
                for key, text in self.status_messages():
                    self.hub.publish(key, text)
            except Exception:  # noqa: BLE001 - the next second tries again; the page keeps the last status
                logger.exception("cluster status round failed")
            await asyncio.sleep(1.0)

    async def _preview_task(self) -> None:
        """The cameras' newest frames, at most ``display_fps`` each, while a browser is connected."""
        period = 1.0 / self.config.display_fps
        last: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        async for _ in watched_ticks(self.hub, period):
            width = preview_width(self.config, len(self.runner.labels))  # cameras come and go
            try:
                frames = await loop.run_in_executor(self._pool, self.runner.previews, width, dict(last), max(period, 0.5))
            except Exception:  # noqa: BLE001 - no frames this time
                logger.exception("cluster preview round failed")
                continue
            for name, (ts, jpeg) in frames.items():
                last[name] = ts
                if name in self.runner.labels:  # not removed meanwhile: no frame after its removal notice
                    self.hub.publish(f"frame:{name}", frame_message(name, jpeg))

    async def run(self, seconds: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        stop_on_signals(self._loop, self.request_stop)
        tasks: list[asyncio.Task] = []
        try:
            if self.server is not None:
                try:
                    await self.server.start()
                except OSError as exc:
                    raise StreamrecError(f"--port {self.config.port}: cannot listen on {self.config.host}: "
                                         f"{exc.strerror or exc}") from None
                page = "/?token=<the token>" if self.config.token else "/"
                logger.info("dashboard of %d cluster cameras at http://%s:%d%s", len(self.runner.cameras),
                            self.config.host, self.server.port, page)
                tasks.append(asyncio.create_task(self._preview_task()))
            tasks.append(asyncio.create_task(self._status_task()))
            self._thread.start()
            try:
                await asyncio.wait_for(self._stopped.wait(), seconds)
            except asyncio.TimeoutError:  # --seconds ran out
                pass
        finally:
            self.stop.set()
            for t in tasks:
                t.cancel()
            if self.server is not None:
                await self.server.close()
            await asyncio.get_running_loop().run_in_executor(None, self.close)

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish (safe from any thread, idempotent)."""
        self.stop.set()
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    def close(self) -> None:
        """Stop the driver thread, the cluster's actors and the history (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT_S)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.runner.close()
        with self._publish_lock:  # a driver thread still in a call could publish meanwhile
            now = time.time()
            for tracker in self.trackers.values():
                tracker.close(now)
            self.history.close()
        if self._thread.is_alive():
            logger.warning("the cluster driver thread was still in a call at exit")
