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
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TextIO

from streamrec.cluster.clips import ClusterClips
from streamrec.cluster.runner import ClusterRunner
from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError
from streamrec.live.camera import JOIN_TIMEOUT_S
from streamrec.live.history import HistoryStore
from streamrec.live.messages import status_message
from streamrec.serve.core import AppCore
from streamrec.supervision import Deadline
from streamrec.zones import stream_key

logger = logging.getLogger(__name__)

# what the page reads of a camera's capture before its actor has answered once (or after it stopped answering)
NO_STATS = {"state": "starting", "error": None, "capture_fps": 0.0, "dropped": 0, "frames": 0}


class ClusterApp(AppCore):
    """The driver of a cluster run. ``await run()`` serves until :meth:`request_stop` (or ``seconds``).

    ``ray.init`` must have been called. ``lines`` gets every prediction as a JSON line;
    ``dashboard=False`` runs without the web server (JSON lines and history only)."""

    def __init__(self, config: ServeConfig, *, db: str, replicas: int = 1, lines: TextIO | None = None,
                 dashboard: bool = True) -> None:
        super().__init__(config, HistoryStore(db, retain_days=config.history_days))
        self.lines = lines
        # "~" in recording.dir is the driver's home on every node: one path for the files the driver serves
        self.recording = replace(config.recording, dir=str(config.recording.folder))
        try:
            self.runner = ClusterRunner(config, self._publish, inference_replicas=replicas,
                                        recording=self.recording if config.rules and self.recording.enabled else None)
        except BaseException:
            self.history.close()
            raise
        self.source_stats: dict[str, dict[str, Any]] = {}  # each camera's capture stats, refreshed once a second
        self.error: str | None = None  # the driver's last failure, until a round succeeds again
        self.errors = 0
        try:  # rules and notifications on the driver; clips written on the camera nodes (cluster.clips)
            self.start_events(sorted({c for g in self.runner.groups.values() for c in g.classes}), clips=self._clips)
        except BaseException:
            self.runner.close()
            self.history.close()
            raise
        if dashboard:
            self.build_server()
        self._thread = threading.Thread(target=self._drive, name="cluster-driver", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cluster-poll")  # status, previews

    def _clips(self, on_done, on_thumbnail) -> ClusterClips:
        return ClusterClips(self.runner, self.recording, supervisor=self.supervisor, on_done=on_done,
                            on_thumbnail=on_thumbnail)

    # -- the driver thread ------------------------------------------------------
    def _drive(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.runner.step()
                self.error = None
            except Exception as exc:  # noqa: BLE001 - an inference actor lost with its node: say so, retry
                if self.stop_event.is_set():
                    break
                self.errors += 1
                text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                if text != self.error:
                    logger.error("cluster round failed: %s", text)
                self.error = text
                self.stop_event.wait(1.0)

    def _publish(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """One batch's messages (in the driver thread): history, the browsers, then JSON lines.
        Under the lock :meth:`remove_camera` takes: a removed camera's last label never follows
        its ``removed`` message."""
        with self.lock:
            for _, text in self.deliver([(key, msg) for key, msg in items if self.runner.stream(key) is not None]):
                self._line(text)
            self._line(None)

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
        if self.stop_event.is_set():
            raise StreamrecError("the server is shutting down")
        self.check_streams(cam)
        self.runner.add_camera(cam, check=lambda: self.check_streams(cam, pending=self.runner.adding))
        if self.events is not None:  # its streams are announced (Home Assistant)
            self.events.announce([stream_key(cam.name, zone) for zone in cam.streams()])
        logger.info("camera %s added", cam.name)

    def remove_camera(self, name: str) -> bool:
        with self.lock:
            cfg = self.runner.config_of(name)
            actor = self.runner.detach_camera(name)
            if actor is None:
                return False
            self.source_stats.pop(name, None)
            closed = self.announce_removed(name)
        # its open events close (their clips end, their thumbnails are written) before its actor stops
        if closed is not None and not closed.wait(JOIN_TIMEOUT_S * 4):
            logger.warning("camera %s: its open events were not closed in time; their clips end now", name)
        self.runner.stop_actor(name, actor)
        if self.events is not None:  # its sensors go
            self.events.announce([], gone=[stream_key(name, zone) for zone in (cfg.streams() if cfg else (None,))])
        logger.info("camera %s removed", name)
        return True

    # -- state (AppCore's hooks) ------------------------------------------------
    def camera_names(self) -> list[str]:
        return list(self.runner.cameras)

    def stream_keys(self) -> list[str]:
        return self.runner.stream_keys()

    def stream_labels(self, name: str) -> dict[str | None, Any]:
        """Camera ``name``'s label counts by zone (``None``: the whole frame); empty once removed."""
        cam = self.runner.cameras.get(name)
        return dict(cam.streams) if cam is not None else {}

    def labels_of(self, name: str) -> Any:
        """The camera's own label counts: its whole frame's, or its first zone's (None once removed)."""
        return next(iter(self.stream_labels(name).values()), None)

    def adding(self) -> list[str]:
        return sorted(self.runner.adding)

    @property
    def meaningless(self) -> bool:
        return self.runner.meaningless

    def camera_source(self, name: str) -> dict[str, Any]:
        return {**NO_STATS, **self.source_stats.get(name, {})}

    def model_of(self, name: str) -> dict[str, Any]:
        group = self.runner.group_of(name)
        if group is None:  # removed meanwhile
            return {"model": None, "device": None, "backend": None, "meaningless": False}
        return {"model": group.name, "device": group.device, "backend": group.backend, "meaningless": group.meaningless}

    def camera_health(self, name: str) -> dict[str, Any]:
        labels, cfg = self.labels_of(name), self.runner.config_of(name)
        zones = {z: s.stats() for z, s in self.stream_labels(name).items() if z is not None}
        return {**self.camera_source(name), **(labels.stats() if labels else {}), **self.model_of(name),
                "whole_frame": cfg.whole_frame if cfg else True, "zones": zones}

    def camera_problems(self, name: str, now: float) -> list[str]:
        labels, source = self.labels_of(name), self.camera_source(name)
        if labels is None:
            return []
        arriving = source.get("state") == "running" and (source.get("capture_fps") or 0) > 0
        return labels.problems(now, frames_arriving=arriving, started=self.started)

    def metric_rows(self) -> list[tuple[str, dict[str, Any], Any]]:
        return [(n, self.camera_source(n), self.stream_labels(n)) for n in self.camera_names()]

    def extra_health(self) -> dict[str, Any]:
        cams = [self.camera_source(n) for n in self.camera_names()]
        out: dict[str, Any] = {"nodes": sorted({c["node"] for c in cams if c.get("node")}), "errors": self.errors}
        if self.error:
            out["status"] = f"error: {self.error}"
        return out

    def batching(self) -> dict[str, Any]:
        sizes = list(self.runner.batch_sizes)
        return {"batches": self.runner.rounds, "mean_batch": round(sum(sizes) / len(sizes), 3) if sizes else 0.0,
                "max_batch": max(sizes, default=0)}

    def status_message(self, name: str) -> dict[str, Any]:
        source, model = self.camera_source(name), self.model_of(name)
        labels, cfg = self.labels_of(name), self.runner.config_of(name)
        return status_message(camera=name, source={k: v for k, v in source.items() if k != "node"},
                              inference=labels.stats() if labels else {}, model=model["model"],
                              device=model["device"], backend=model["backend"], meaningless=model["meaningless"],
                              zones=cfg.zones if cfg else (), whole_frame=cfg.whole_frame if cfg else True,
                              node=source.get("node"))

    async def refresh(self) -> None:
        self.source_stats = await asyncio.get_running_loop().run_in_executor(self._pool, self.runner.stats, 2.0)

    async def previews(self, width: int, last: dict[str, float], period: float) -> dict[str, tuple[float, bytes]]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.runner.previews, width, last,
                                                                max(period, 0.5))

    def serving_line(self) -> str:
        return f"the dashboard of {len(self.runner.cameras)} cluster cameras"

    # -- lifecycle --------------------------------------------------------------
    def start_work(self) -> None:
        if self.events is not None:
            self.events.start(self.runner.stream_keys())  # every labelled stream's key
        self._thread.start()

    def stop_work(self, deadline: Deadline) -> None:
        """Stop the driver thread and the cluster's actors."""
        if self._thread.is_alive():
            self._thread.join(deadline.left(cap=JOIN_TIMEOUT_S))
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.events is not None:  # open events close while their actors still write the clips and thumbnails
            self.events.finish(deadline.left(cap=deadline.left() / 2))
        self.runner.close()
        if self._thread.is_alive():
            logger.warning("the cluster driver thread was still in a call at exit")

