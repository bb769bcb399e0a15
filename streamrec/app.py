"""``streamrec serve``: wires source, capture, inference and the web server together.

Start-up fails fast with a :class:`StreamrecError` (exit 2) on a bad source, bad weights
or a busy port. Ctrl-C and SIGTERM stop everything within about 2 s: the stop event is
set, the server closes, threads are joined with a timeout and the camera is released.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from typing import Any

import cv2

from .capture import Backoff, CaptureThread
from .config import ServeConfig
from .engine import Classifier
from .errors import StreamrecError
from .live import InferenceLoop
from .metrics import Metrics
from .models import load_model
from .preprocess import FramePreprocessor
from .ring import FrameRing, capacity_for
from .server import Hub, Route, WebServer, json_route, page_html
from .smoothing import LabelSmoother
from .sources import SourceSpec, open_source

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 1.5
MEANINGLESS = "random weights (--weights none): labels are meaningless, for pipeline testing only"


class LiveApp:
    """One camera, end to end. ``await run()`` serves until :meth:`request_stop`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.hub = Hub()
        self.started = time.time()
        self.state = "loading"
        spec = SourceSpec.parse(
            config.source,
            rtsp_transport=config.rtsp_transport,
            open_timeout_s=config.open_timeout,
            read_timeout_s=config.stall_timeout,
        )
        self.source_spec = spec
        check_port_free(config.host, config.port)  # before the slow model load
        first = open_source(spec)  # fail fast: missing file, not a video, unreachable URL
        try:
            self.loaded = load_model(config.model, weights=config.weights)
            self.classifier = Classifier(
                self.loaded, device=config.device, backend=config.backend, threads=config.threads
            )
        except BaseException:
            first.close()
            raise
        model_spec = self.loaded.spec
        pre = FramePreprocessor(model_spec)
        self.ring = FrameRing(
            capacity_for(model_spec.frames, model_spec.fps, source_fps=max(first.fps or 30.0, 30.0)),
            pre.out_shape,
        )
        self.capture = CaptureThread(
            spec, self.ring, pre, stop=self.stop, loop=config.loop, first=first,
            backoff=Backoff(), name=f"capture-{config.camera}",
        )
        self.metrics = Metrics(self)
        self.inference = InferenceLoop(
            self.ring,
            self.classifier,
            LabelSmoother(config.smoothing),
            self._publish_prediction,
            stop=self.stop,
            capture_fps=self.capture.fps,
            stride_s=config.stride_ms / 1e3,
            camera=config.camera,
            name=f"inference-{config.camera}",
        )
        routes = {
            "/": Route("text/html; charset=utf-8", page_html),
            "/healthz": json_route(self.health),
            "/metrics": Route(Metrics.CONTENT_TYPE, self.metrics.render),
        }
        self.server = WebServer(self.hub, host=config.host, port=config.port, routes=routes, token=config.token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    # -- state ------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        inf = self.inference.stats()
        return {
            "status": "ok" if self.capture.state == "running" else self.capture.state,
            "source": self.capture.stats(),
            "capture_fps": round(self.capture.fps(), 2),
            "inference_rate": inf["inference_rate"],
            "dropped": self.ring.dropped,
            "skipped_windows": inf["skipped_windows"],
            "model": self.loaded.name,
            "weights": self.loaded.weights,
            "device": str(self.classifier.device),
            "backend": self.classifier.backend,
            "meaningless": self.loaded.meaningless,
            "warning": MEANINGLESS if self.loaded.meaningless else None,
            "clients": len(self.hub.clients),
            "uptime_s": round(time.time() - self.started, 1),
            "predictions": inf["predictions"],
        }

    def status_message(self) -> dict[str, Any]:
        h = self.health()
        return {
            "type": "status",
            "camera": self.config.camera,
            "source": h["source"],
            "inference": self.inference.stats(),
            "model": h["model"],
            "device": h["device"],
            "meaningless": h["meaningless"],
            "warning": h["warning"],
        }

    def _publish_prediction(self, msg: dict[str, Any]) -> None:
        self.metrics.observe_prediction(msg)
        self.hub.publish_threadsafe("prediction", json.dumps(msg))

    # -- tasks ------------------------------------------------------------------
    async def _status_task(self) -> None:
        while True:
            self.hub.publish("status", json.dumps(self.status_message()))
            await asyncio.sleep(1.0)

    async def _preview_task(self) -> None:
        """Downscaled JPEG frames to the browsers, at most ``display_fps``."""
        period = 1.0 / self.config.display_fps
        last_ts = 0.0
        while True:
            await asyncio.sleep(period)
            rgb, ts = self.capture.latest_rgb, self.capture.latest_ts
            if rgb is None or ts == last_ts or not self.hub.clients:
                continue
            last_ts = ts
            jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_preview, rgb, self.config.display_width)
            self.hub.publish("frame", jpeg)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        try:
            await self.server.start()
        except OSError as exc:
            self._close_first_source()
            raise StreamrecError(f"--port {self.config.port}: cannot listen on {self.config.host}: {exc.strerror or exc}") from None
        what = f"serving {self.source_spec.display_name} with {self.loaded.name} on {self.classifier.device}"
        logger.info("%s at http://%s:%d/ (Ctrl-C to stop)", what, self.config.host, self.server.port)
        self.capture.start()
        self.inference.start()
        tasks = [asyncio.create_task(self._status_task()), asyncio.create_task(self._preview_task())]
        try:
            await self._stopped.wait()
        finally:
            self.stop.set()
            for t in tasks:
                t.cancel()
            await self.server.close()
            self.capture.join(JOIN_TIMEOUT_S)
            self.inference.join(JOIN_TIMEOUT_S)
            alive = [t.name for t in (self.capture, self.inference) if t.is_alive()]
            if alive:
                logger.warning("threads still running at exit: %s", ", ".join(alive))
            logger.info("stopped")

    def _close_first_source(self) -> None:
        first = getattr(self.capture, "_first", None)
        if first is not None:
            first.close()

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


def encode_preview(rgb, width: int) -> bytes:
    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    return buf.tobytes() if ok else b""
