"""``streamrec serve``: cameras, batched inference workers, history and the web server.

One capture thread per camera; one inference worker per loaded model, batching the
newest windows of all its cameras' labelled streams (the whole frame and each zone);
smoothing and history per stream. Cameras can be added and removed at run time
(``POST``/``DELETE /api/cameras``, token required), and their zones replaced
(:meth:`LiveApp.set_zones`).

Start-up fails fast with a :class:`StreamrecError` (exit 2) on a bad source, bad weights
or a busy port. Ctrl-C and SIGTERM stop everything within ``SHUTDOWN_S`` (15 s) whatever
hangs: the stop event is set, the server closes, threads are joined with what is left of that
budget, cameras are released and the open history segments are written (:meth:`AppCore.close`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Sequence

import cv2

from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import Busy, SourceError, StreamrecError
from streamrec.live.camera import JOIN_TIMEOUT_S, Camera, Stream, adding_camera
from streamrec.live.capture import CaptureState
from streamrec.live.history import HistoryStore, default_db
from streamrec.live.messages import status_message
from streamrec.live.sources import SourceSpec, open_source
from streamrec.catalog import DEFAULT_MODEL, MODEL_NAMES
from streamrec.runtime import autopick, prepared
from streamrec.runtime.classifier import Classifier
from streamrec.serve.core import AppCore, check_port_free
from streamrec.serve.preview import encode_preview
from streamrec.serve.worker import InferenceWorker
from streamrec.supervision import Deadline, Supervisor
from streamrec.validate import check_weights_arg
from streamrec.zones import ZoneConfig

logger = logging.getLogger(__name__)


def being_changed(name: str) -> Busy:
    """The error of a change to camera ``name`` asked for while its zones are being changed."""
    return Busy(f"camera {name!r}: its zones are being changed; try again in a few seconds")


class Taken:
    """The camera names in use: any of ``groups`` (running, restarting) holds them."""

    def __init__(self, *groups: Any) -> None:
        self.groups = groups

    def __contains__(self, name: object) -> bool:
        return any(name in g for g in self.groups)


class LiveApp(AppCore):
    """All cameras, end to end, in this process. ``await run()`` serves until :meth:`request_stop`."""

    def __init__(self, config: ServeConfig, *, listening: bool = False) -> None:
        """``listening``: the caller holds the listening socket already and hands it to
        ``self.server.sock`` before :meth:`run` (see :mod:`streamrec.serve.starting`)."""
        if not listening:
            check_port_free(config.host, config.port)  # before the slow model load
        supervisor = Supervisor()
        super().__init__(config, HistoryStore(config.db or default_db(), retain_days=config.history_days,
                                              supervisor=supervisor), supervisor)
        self.wake = threading.Condition()
        self.cameras: dict[str, Camera] = {}
        self.adding_names: set[str] = set()  # cameras being added at run time (opening the source, loading a model)
        self.restarting: set[str] = set()  # cameras restarting with new zones: their names stay taken
        self.removing: set[str] = set()  # cameras being removed: their names stay taken until all of them went
        self._load_lock = threading.Lock()  # one model load at a time: two cameras of a new model load it once
        self.workers: dict[tuple, InferenceWorker] = {}
        self.classifiers: dict[tuple, Classifier] = {}
        # OpenCV's own thread pool would only wake on the cores inference is using and stall the
        # model's parallel sections; its per-frame work here is small and runs in the calling thread
        cv2.setNumThreads(1)
        # one named thread encodes the previews, one at a time (the task awaits each)
        self._preview_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")
        try:
            for cam in config.all_cameras():
                self._add_camera(cam, start=False)
            self.start_events(sorted({c for clf in self.classifiers.values() for c in clf.loaded.classes}),
                              frame_of=self.frame_of)
        except BaseException:
            self.close()
            raise
        for name, cam in self.cameras.items():
            cam.capture.packet_ring = self.events.packet_ring(name)  # the clips' compressed packets
        self.build_server()

    # -- cameras ----------------------------------------------------------------
    def _classifier(self, cam: CameraConfig) -> tuple[tuple, Classifier]:
        key = (cam.model, str(cam.weights), self.config.device, self.config.backend)
        if key not in self.classifiers:
            self._say_loading(cam)
            loaded = prepared.load(cam.model, str(cam.weights or "DEFAULT"), device=self.config.device)
            sharing = sum(1 for c in self.config.all_cameras() if self.config.resolve(c).model == cam.model)
            self.classifiers[key] = Classifier(loaded, device=self.config.device, backend=self.config.backend,
                                               batch_hint=sharing, threads=self.config.threads)
        return key, self.classifiers[key]

    def _say_loading(self, cam: CameraConfig) -> None:
        """One line before a model loads (the page's address follows once it is ready); none for a
        name that is no model's (the load refuses it, in the camera API's answer)."""
        if cam.model is not None and cam.model not in MODEL_NAMES:
            return
        weights = str(cam.weights or "DEFAULT")
        known = cam.model or (DEFAULT_MODEL if weights.upper() in ("DEFAULT", "NONE") else None)
        name = known or f"of {weights}"
        first = self.config.backend == "auto" and not (known and autopick.measured(known))
        logger.info("loading model %s%s…", name,
                    " (first start: timing backends, once per machine and model)" if first else "")

    def _add_camera(self, cam: CameraConfig, *, start: bool, restart: bool = False) -> Camera:
        """Open the camera's source and (when no camera uses its model yet) load the model, then
        start it when ``start``. At run time this runs in a thread of the camera API: the event
        loop keeps serving every other camera meanwhile; ``health()["adding"]`` names it. ``restart``:
        the camera of :meth:`set_zones`, whose name it holds meanwhile."""
        cam = self.config.resolve(cam)
        check_weights_arg(str(cam.weights or "DEFAULT"), "weights")
        self.check_streams(cam)
        taken = self.cameras if restart else Taken(self.cameras, self.restarting, self.removing)
        with adding_camera(self.lock, taken, self.adding_names, cam.name,
                           check=lambda: self.check_streams(cam, pending=self.adding_names)):
            first = self._first_source(cam, restart=restart)
            try:
                with self._load_lock:
                    key, clf = self._classifier(cam)
                camera = Camera(cam, clf, self.config.smoothing, first=first, wake=self.wake,
                                supervisor=self.supervisor)
                if self.events is not None:  # a camera added at run time records from the start
                    camera.capture.packet_ring = self.events.packet_ring(cam.name)
            except BaseException:
                if first is not None:
                    first.close()
                raise
            with self.lock:
                if start and self.stop_event.is_set():
                    camera.close()
                    raise StreamrecError("the server is shutting down")
                self.cameras[cam.name] = camera
                worker = self.workers.get(key)
                if worker is None:
                    worker = InferenceWorker(clf, self._publish_predictions, stop_event=self.stop_event,
                                             wake=self.wake, batch_wait_s=self.config.batch_wait_ms / 1e3,
                                             stride_s=self.config.stride_ms / 1e3, name=f"inference-{len(self.workers)}",
                                             supervisor=self.supervisor)
                    self.workers[key] = worker
                    if start:
                        worker.start()
                worker.add(camera)
                if start:
                    camera.start()
        if start and self.events is not None:  # at run time: its streams are announced (Home Assistant)
            self.events.announce([s.name for s in camera.streams.values()])
        return camera

    @staticmethod
    def _first_source(cam: CameraConfig, *, restart: bool):
        """The camera's source, opened: a missing file, not a video or an unreachable URL fails
        fast, but for a camera restarted with new zones, whose network source the capture opens
        again and again until it answers (``None``): the camera stays, reconnecting."""
        spec = SourceSpec.of_camera(cam)
        try:
            return open_source(spec)
        except SourceError as exc:
            if not (restart and spec.is_live):
                raise
            logger.warning("camera %s: %s; it reconnects with its new zones", cam.name, exc)
            return None

    def add_camera(self, cam: CameraConfig) -> Camera:
        return self._add_camera(cam, start=True)

    def frame_of(self, name: str):
        """The camera's newest RGB frame (an event's thumbnail), or None."""
        cam = self.cameras.get(name)
        return cam.capture.latest_rgb if cam is not None else None

    def remove_camera(self, name: str) -> bool:
        with self.lock:  # the lock _publish_predictions takes: no label of it follows the removal notice
            if name in self.restarting:
                raise being_changed(name)
            cam = self.cameras.pop(name, None)
            if cam is None:
                return False
            self.removing.add(name)  # a camera added under its name meanwhile would lose its ring and thread record
            for w in self.workers.values():
                w.remove(name)
            self.announce_removed(name)
        try:
            cam.close()
            for thread in (f"capture-{name}", f"encode-{name}"):  # gone with the camera, from /healthz too
                self.supervisor.forget(thread)
            if self.events is not None:
                self.events.announce(self.stream_keys(), gone=[s.name for s in cam.streams.values()])
                self.events.drop_ring(name)
        finally:
            with self.lock:
                self.removing.discard(name)
        return True

    def set_zones(self, name: str, zones: Sequence[ZoneConfig | dict[str, Any]], whole_frame: bool) -> CameraConfig:
        """Replace camera ``name``'s zones (and whether its whole frame is labelled too): its capture
        and streams restart with the new :class:`CameraConfig` (same source), which is returned.
        Bad zones, or an unknown camera, raise a one-line :class:`StreamrecError`."""
        with self.lock:
            old = self.cameras.get(name)
            busy, adding = name in self.restarting, old is None and name in self.adding_names
        if busy:
            raise being_changed(name)
        if adding:  # its source is opening, its model loading
            raise Busy(f"camera {name!r}: it is being added; try again in a few seconds")
        if old is None:
            raise StreamrecError(f"camera {name!r}: no such camera")
        if not isinstance(whole_frame, bool):
            raise StreamrecError(f"camera {name!r}: whole_frame: expected true or false, got {whole_frame!r}")
        cfg = replace(old.cfg, zones=tuple(zones), whole_frame=whole_frame)  # validated: one line on bad input
        self.check_streams(cfg, replacing=name)
        with self.lock:
            if self.cameras.get(name) is not old:  # removed, or its zones changed, by another request meanwhile
                raise Busy(f"camera {name!r}: changed meanwhile; try again")
            del self.cameras[name]
            self.restarting.add(name)  # no camera added meanwhile takes its name
            for w in self.workers.values():
                w.remove(name)
            # a zone that stays as it was keeps its open event (unless the restart lasts as long as an outage)
            self.forget_streams(name, keep=[z.name for z in cfg.zones if z in old.cfg.zones] +
                                ([None] if old.cfg.whole_frame and cfg.whole_frame else []))
        try:
            self._restart(name, old, cfg)
        finally:
            with self.lock:
                self.restarting.discard(name)
        if self.events is not None:  # the zones it no longer has: their sensors go
            self.events.announce(self.stream_keys(), gone=[s.name for s in old.streams.values()])
        logger.info("camera %s: zones %s%s", name, ", ".join(z.name for z in cfg.zones) or "none",
                    " and the whole frame" if cfg.whole_frame else "")
        return cfg

    def _restart(self, name: str, old: Camera, cfg: CameraConfig) -> None:
        """Camera ``name`` (``old``, stopped here) again with ``cfg``; as it was when that fails."""
        old.close()
        try:
            self._add_camera(cfg, start=True, restart=True)
        except StreamrecError as exc:
            logger.warning("camera %s: could not restart with its new zones (%s); restarting it as it was", name, exc)
            try:
                self._add_camera(old.cfg, start=True, restart=True)
            except StreamrecError:
                with self.lock:
                    self.announce_removed(name)
            raise

    def _publish_predictions(self, items: list[tuple[Stream, dict[str, Any]]]) -> None:
        """One batch's messages: metrics, history, then to the browsers in one hand-off to the loop.
        A camera removed (or restarted) while its window was in the model is left out."""
        with self.lock:
            self.deliver([(s.name, msg) for s, msg in items if self.cameras.get(s.camera.name) is s.camera])

    # -- state (AppCore's hooks) ------------------------------------------------
    def camera_names(self) -> list[str]:
        return list(self.cameras)

    def adding(self) -> list[str]:
        """Cameras being added, or restarted with new zones: their names are taken."""
        with self.lock:
            return sorted(self.adding_names | self.restarting)

    @property
    def meaningless(self) -> bool:
        """Some camera served now has random weights (a model loaded for a camera since removed counts no more)."""
        return any(cam.classifier.loaded.meaningless for cam in list(self.cameras.values()))

    def camera_health(self, name: str) -> dict[str, Any]:
        cam = self.cameras[name]
        clf = cam.classifier
        return {**cam.capture.stats(), **cam.stats(), "model": clf.loaded.name, "weights": clf.loaded.weights,
                "device": str(clf.device), "backend": clf.backend, "meaningless": clf.loaded.meaningless,
                "sports_only": cam.subset is not None, "whole_frame": cam.cfg.whole_frame, "zones": cam.zone_stats()}

    def health(self) -> dict[str, Any]:
        out = super().health()
        if self.classifiers:  # the first model's, also before any camera
            first = next(iter(self.classifiers.values()))
            out.update(weights=first.loaded.weights, device=str(first.device))
        return out

    def camera_problems(self, name: str, now: float) -> list[str]:
        cam = self.cameras.get(name)
        if cam is None:
            return []
        arriving = cam.capture.state == CaptureState.RUNNING and cam.capture.fps() > 0
        return cam.problems(now, frames_arriving=arriving, started=cam.started)

    def metric_rows(self) -> list[tuple[str, dict[str, Any], Any]]:
        return [(n, c.capture.stats(), dict(c.streams)) for n, c in list(self.cameras.items())]

    def batching(self) -> dict[str, Any]:
        sizes = [b for w in list(self.workers.values()) for b in w.batch_sizes]
        return {"batches": sum(w.batches for w in list(self.workers.values())),
                "mean_batch": round(sum(sizes) / len(sizes), 3) if sizes else 0.0,
                "max_batch": max(sizes, default=0)}

    def status_message(self, name: str) -> dict[str, Any]:
        cam = self.cameras[name]
        return status_message(camera=cam.name, source=cam.capture.stats(), inference=cam.stats(),
                              model=cam.classifier.loaded.name, device=str(cam.classifier.device),
                              backend=cam.classifier.backend, meaningless=cam.classifier.loaded.meaningless,
                              zones=cam.cfg.zones, whole_frame=cam.cfg.whole_frame)

    async def previews(self, width: int, last: dict[str, float], period: float) -> dict[str, tuple[float, bytes]]:
        loop = asyncio.get_running_loop()
        out = {}
        for name, cam in list(self.cameras.items()):
            rgb, ts = cam.capture.latest_rgb, cam.capture.latest_ts
            if rgb is None or ts == last.get(name):
                continue
            out[name] = (ts, await loop.run_in_executor(self._preview_pool, encode_preview, rgb, width))
        return out

    def serving_line(self) -> str:
        return ", ".join(f"{n} ({c.spec.display_name})" for n, c in self.cameras.items())

    # -- lifecycle --------------------------------------------------------------
    def stream_keys(self) -> list[str]:
        """Every labelled stream's key: each camera, each of its zones."""
        return [s.name for cam in list(self.cameras.values()) for s in cam.streams.values()]

    def start_work(self) -> None:
        if self.events is not None:
            self.events.start(self.stream_keys())
        with self.lock:
            for cam in self.cameras.values():
                cam.start()
            for w in self.workers.values():
                if w.ident is None:  # a worker of a camera added before the work started runs already
                    w.start()

    def stop_work(self, deadline: Deadline) -> None:
        self._preview_pool.shutdown(wait=False, cancel_futures=True)
        for cam in list(self.cameras.values()):
            cam.stop_event.set()
        with self.wake:
            self.wake.notify_all()
        for w in self.workers.values():
            if w.is_alive():
                w.join(deadline.left(cap=JOIN_TIMEOUT_S))
        for cam in list(self.cameras.values()):
            cam.close(deadline.left(cap=JOIN_TIMEOUT_S))
        alive = [t.name for t in threading.enumerate() if t.name.startswith(("capture-", "inference-")) and t.is_alive()]
        if alive:
            logger.warning("threads still running at exit: %s", ", ".join(alive))
