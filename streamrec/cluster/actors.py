"""The bodies of the cluster's Ray actors: a camera's capture near the camera, a model's
inference on an inference node. The driver (:mod:`streamrec.cluster.runner`) wraps them with
``ray.remote`` and places them."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from streamrec.config import CameraConfig
from streamrec.event_config import RecordingConfig
from streamrec.errors import StreamrecError
from streamrec.serve.preview import encode_preview


class RemoteCapture:
    """Runs on a camera node: one camera's capture thread and a ring per labelled stream (its
    whole frame, each zone: decoded once, cropped here) (a Ray actor body), and with
    ``recording`` its packet ring and event clips, written into ``recording.dir`` (where it first
    writes the probe file ``probe``: :func:`~streamrec.cluster.clips.check_shared`)."""

    def __init__(self, cam: dict[str, Any], spec: dict[str, Any], recording: RecordingConfig | None = None,
                 probe: str = "") -> None:
        from streamrec.cluster.clips import CameraClips, write_probe
        from streamrec.live.capture import camera_capture
        from streamrec.models.spec import ModelSpec
        from streamrec.live.sources import SourceSpec, open_source

        self.cfg = CameraConfig(**cam)
        self.spec = ModelSpec.from_dict(spec)
        self.stop_event = threading.Event()
        self.capture = None
        self.clips: CameraClips | None = None
        self.error: str | None = None
        try:  # opened here first, as serve does: a missing file, not a video, an unreachable URL fail at once
            first = open_source(SourceSpec.of_camera(self.cfg))
        except StreamrecError as exc:
            self.error = str(exc)
            return
        if recording is not None:
            try:
                write_probe(recording.folder, probe, node_id())
            except StreamrecError as exc:
                first.close()
                self.error = str(exc)
                return
            self.clips = CameraClips(recording, self.cfg.name, self.latest_frame)
        rings, self.capture = camera_capture(SourceSpec.of_camera(self.cfg), self.spec, stop_event=self.stop_event,
                                             name=self.cfg.name, loop=bool(self.cfg.loop), first=first,
                                             packet_ring=self.clips.ring if self.clips is not None else None,
                                             zones=self.cfg.zones, whole_frame=self.cfg.whole_frame)
        self.rings = rings
        self.capture.start()

    def latest_frame(self, camera: str) -> np.ndarray | None:
        """The camera's newest RGB frame (an event's thumbnail)."""
        return self.capture.latest_rgb if self.capture is not None else None

    def opened(self) -> str | None:
        """``None`` when the source opened and capture runs, else the one-line reason it did not."""
        return self.error

    def windows(self, after: dict[str | None, int]) -> dict[str | None, tuple]:
        """Each asked stream's newest window ending after ``after[zone]`` (zone ``None``: the whole
        frame), by zone: (end_seq, start_ts, end_ts, uint8 crops (T, H, W, C), capture fps, the
        capture's interruptions so far: a new count is a new stream, whose labels start anew)."""
        if self.capture is None:
            return {}
        out = {}
        for zone, after_seq in after.items():
            ring = self.rings.get(zone)
            w = ring.newest_window(self.spec.frames, self.spec.fps, after=after_seq) if ring is not None else None
            if w is not None and w.end_seq > after_seq:
                # uint8: a quarter of the bytes of float32 over the network
                out[zone] = (w.end_seq, w.start_ts, w.end_ts, w.frames, self.capture.fps(), self.capture.interruptions)
        return out

    def preview(self, width: int, after_ts: float) -> tuple[float, bytes] | None:
        """The newest frame as a JPEG at most ``width`` wide, encoded here near the camera (a few
        KB cross the network, not a frame); ``None`` when it is no newer than ``after_ts``."""
        if self.capture is None:
            return None
        rgb, ts = self.capture.latest_rgb, self.capture.latest_ts
        if rgb is None or ts <= after_ts:
            return None
        return ts, encode_preview(rgb, width)

    def stats(self) -> dict[str, Any]:
        if self.capture is None:
            return {"state": "error", "error": self.error, "node": node_id()}
        return {**self.capture.stats(), "node": node_id()}

    # -- event clips (the driver's ClusterClips calls these) -----------------------------
    def clip_begin(self, event_id: str, start_ts: float) -> None:
        if self.clips is not None:
            self.clips.begin(event_id, start_ts)

    def clip_peak(self, event_id: str) -> None:
        if self.clips is not None:
            self.clips.peak(event_id)

    def clip_end(self, event_id: str, end_ts: float) -> None:
        if self.clips is not None:
            self.clips.end(event_id, end_ts)

    def clip_reports(self) -> dict[str, Any] | None:
        """Clips and thumbnails finished since the last call, and the recording's stats."""
        return self.clips.take() if self.clips is not None else None

    def stop(self) -> dict[str, Any] | None:
        """Stop capturing and finish the clips being written; their last reports."""
        self.stop_event.set()
        if self.capture is not None:
            self.capture.join(1.5)
        return self.clips.close() if self.clips is not None else None


class RemoteClassifier:
    """Runs on an inference node: a loaded model classifying batches (a Ray actor body)."""

    def __init__(self, model: str | None, weights: str, device: str, backend: str, threads: int | None = None) -> None:
        from streamrec.runtime.classifier import Classifier
        from streamrec.models.registry import load_model

        self.error: str | None = None
        try:  # a bad model or weights file is told to the driver as one line (meta), not as an actor's death
            self.loaded = load_model(model, weights=weights)
            self.classifier = Classifier(self.loaded, device=device, backend=backend, threads=threads)
        except StreamrecError as exc:
            self.error = str(exc)

    def meta(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"classes": self.loaded.classes, "spec": self.loaded.spec.to_dict(), "name": self.loaded.name,
                "meaningless": self.loaded.meaningless, "node": node_id(), "device": str(self.classifier.device),
                "backend": self.classifier.backend}

    def classify(self, windows: list[np.ndarray]) -> np.ndarray:
        from streamrec.models.preprocess import batch_windows

        return self.classifier.probs(batch_windows(windows))  # uint8 (B, T, H, W, C); normalized by the classifier


def node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        return "local"
