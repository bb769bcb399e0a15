"""The app core shared by ``streamrec serve`` and ``streamrec cluster``.

It owns what a dashboard of cameras needs whatever runs the models: the stop event, the
:class:`~streamrec.serve.server.Hub` and web server with their routes, the history and a
segment tracker per labelled stream (a camera's whole frame or one of its zones, keyed by
:func:`~streamrec.zones.stream_key`), ``/healthz``, the status and preview tasks, the removal notice,
:meth:`AppCore.run` and one idempotent :meth:`AppCore.close`. A subclass says where cameras,
their stats and their frames come from (:class:`~streamrec.serve.app.LiveApp` in this
process, :class:`~streamrec.cluster.app.ClusterApp` on Ray actors).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Iterable

from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError
from streamrec.events.manager import EventManager
from streamrec.live.history import HistoryStore, SegmentTracker, default_db
from streamrec.live.messages import MEANINGLESS
from streamrec.live.wire import message_schema
from streamrec.serve.metrics import Metrics
from streamrec.serve.guard import Limits
from streamrec.serve.preview import frame_message, preview_width
from streamrec.serve.routes import cameras_api, events_api, history_api
from streamrec.supervision import SHUTDOWN_S, Deadline, Supervisor
from streamrec.event_config import check_mqtt_cameras, rule_zones_problem
from streamrec.zones import alike, split_key, stream_key
from streamrec.serve.hub import Hub, watched_ticks
from streamrec.serve.server import Route, WebServer, json_route, page_html, stop_on_signals

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("state", "source", "frames", "capture_fps", "dropped", "decode_errors", "reconnects", "error")


def favicon() -> bytes:
    return (b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 8 8'><rect width='8' height='8' rx='2' "
            b"fill='#2fbf71'/><path d='M3 2v4l3-2z'/></svg>")


class AppCore:
    """Cameras on a dashboard. Subclasses implement the hooks marked *hook*."""

    def __init__(self, config: ServeConfig, history: HistoryStore, supervisor: Supervisor | None = None) -> None:
        self.config = config
        self.history = history
        self.supervisor = supervisor or Supervisor()  # every long-lived thread and task of the app
        self.stop_event = threading.Event()
        self.hub = Hub()
        self.started = time.time()
        self.lock = threading.RLock()  # the cameras and what is published of them
        self.trackers: dict[str, SegmentTracker] = {}  # by stream key
        self.metrics: Metrics | None = None
        self.events: EventManager | None = None
        self.server: WebServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._closed = False
        self.config_file: str | None = None  # serve --config FILE: where the zones API writes changes

    # -- hooks --------------------------------------------------------------------
    def camera_names(self) -> list[str]:
        """*hook*: the cameras now."""
        raise NotImplementedError

    def stream_keys(self) -> list[str]:
        """*hook*: every labelled stream's key now: each camera, each of its zones."""
        raise NotImplementedError

    def check_streams(self, cam: CameraConfig, replacing: str | None = None, pending: Iterable[str] = ()) -> None:
        """Refuse (a one-line :class:`StreamrecError`, a 400 from the API) camera ``cam`` added or
        changed at run time when a config holding it would be refused at start: its MQTT topics,
        a Home Assistant id that another camera's stream (not ``replacing``'s) already has, and (new
        zones of camera ``replacing``) a rule's zone that no camera would have any more. ``pending``:
        the names of cameras being added meanwhile (their whole frames count as theirs already)."""
        others = [k for k in [*self.stream_keys(), *pending] if split_key(k)[0] not in (cam.name, replacing)]
        pair = alike([*dict.fromkeys(split_key(k)[0] for k in others), cam.name])
        if pair is not None:
            raise StreamrecError(f"camera {cam.name!r}: expected a name that differs from {pair[0]!r} in more than "
                                 "case or Unicode form (Home Assistant and many file systems read them as one)")
        after = others + [stream_key(cam.name, z) for z in cam.streams()]
        check_mqtt_cameras(self.config.notify.mqtt, after)
        if replacing is not None:  # new zones: a rule that finds its zones now must find them after
            before = self.stream_keys()
            for rule in self.config.rules:
                if not rule_zones_problem(rule, before) and (why := rule_zones_problem(rule, after)):
                    raise StreamrecError(f"camera {cam.name!r}: these zones would leave {why} (change the rule "
                                         "in the config first)")

    def camera_health(self, name: str) -> dict[str, Any]:
        """*hook*: one camera's capture, label and model stats, as ``/healthz`` lists them."""
        raise NotImplementedError

    def status_message(self, name: str) -> dict[str, Any]:
        """*hook*: one camera's status message for the page."""
        raise NotImplementedError

    async def previews(self, width: int, last: dict[str, float], period: float) -> dict[str, tuple[float, bytes]]:
        """*hook*: each camera's frame newer than ``last[name]``, as ``(ts, jpeg)``."""
        raise NotImplementedError

    def adding(self) -> list[str]:
        """*hook*: cameras being added at run time."""
        return []

    def add_camera(self, cam: CameraConfig) -> Any:
        """*hook*: add a camera at run time (``POST /api/cameras``)."""
        raise NotImplementedError

    def remove_camera(self, name: str) -> bool:
        """*hook*: remove a camera at run time (``DELETE /api/cameras/NAME``)."""
        raise NotImplementedError

    def batching(self) -> dict[str, Any]:
        """*hook*: batch counts and sizes."""
        return {"batches": 0, "mean_batch": 0.0, "max_batch": 0}

    def camera_problems(self, name: str, now: float) -> list[str]:
        """*hook*: why a camera's labels are not healthy (stalled while frames arrive, non-finite scores)."""
        return []

    def extra_health(self) -> dict[str, Any]:
        """*hook*: more ``/healthz`` fields; a ``"status"`` here replaces the cameras' summary."""
        return {}

    def start_work(self) -> None:
        """*hook*: start the threads that capture and classify (once the server listens)."""

    def stop_work(self, deadline: Deadline) -> None:
        """*hook*: stop and join them, release the cameras (from :meth:`close`), within ``deadline``."""

    async def refresh(self) -> None:
        """*hook*: fetch what the status messages read (once a second, before they are sent)."""

    def serving_line(self) -> str:
        """*hook*: what is served, for the log line with the page's address."""
        return f"{len(self.camera_names())} cameras"

    @property
    def meaningless(self) -> bool:
        """*hook*: whether a model serves random weights."""
        return False

    # -- shared -------------------------------------------------------------------
    def build_server(self) -> None:
        """The web server with the routes both apps serve."""
        self.metrics = self.metrics or Metrics(self.hub, self.metric_rows, self.history.stats, self.supervisor.stats,
                                               lambda: self.events.stats() if self.events is not None else None)
        routes = {"/": Route("text/html; charset=utf-8", page_html),
                  "/healthz": json_route(self.health, lambda: {"status": self.health()["status"]}),
                  "/favicon.ico": Route("image/svg+xml", favicon, favicon),  # public: browsers ask without the token
                  "/metrics": Route(Metrics.CONTENT_TYPE, self.metrics.render),
                  # the websocket's JSON Schema: public, it holds no data
                  "/api/schema": json_route(message_schema, message_schema)}
        cameras = cameras_api(listing=lambda: {"cameras": self.health()["cameras"], "adding": self.adding()},
                              add=self.add_camera, remove=self.remove_camera, status=self.status_message,
                              set_zones=getattr(self, "set_zones", None), config_file=lambda: self.config_file)
        api = {"/api/history": history_api(self.history), "/api/cameras": cameras}
        if self.events is not None:
            api["/api/events"] = events_api(self.events)
        self.server = WebServer(self.hub, host=self.config.host, port=self.config.port, routes=routes,
                                token=self.config.token, api=api, allowed_hosts=self.config.allowed_hosts,
                                limits=Limits.of(self.config))

    def start_events(self, classes: list[str], *, frame_of=lambda camera: None, clips=None) -> None:
        """The rules, the events table, clips and notifications (before :meth:`build_server`);
        ``clips``: see :class:`~streamrec.events.manager.EventManager`."""
        self.events = EventManager(rules=self.config.rules, notify=self.config.notify, recording=self.config.recording,
                                   db=self.config.db or default_db(), classes=classes, supervisor=self.supervisor,
                                   publish=self.publish_event, frame_of=frame_of, clips=clips)

    def publish_event(self, msg: dict[str, Any]) -> None:
        """An event opened or closed: to every page (each change its own key: none replaces another)."""
        self.hub.publish_threadsafe(f"event:{msg['id']}:{msg['state']}", json.dumps(msg, allow_nan=False))

    def metric_rows(self) -> list[tuple[str, dict[str, Any], Any]]:
        """*hook*: ``(name, capture stats, label stats)`` per camera for ``/metrics``."""
        return []

    def present(self, read: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``read(name)`` of each camera still there when it is read: one removed, or restarting
        with new zones, meanwhile (in a thread of the camera API) is left out, not a KeyError."""
        out = {}
        for name in self.camera_names():
            try:
                out[name] = read(name)
            except KeyError:
                if name in self.camera_names():  # a bug in ``read``, not a camera gone: said, not hidden
                    raise
        return out

    def health(self) -> dict[str, Any]:
        cams = self.present(self.camera_health)
        first = next(iter(cams.values()), {})
        states = {c.get("state") for c in cams.values()}
        out = {
            "status": "ok" if states == {"running"} else ",".join(sorted(map(str, states))) or "no cameras",
            "cameras": cams,
            # single-camera summary (the first camera), as the page and scripts read it
            "source": {k: first.get(k) for k in SUMMARY_KEYS},
            "capture_fps": first.get("capture_fps", 0.0),
            "inference_rate": first.get("inference_rate", 0.0),
            "dropped": first.get("dropped", 0),
            "skipped_windows": first.get("skipped_windows", 0),
            "predictions": first.get("predictions", 0),
            "model": first.get("model"),
            "weights": first.get("weights"),
            "device": first.get("device"),
            "backend": first.get("backend"),
            "meaningless": self.meaningless,
            "warning": MEANINGLESS if self.meaningless else None,
            "adding": self.adding(),
            "clients": len(self.hub.clients),
            "history": self.history.stats(),
            "batching": self.batching(),
            "events": self.events.stats() if self.events is not None else None,
            "threads": sorted(t.name for t in threading.enumerate()),
            "uptime_s": round(time.time() - self.started, 1),
            "admin_api": bool(self.config.token),  # the camera and zones API answers (this full view needs the token)
            "zones_api": bool(self.config.token) and hasattr(self, "set_zones"),  # zones changed at run time (not a cluster)
        }
        out.update(self.extra_health())
        now = time.time()
        reasons = self.supervisor.reasons() + [f"camera {n}: {p}" for n in cams for p in self.camera_problems(n, now)]
        reasons += self.events.problems() if self.events is not None else []
        reasons += [why] if (why := self.history.db.file_problem()) else []
        if reasons and not str(out["status"]).startswith("error"):
            out["status"] = "degraded"
        return {**out, "reasons": reasons, "supervised": self.supervisor.stats()}

    def deliver(self, items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
        """Count and record one batch's prediction messages, ``(stream key, message)`` pairs (under
        :attr:`lock`), and hand them to the browsers at once; the ``(stream key, JSON text)`` pairs."""
        out = []
        for key, msg in items:
            if self.metrics is not None:
                self.metrics.observe_prediction(msg)
            tracker = self.trackers.get(key)
            if tracker is None:
                tracker = self.trackers[key] = self.history.tracker(*split_key(key))
            tracker.update(msg["label"], msg["score"], msg["window"]["end_ts"])
            out.append((key, json.dumps(msg, allow_nan=False)))
            if self.events is not None:
                self.events.observe(key, msg)
        self.hub.publish_many_threadsafe([(f"prediction:{key}", text) for key, text in out])
        return out

    def forget_streams(self, name: str, keep: Iterable[str | None] = ()) -> threading.Event | None:
        """Camera ``name``'s labelled streams end (call under :attr:`lock`): their segments close,
        their metrics and last predictions go, their open events close in the events thread but for
        the streams in ``keep`` (see :meth:`EventManager.forget`; the returned event is set once
        they did; ``None`` without rules)."""
        if self.metrics is not None:
            self.metrics.forget(name)
        now = time.time()
        for key in [k for k in self.trackers if split_key(k)[0] == name]:
            self.trackers.pop(key).close(now)
            self.hub.forget_threadsafe(f":{key}")
        self.hub.forget_threadsafe(f":{name}")
        return self.events.forget(name, keep) if self.events is not None else None

    def announce_removed(self, name: str) -> threading.Event | None:
        """A camera is gone (call under :attr:`lock`): :meth:`forget_streams`, and the page is told;
        nothing of it is published after this."""
        closed = self.forget_streams(name)
        # a slot per camera: a second removal must not replace the first one's unsent notice
        self.hub.publish_threadsafe(f"removed:{name}", json.dumps({"type": "removed", "camera": name}))
        return closed

    def end_segment_if_down(self, name: str, status: dict[str, Any]) -> None:
        """A camera that is not running (reconnecting, ended, stopped) ends its open segment at
        its last label: the history never counts an outage as activity."""
        if (status.get("source") or {}).get("state") not in (None, "running"):
            with self.lock:
                for key, tracker in list(self.trackers.items()):
                    if split_key(key)[0] == name:
                        tracker.interrupt()

    async def _status_task(self) -> None:
        while True:
            try:
                await self.refresh()
                for name, status in self.present(self.status_message).items():
                    self.end_segment_if_down(name, status)
                    self.hub.publish(f"status:{name}", json.dumps(status, allow_nan=False))
            except Exception as exc:  # noqa: BLE001 - the next second tries again; the page keeps the last status
                self.supervisor.failed("status", exc)
            await asyncio.sleep(1.0)

    async def _preview_task(self) -> None:
        """The cameras' newest frames, at most ``display_fps`` each, while a browser is connected."""
        period = 1.0 / self.config.display_fps
        last: dict[str, float] = {}
        async for _ in watched_ticks(self.hub, period):
            width = preview_width(self.config, len(self.camera_names()))  # cameras come and go
            try:
                frames = await self.previews(width, dict(last), period)
            except Exception as exc:  # noqa: BLE001 - no frames this time
                await asyncio.sleep(self.supervisor.failed("preview", exc))
                continue
            names = set(self.camera_names())
            for name, (ts, jpeg) in frames.items():
                last[name] = ts
                if name in names:  # not removed meanwhile: no frame after its removal notice
                    self.hub.publish(f"frame:{name}", frame_message(name, jpeg))

    async def run(self, seconds: float | None = None) -> None:
        """Serve until :meth:`request_stop` (or ``seconds``), then :meth:`close`."""
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
                page = "/?token=***" if self.config.token else "/"  # the page needs the token; the log shows it masked
                logger.info("serving %s at http://%s:%d%s (Ctrl-C to stop)", self.serving_line(), self.config.host,
                            self.server.port, page)
                tasks.append(asyncio.create_task(self._preview_task()))
            self.start_work()
            tasks.append(asyncio.create_task(self._status_task()))
            try:
                await asyncio.wait_for(self._stopped.wait(), seconds)
            except asyncio.TimeoutError:  # seconds ran out
                pass
        finally:
            self.stop_event.set()
            deadline = Deadline(SHUTDOWN_S)  # from here to the last flush: one budget
            for t in tasks:
                t.cancel()
            if self.server is not None:
                await self.server.close()
            await self._loop.run_in_executor(None, self.close, deadline)

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish (safe from any thread, idempotent)."""
        self.stop_event.set()
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    def close(self, deadline: Deadline | None = None) -> None:
        """Stop the work, close every camera's open segment, the history and the events, all within
        ``deadline`` (``SHUTDOWN_S`` from now by default); idempotent."""
        deadline = deadline or Deadline(SHUTDOWN_S)
        with self.lock:
            if self._closed:
                return
            self._closed = True
        self.stop_event.set()
        try:
            self.stop_work(deadline)
        finally:
            with self.lock:  # a thread still in a call could publish meanwhile
                now = time.time()
                for tracker in self.trackers.values():
                    tracker.close(now)
                self.history.close(deadline.left(cap=5.0))
                if self.events is not None:
                    self.events.close(deadline.left())
        logger.info("stopped")


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
