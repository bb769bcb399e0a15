"""Prometheus metrics for ``GET /metrics`` (``prometheus_client``, text format).

Gauges and counters that mirror live state are read at scrape time from the app, so nothing
on the hot path updates them; only the two latency histograms are observed per prediction.
The running totals (``*_total``) are exposed as counters, as Prometheus names them: ``rate()``
and ``increase()`` work on them, and a restart shows as a counter reset. The
standard ``process_*`` metrics (CPU seconds, resident memory, open file descriptors; Linux)
come with them: CPU seconds per prediction is how a slower host shows (see the README's
"Live pipeline").

A camera's capture series are labelled ``camera``; its labelled streams' series (latencies,
inference rate, predictions, the current label...) ``camera`` and ``zone`` (``""`` for the
whole frame).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from streamrec.live.labels import LabelStats
    from streamrec.serve.hub import Hub

# each camera at scrape time: its name, its capture's stats (``capture_fps``, ``dropped``,
# ``decode_errors``, ``reconnects``) and each labelled stream's label counters, by zone (None: the whole frame)
CameraRows = Callable[[], Iterable[tuple[str, dict[str, Any], "dict[str | None, LabelStats]"]]]

_MS_BUCKETS = (5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)

# the counters, each exposed as ``<name>_total``: (name, help, where its value is read)
CAMERA_COUNTERS = (
    ("streamrec_frames_dropped", "Frames overwritten in the ring before any window used them", "dropped"),
    ("streamrec_decode_errors", "Corrupt packets skipped", "decode_errors"),
    ("streamrec_reconnects", "Source reconnects", "reconnects"),
)
STREAM_COUNTERS = (  # per labelled stream: labels camera and zone
    ("streamrec_windows_skipped", "Windows skipped because inference was busy", "skipped"),
    ("streamrec_predictions", "Predictions sent", "seq"),
    ("streamrec_windows_nonfinite", "Windows skipped because the model's scores were NaN or infinite", "nonfinite"),
)
THREAD_COUNTERS = (
    ("streamrec_thread_failures", "Exceptions that ended a supervised thread's body", "failures"),
    ("streamrec_thread_restarts", "Restarts of a supervised thread's body after a failure", "restarts"),
)
HISTORY_COUNTERS = (
    ("streamrec_history_segments_written", "Label segments written to the history database", "written"),
    ("streamrec_history_segments_dropped", "Label segments lost: queue full, or the database failed", "dropped"),
    ("streamrec_history_segments_pruned", "Segments deleted as older than --history-days", "pruned"),
    ("streamrec_history_reconnects", "Reconnects to the history database", "reconnects"),
)


def event_families(events: dict[str, Any]):
    """Metric families of ``EventManager.stats()``: open events, the outbox, clips, packet rings."""
    gauge = GaugeMetricFamily("streamrec_events_open", "Events open now", value=events["open"])
    yield gauge
    yield GaugeMetricFamily("streamrec_notifications_pending", "Notifications in the outbox not delivered yet",
                            value=events["outbox"]["pending"])
    delivered = CounterMetricFamily("streamrec_notifications_delivered", "Notifications delivered", labels=["channel"])
    failed = CounterMetricFamily("streamrec_notifications_failed", "Failed delivery attempts (retried)",
                                 labels=["channel"])
    for channel, values in events.get("notify", {}).get("channels", {}).items():
        delivered.add_metric([channel], values.get("delivered", 0))
        failed.add_metric([channel], values.get("failed", 0))
    yield delivered
    yield failed
    yield GaugeMetricFamily("streamrec_events_queued", "Labels waiting for the events thread", value=events["queued"])
    yield CounterMetricFamily("streamrec_events_labels_dropped", "Labels the events never saw (their queue was full)",
                              value=events["dropped"])
    rec = events.get("recording")
    if rec is not None:
        yield CounterMetricFamily("streamrec_clips_written", "Event clips finished", value=rec["clips_written"])
        yield CounterMetricFamily("streamrec_clip_write_errors", "Event clips cut short by a write error (disk full...)",
                                  value=rec["write_errors"])
        dropped = CounterMetricFamily("streamrec_packets_dropped", "Compressed packets dropped from a camera's ring",
                                      labels=["camera"])
        ring_bytes = GaugeMetricFamily("streamrec_packet_ring_bytes", "Bytes in a camera's ring of compressed packets",
                                       labels=["camera"])
        for camera, ring in rec["rings"].items():
            dropped.add_metric([camera], ring["dropped_packets"])
            ring_bytes.add_metric([camera], ring["bytes"])
        yield dropped
        yield ring_bytes


class _Counters:
    """A collector of the counters, from the values :meth:`Metrics.render` read just before."""

    def __init__(self) -> None:
        self.cameras: list[tuple[str, dict[str, Any]]] = []  # (camera, {key: value})
        self.streams: list[tuple[str, str, dict[str, Any]]] = []  # (camera, zone or "", {key: value})
        self.history: dict[str, Any] | None = None
        self.threads: dict[str, dict[str, Any]] = {}  # Supervisor.stats()
        self.events: dict[str, Any] | None = None  # EventManager.stats()
        self.messages_dropped = 0

    def collect(self):
        for name, doc, key in CAMERA_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["camera"])
            for camera, values in self.cameras:
                family.add_metric([camera], values.get(key, 0))
            yield family
        for name, doc, key in STREAM_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["camera", "zone"])
            for camera, zone, values in self.streams:
                family.add_metric([camera, zone], values.get(key, 0))
            yield family
        for name, doc, key in THREAD_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["thread"])
            for thread, values in self.threads.items():
                family.add_metric([thread], values[key])
            yield family
        if self.events is not None:
            yield from event_families(self.events)
        family = CounterMetricFamily("streamrec_messages_dropped", "Stale messages dropped for slow clients")
        family.add_metric([], self.messages_dropped)
        yield family
        if self.history is not None:
            for name, doc, key in HISTORY_COUNTERS:
                yield CounterMetricFamily(name, doc, value=self.history[key])


class Metrics:
    """The registry of one server: ``serve``'s cameras or the cluster driver's (``cameras()``)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, hub: "Hub", cameras: CameraRows, history: Callable[[], dict[str, Any]] | None = None,
                 threads: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 events: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.hub = hub
        self.threads = threads  # the supervised threads' counts (Supervisor.stats)
        self.events = events  # events, outbox, clips (EventManager.stats)
        self.cameras = cameras
        self.history = history  # the activity history's counters (HistoryStore.stats)
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        cam, stream = ["camera"], ["camera", "zone"]
        self.infer = Histogram("streamrec_inference_latency_ms", "Model forward time per window", stream, buckets=_MS_BUCKETS, registry=r)
        self.e2e = Histogram("streamrec_end_to_end_latency_ms", "Capture of a window's last frame to send", stream, buckets=_MS_BUCKETS, registry=r)
        self.fps = Gauge("streamrec_capture_fps", "Frames captured per second", cam, registry=r)
        self.rate = Gauge("streamrec_inference_rate", "Windows classified per second", stream, registry=r)
        self.clients = Gauge("streamrec_clients", "Connected websocket clients", registry=r)
        self.label = Gauge("streamrec_current_label", "1 for the label currently shown", ["camera", "zone", "label"], registry=r)
        self.counters = _Counters()  # read at each scrape: a removed camera's series go with it
        self._series = threading.Lock()  # a scrape's rows and their sets, or a camera's removal: one at a time
        r.register(self.counters)
        self._last_label: dict[tuple[str, str], tuple[str, str, str]] = {}  # (camera, zone) -> (camera, zone, label)
        self._zones: dict[str, set[str]] = {}  # camera -> the zones ("": the whole frame) with series

    def observe_prediction(self, msg: dict[str, Any]) -> None:
        cam, zone = msg.get("camera", "default"), msg.get("zone") or ""
        self._zones.setdefault(cam, set()).add(zone)
        self.infer.labels(cam, zone).observe(msg["infer_ms"])
        self.e2e.labels(cam, zone).observe(msg["latency_ms"])
        key = (cam, zone, msg["label"])
        last = self._last_label.get((cam, zone))
        if key != last:
            if last is not None:
                self.label.remove(*last)
            self.label.labels(*key).set(1)
            self._last_label[(cam, zone)] = key

    def forget(self, camera: str) -> None:
        """Drop a removed camera's series, its zones' too (they would otherwise stay at their last values).
        A scrape under way ends first: its rows, read before the removal, set nothing after it."""
        with self._series:
            self._forget(camera)

    def _forget(self, camera: str) -> None:
        _remove(self.fps, camera)
        for zone in self._zones.pop(camera, set()) | {""}:
            for metric in (self.infer, self.e2e, self.rate):
                _remove(metric, camera, zone)
            last = self._last_label.pop((camera, zone), None)
            if last is not None:
                self.label.remove(*last)

    def render(self) -> bytes:
        with self._series:
            self._update(time.time())
        return generate_latest(self.registry)

    def _update(self, now: float) -> None:
        counted, streams = [], []
        for name, source, labelled in self.cameras():
            self.fps.labels(name).set(source.get("capture_fps", 0.0))
            counted.append((name, source))
            for zone, labels in labelled.items():
                self._zones.setdefault(name, set()).add(zone or "")
                self.rate.labels(name, zone or "").set(labels.rate.rate(now))
                streams.append((name, zone or "", {"skipped": labels.skipped, "seq": labels.seq,
                                                   "nonfinite": labels.nonfinite}))
        self.counters.cameras, self.counters.streams = counted, streams
        self.counters.history = self.history() if self.history is not None else None
        self.counters.threads = self.threads() if self.threads is not None else {}
        self.counters.events = self.events() if self.events is not None else None
        self.counters.messages_dropped = self.hub.dropped
        self.clients.set(len(self.hub.clients))


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:  # never observed
        pass
