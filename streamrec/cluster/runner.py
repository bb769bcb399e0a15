"""Beyond one machine, on Ray: capture actors near the cameras, batched inference actors (per
model) on the GPU (or big CPU) nodes, and a driver that smooths, records and publishes.

Why Ray core actors (not Ray Serve): a camera is a long-lived stateful stream, which is
what an actor is; the driver already batches the newest windows of all cameras into one
call, which is what ``@serve.batch`` would add, without Serve's HTTP proxy, FastAPI and
uvicorn stack. Everything else is the single-machine code: the same capture thread, ring
buffer, preprocessing, smoothing, message schema and history.

The command line and the dashboard are in :mod:`streamrec.cluster.app`. Run on a cluster
(``ray start --head`` on one node, ``ray start --address=HEAD:6379`` on the others)::

    streamrec cluster --config configs/gym.toml --address auto --db postgresql://...

Capture actors ask for the ``camera_node`` resource when a node offers it (start camera
nodes with ``ray start --resources='{"camera_node": 100}'``), inference actors for a GPU
when ``--device cuda``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError, install_hint
from streamrec.cluster.actors import RemoteCapture, RemoteClassifier
from streamrec.cluster.address import check_reachable, speaks_http2  # noqa: F401 - the CLI's checks, where they were
from streamrec.cluster.clips import check_shared, remove_probes
from streamrec.event_config import RecordingConfig
from streamrec.live.camera import adding_camera
from streamrec.live.labels import Labelled, StreamLabels, label_messages
from streamrec.models.kinetics import sport_indices
from streamrec.zones import stream_key

logger = logging.getLogger(__name__)

MODEL_START_S = 300.0  # an inference actor's start: scheduled, the model loaded (downloaded on a first start)
STOP_S = 10.0  # a capture actor's stop: its capture thread joined, its clips finished
ACTOR_START_S = 60.0  # a capture actor's start on its node (a worker process importing the pipeline), beyond the source's open timeout


def ray_module():
    try:
        import ray
    except ImportError:
        raise StreamrecError("cluster: ray is not installed; " + install_hint("cluster")) from None
    return ray


@dataclass
class ModelGroup:
    """One model and weights of the cluster: its inference actors and what they said of it."""

    key: tuple[str | None, str | None]  # (model, weights) as the cameras' config gives them
    actors: list[Any]
    name: str
    classes: list[str]
    meaningless: bool
    device: str
    backend: str
    spec: dict[str, Any]
    rounds: int = 0

    def next_actor(self) -> Any:
        """The inference actors take turns (``--replicas``)."""
        self.rounds += 1
        return self.actors[(self.rounds - 1) % len(self.actors)]


@dataclass
class RemoteCamera:
    """One camera of the cluster as the driver holds it: its capture actor, its model group's key,
    its sport classes' indices (``sports_only``) and its labelled streams, by zone."""

    cfg: CameraConfig
    actor: Any
    model: tuple[str | None, str | None]
    subset: list[int] | None
    streams: dict[str | None, StreamLabels]
    lost: bool = False  # its actor failed on the last call
    gaps_seen: int = 0  # its capture's interruptions the smoothers have been reset for

    def note_interruptions(self, gaps: int) -> None:
        """A reconnect (or a capture restarted) starts a new label history in every zone, as
        :meth:`~streamrec.live.camera.Camera.reset_if_reconnected` does on one machine."""
        if gaps != self.gaps_seen:
            for stream in self.streams.values():
                stream.smoother.reset()
        self.gaps_seen = gaps


