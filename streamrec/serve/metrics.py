"""Prometheus metrics for ``GET /metrics`` (``prometheus_client``, text format).

Gauges that mirror live state are read at scrape time from the app, so nothing on the
hot path updates them; only the two latency histograms are observed per prediction. The
standard ``process_*`` metrics (CPU seconds, resident memory, open file descriptors; Linux)
come with them: CPU seconds per prediction is how a slower host shows (see the README's
"Live pipeline").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from streamrec.live.camera import LabelStats
    from streamrec.serve.server import Hub

# each camera at scrape time: its name, its capture's stats (``capture_fps``, ``dropped``,
# ``decode_errors``, ``reconnects``) and its label counters
CameraRows = Callable[[], Iterable[tuple[str, dict[str, Any], "LabelStats"]]]

_MS_BUCKETS = (5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)


class Metrics:
    """The registry of one server: ``serve``'s cameras or the cluster driver's (``cameras()``)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, hub: "Hub", cameras: CameraRows, history: Callable[[], dict[str, Any]] | None = None) -> None:
        self.hub = hub
        self.cameras = cameras
        self.history = history  # the activity history's counters (HistoryStore.stats)
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        cam = ["camera"]
        self.infer = Histogram("streamrec_inference_latency_ms", "Model forward time per window", cam, buckets=_MS_BUCKETS, registry=r)
        self.e2e = Histogram("streamrec_end_to_end_latency_ms", "Capture of a window's last frame to send", cam, buckets=_MS_BUCKETS, registry=r)
        self.fps = Gauge("streamrec_capture_fps", "Frames captured per second", cam, registry=r)
        self.dropped = Gauge("streamrec_frames_dropped_total", "Frames overwritten in the ring before any window used them", cam, registry=r)
        self.decode_errors = Gauge("streamrec_decode_errors_total", "Corrupt packets skipped", cam, registry=r)
        self.reconnects = Gauge("streamrec_reconnects_total", "Source reconnects", cam, registry=r)
        self.skipped = Gauge("streamrec_windows_skipped_total", "Windows skipped because inference was busy", cam, registry=r)
        self.predictions = Gauge("streamrec_predictions_total", "Predictions sent", cam, registry=r)
        self.rate = Gauge("streamrec_inference_rate", "Windows classified per second", cam, registry=r)
        self.clients = Gauge("streamrec_clients", "Connected websocket clients", registry=r)
        self.messages_dropped = Gauge("streamrec_messages_dropped_total", "Stale messages dropped for slow clients", registry=r)
        self.label = Gauge("streamrec_current_label", "1 for the label currently shown", ["camera", "label"], registry=r)
        self.history_gauges = {
            key: Gauge(f"streamrec_history_{name}", doc, registry=r) for key, name, doc in (
                ("written", "segments_written_total", "Label segments written to the history database"),
                ("dropped", "segments_dropped_total", "Label segments lost: queue full, or the database failed"),
                ("pruned", "segments_pruned_total", "Segments deleted as older than --history-days"),
                ("reconnects", "reconnects_total", "Reconnects to the history database"))}
        self._last_label: dict[str, tuple[str, str]] = {}  # camera -> (camera, label) shown

    def observe_prediction(self, msg: dict[str, Any]) -> None:
        cam = msg.get("camera", "default")
        self.infer.labels(cam).observe(msg["infer_ms"])
        self.e2e.labels(cam).observe(msg["latency_ms"])
        key = (cam, msg["label"])
        last = self._last_label.get(cam)
        if key != last:
            if last is not None:
                self.label.remove(*last)
            self.label.labels(*key).set(1)
            self._last_label[cam] = key

    def forget(self, camera: str) -> None:
        """Drop a removed camera's series (they would otherwise stay at their last values)."""
        for metric in (self.infer, self.e2e, self.fps, self.dropped, self.decode_errors, self.reconnects,
                       self.skipped, self.predictions, self.rate):
            try:
                metric.remove(camera)
            except KeyError:  # never observed
                pass
        last = self._last_label.pop(camera, None)
        if last is not None:
            self.label.remove(*last)

    def render(self) -> bytes:
        now = time.time()
        for name, source, labels in self.cameras():
            self.fps.labels(name).set(source.get("capture_fps", 0.0))
            self.dropped.labels(name).set(source.get("dropped", 0))
            self.decode_errors.labels(name).set(source.get("decode_errors", 0))
            self.reconnects.labels(name).set(source.get("reconnects", 0))
            self.skipped.labels(name).set(labels.skipped)
            self.predictions.labels(name).set(labels.seq)
            self.rate.labels(name).set(labels.rate.rate(now))
        if self.history is not None:
            stats = self.history()
            for key, gauge in self.history_gauges.items():
                gauge.set(stats[key])
        self.clients.set(len(self.hub.clients))
        self.messages_dropped.set(self.hub.dropped)
        return generate_latest(self.registry)