class ClusterRunner:
    """The driver: polls every camera actor, batches the new windows of the cameras' labelled
    streams (whole frames and zones) of each model into that model's inference actor, smooths
    per stream and hands each round's messages to ``publish([(stream key, msg), ...])``."""

    def __init__(self, config: ServeConfig, publish: Callable[[list[tuple[str, dict[str, Any]]]], None], *,
                 inference_replicas: int = 1, clock: Callable[[], float] = time.time,
                 recording: RecordingConfig | None = None) -> None:
        ray = ray_module()
        self.ray = ray
        self.config = config
        self.publish = publish
        self.clock = clock
        self.replicas = inference_replicas
        self.recording = recording  # event clips written by the capture actors (None: no clips)
        gpu = 1 if config.device.startswith("cuda") else 0
        self._Inf = ray.remote(num_cpus=1, num_gpus=gpu)(RemoteClassifier)
        cap_opts: dict[str, Any] = {"num_cpus": 0.5, "scheduling_strategy": "SPREAD"}
        if ray.cluster_resources().get("camera_node"):
            cap_opts["resources"] = {"camera_node": 1}
        self._Cap = ray.remote(**cap_opts)(RemoteCapture)
        self._lock = threading.Lock()  # the cameras: the driver thread reads them, the camera API changes them
        self._load_lock = threading.Lock()  # one model load at a time: two new cameras of one model load it once
        self.groups: dict[tuple, ModelGroup] = {}
        self.cameras: dict[str, RemoteCamera] = {}
        self._streams: dict[str, StreamLabels] = {}  # every camera's streams, by stream key
        self.adding: set[str] = set()
        self.final_reports: list[tuple[str, dict[str, Any]]] = []  # stopped actors' last clip reports
        self.stop_event = threading.Event()
        self._closed = False
        self.rounds = 0
        self.batch_sizes: deque[int] = deque(maxlen=512)
        try:
            cams = [config.resolve(c) for c in config.all_cameras()]
            for cam in cams:
                self._group(cam)
            self._start_cameras(cams)
        except BaseException:
            self.close()
            raise

    def _group(self, cam: CameraConfig) -> ModelGroup:
        """The model group of ``cam`` (resolved), its inference actors started on first use."""
        key = (cam.model, cam.weights)
        with self._load_lock:
            if key in self.groups:
                return self.groups[key]
            model, weights = key
            actors = [self._Inf.remote(model, weights or "DEFAULT", self.config.device, self.config.backend,
                                       self.config.threads) for _ in range(self.replicas)]
            try:
                meta = self.ray.get(actors[0].meta.remote(), timeout=MODEL_START_S)
            except Exception as exc:  # noqa: BLE001 - never scheduled (no free CPU or GPU), or died starting
                meta = {"error": f"its inference actor did not start within {MODEL_START_S:g} s ({type(exc).__name__}); "
                                 f"does the cluster have a free {'GPU' if self.config.device.startswith('cuda') else 'CPU'}?"}
            if "error" in meta:
                for a in actors:
                    self.ray.kill(a)
                raise StreamrecError(f"camera {cam.name}: {meta['error']}")
            group = ModelGroup(key, actors, meta["name"], meta["classes"], meta["meaningless"], meta["device"],
                               meta["backend"], meta["spec"])
            self.groups[key] = group
            return group

    def group_of(self, camera: str) -> ModelGroup | None:
        cam = self.cameras.get(camera)
        return self.groups.get(cam.model) if cam is not None else None

    @property
    def lost(self) -> set[str]:
        """The cameras whose actor failed on the last call."""
        return {name for name, cam in list(self.cameras.items()) if cam.lost}

    def stream(self, key: str) -> StreamLabels | None:
        """The labelled stream of stream key ``key`` (``camera`` or ``camera/zone``); None once removed."""
        return self._streams.get(key)

    def stream_keys(self) -> list[str]:
        return list(self._streams)

    def config_of(self, camera: str) -> CameraConfig | None:
        cam = self.cameras.get(camera)
        return cam.cfg if cam is not None else None

    def actor_of(self, camera: str) -> Any:
        cam = self.cameras.get(camera)
        return cam.actor if cam is not None else None

    @property
    def meaningless(self) -> bool:
        """Some camera served now has a model with random weights (its labels are meaningless)."""
        groups = self.groups
        return any(cam.model in groups and groups[cam.model].meaningless for cam in list(self.cameras.values()))

    def _start_cameras(self, cams: list[CameraConfig]) -> None:
        """Start a capture actor per camera and wait until each has opened its source: the first
        camera that could not is a :class:`StreamrecError` naming it (its actors are killed)."""
        fields = ("name", "source", "loop", "rtsp_transport", "open_timeout", "stall_timeout", "zones", "whole_frame")
        keys = {c.name: (c.model, c.weights) for c in cams}
        # sports_only cameras: their model's sport classes (a model with none fails here, before any actor starts)
        subsets = {c.name: sport_indices(self.groups[keys[c.name]].classes) if c.sports_only else None for c in cams}
        # each capture actor resizes and samples for its own camera's model
        probes = {c.name: uuid.uuid4().hex for c in cams}  # recording.dir: a file each actor writes there
        actors = {c.name: self._Cap.remote({k: getattr(c, k) for k in fields}, self.groups[keys[c.name]].spec,
                                           self.recording, probes[c.name])
                  for c in cams}
        # an actor's start imports the pipeline on its node (seconds) before the source's own open timeout
        timeout = max(c.open_timeout or 10.0 for c in cams) + ACTOR_START_S
        refs = {name: a.opened.remote() for name, a in actors.items()}
        try:
            errors = dict(zip(refs, self.ray.get(list(refs.values()), timeout=timeout)))
        except Exception as exc:  # noqa: BLE001 - GetTimeoutError, or an actor that died starting
            for a in actors.values():
                self.ray.kill(a)
            raise StreamrecError(f"cameras {', '.join(actors)}: capture actors did not start within {timeout:g} s "
                                 f"({type(exc).__name__})") from None
        failed = {name: err for name, err in errors.items() if err}
        try:
            if failed:
                name, err = next(iter(failed.items()))
                raise StreamrecError(f"camera {name}: {err}")
            if self.recording is not None:  # the driver serves the clips: it must see what the nodes write
                check_shared(self.recording.folder, probes, lambda name: self._node_of(actors[name]))
        except StreamrecError:
            for a in actors.values():
                self.ray.kill(a)
            if self.recording is not None:  # the actors that did start wrote theirs
                remove_probes(self.recording.folder, probes.values())
            raise
        with self._lock:
            for c in cams:
                streams = {z: StreamLabels(c.name, z, self.config.smoothing) for z in c.streams()}
                self.cameras[c.name] = RemoteCamera(c, actors[c.name], keys[c.name], subsets[c.name], streams)
                self._streams.update({s.name: s for s in streams.values()})

    def add_camera(self, cam: CameraConfig, check: Callable[[], None] | None = None) -> None:
        """Start one more camera while running (its source must open; a model no camera used yet
        is loaded on new inference actors first); ``check``: see :func:`adding_camera`."""
        cam = self.config.resolve(cam)
        with adding_camera(self._lock, self.cameras, self.adding, cam.name, check):
            self._group(cam)
            self._start_cameras([cam])

    def detach_camera(self, name: str) -> Any:
        """Forget camera ``name`` (no message for it is built after this returns); its actor, or ``None``."""
        with self._lock:
            cam = self.cameras.pop(name, None)
            if cam is None:
                return None
            for stream in cam.streams.values():
                self._streams.pop(stream.name)
            return cam.actor

    def _node_of(self, actor: Any) -> str:
        try:
            return self.ray.get(actor.stats.remote(), timeout=5).get("node", "?")
        except Exception:  # noqa: BLE001 - an actor that does not answer
            return "?"

    def stop_actor(self, name: str, actor: Any) -> None:
        """Stop camera ``name``'s actor (its clips finish: :meth:`take_final_reports`), then kill it."""
        try:
            self._keep_final(name, self.ray.get(actor.stop.remote(), timeout=STOP_S))
        except Exception:  # noqa: BLE001 - on a lost node: it is gone already
            pass
        self.ray.kill(actor)

    def _keep_final(self, name: str, reports: dict[str, Any] | None) -> None:
        if reports is not None:
            with self._lock:
                self.final_reports.append((name, reports))

    def take_final_reports(self) -> list[tuple[str, dict[str, Any]]]:
        """The clip reports stopped actors gave last (``(camera, reports)``), once each."""
        with self._lock:
            out, self.final_reports = self.final_reports, []
        return out

    def actors(self) -> dict[str, Any]:
        """Each camera's capture actor, now."""
        with self._lock:
            return {name: cam.actor for name, cam in self.cameras.items()}

    def step(self, timeout: float = 1.0) -> int:
        """One round: gather new windows, classify them in one batch, publish. Returns the batch size."""
        ray = self.ray
        stride_s, now = self.config.stride_ms / 1e3, time.monotonic()
        with self._lock:  # stride_ms: a stream labelled less than that ago is not asked for a window
            cams = dict(self.cameras)
        asks = {name: {z: s.last_end for z, s in cam.streams.items() if not stride_s or now - s.published >= stride_s}
                for name, cam in cams.items()}
        refs = {name: cams[name].actor.windows.remote(ask) for name, ask in asks.items() if ask}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        ready_set = set(ready)
        by_model: dict[tuple, list[tuple[RemoteCamera, StreamLabels, tuple]]] = {}
        for name, ref in refs.items():
            if ref not in ready_set:
                continue
            cam = cams[name]
            try:
                w = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - its actor (or node) is gone: the other cameras go on
                if not cam.lost:
                    logger.error("camera %s: its capture actor failed: %s", name, type(exc).__name__)
                cam.lost = True
                continue
            cam.lost = False
            if w:
                cam.note_interruptions(max(win[5] for win in w.values()))
                by_model.setdefault(cam.model, []).extend((cam, cam.streams[zone], win) for zone, win in w.items())
        if not by_model:
            time.sleep(0.02)  # also when every camera is within its stride
            return 0
        t0 = time.perf_counter()  # every model's batch goes out at once; each is timed from there
        calls = {key: self.groups[key].next_actor().classify.remote([w[3] for _, _, w in batch])
                 for key, batch in by_model.items()}
        out = []
        for key, ref in calls.items():
            probs = np.asarray(ray.get(ref))  # (B, K)
            infer_ms = (time.perf_counter() - t0) * 1e3
            group, items, rows = self.groups[key], [], []
            for row, (cam, stream, (end_seq, start_ts, end_ts, frames, fps, _)) in enumerate(by_model[key]):
                if self._streams.get(stream.name) is not stream:  # removed while its window was being classified
                    continue  # (publish checks again)
                stream.took(end_seq)
                rows.append(row)
                items.append(Labelled(cam.cfg.name, stream, stream.smoother, cam.subset, start_ts=start_ts,
                                      end_ts=end_ts, frames=len(frames), capture_fps=fps, zone=stream.zone))
            msgs = label_messages(items, probs[rows], group.classes, infer_ms=infer_ms, clock=self.clock,
                                  meaningless=group.meaningless)
            out += [(stream_key(m["camera"], m["zone"]), m) for m in msgs]
        self.publish(out)
        done = time.monotonic()
        for key, _ in out:
            if (stream := self._streams.get(key)) is not None:  # not removed meanwhile
                stream.published = done
        self.rounds += 1
        size = sum(len(b) for b in by_model.values())
        self.batch_sizes.append(size)
        return size

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """Each camera's capture stats (and ``node``), from its actor; a camera whose actor does not
        answer within ``timeout`` reads ``{"state": "unreachable"}``."""
        refs = {name: a.stats.remote() for name, a in self.actors().items()}
        ready, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        out = {}
        for name, ref in refs.items():
            try:
                out[name] = self.ray.get(ref) if ref in ready else {"state": "unreachable"}
            except Exception as exc:  # noqa: BLE001 - an actor on a lost node
                out[name] = {"state": "unreachable", "error": type(exc).__name__}
        return out

    def previews(self, width: int, after: dict[str, float], timeout: float) -> dict[str, tuple[float, bytes]]:
        """The cameras' newest frames as JPEGs (those newer than ``after[name]`` that come within ``timeout``)."""
        refs = {name: a.preview.remote(width, after.get(name, 0.0)) for name, a in self.actors().items()}
        ready, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        out = {}
        for name, ref in refs.items():
            if ref in ready:
                try:
                    got = self.ray.get(ref)
                except Exception:  # noqa: BLE001 - an actor on a lost node: no frame this time
                    continue
                if got is not None:
                    out[name] = got
        return out

    def close(self) -> None:
        """Stop the capture actors and kill every actor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        with self._lock:
            cameras, self.cameras = {name: cam.actor for name, cam in self.cameras.items()}, {}
        refs = {name: a.stop.remote() for name, a in cameras.items()}
        ready, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=STOP_S) if refs else ([], [])
        for name, ref in refs.items():
            try:
                if ref in ready:
                    self._keep_final(name, self.ray.get(ref))
            except Exception:  # noqa: BLE001 - actors on a lost node are gone already
                pass
        for actor in [*cameras.values(), *(a for g in list(self.groups.values()) for a in g.actors)]:
            self.ray.kill(actor)
