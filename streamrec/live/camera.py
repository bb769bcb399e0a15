"""A camera: its source, capture thread and labelled streams, each with its ring buffer,
smoother and label counts.

A labelled stream (:class:`Stream`) is the camera's whole frame or one of its zones.
:class:`~streamrec.serve.worker.InferenceWorker` takes the newest complete window of each
stream (:meth:`Stream.take_window`) and classifies the windows of all streams of all cameras
sharing a model in one forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Container, Iterator

from streamrec.config import CameraConfig, SmoothingConfig
from streamrec.errors import StreamrecError
from streamrec.live.capture import camera_capture
from streamrec.live.labels import StreamLabels
from streamrec.live.ring import FrameRing, Window
from streamrec.live.smoothing import LabelSmoother
from streamrec.live.sources import Source, SourceSpec
from streamrec.models.kinetics import sport_indices
from streamrec.runtime.classifier import Classifier
from streamrec.supervision import Supervisor

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 1.5


@contextmanager
def adding_camera(lock: threading.Lock | threading.RLock, cameras: Container[str], adding: set[str],
                  name: str, check: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold camera name ``name`` in ``adding`` while it is being added (opening its source, loading
    a model: seconds, outside ``lock``), so that a second add of the same name fails at once;
    ``check`` (under ``lock``) refuses what clashes with the cameras there or being added.

    Example:
        >>> adding = set()
        >>> with adding_camera(threading.Lock(), {"pool"}, adding, "gate"):
        ...     sorted(adding)
        ['gate']
        >>> adding
        set()
    """
    with lock:
        if name in cameras or name in adding:
            raise StreamrecError(f"camera {name!r} already exists")
        if check is not None:  # against the cameras there and those being added, in one step with the claim
            check()
        adding.add(name)
    try:
        yield
    finally:
        with lock:
            adding.discard(name)


class Stream(StreamLabels):
    """One labelled stream of ``camera`` (see :class:`~streamrec.live.labels.StreamLabels`), with
    the ring its windows come from."""

    def __init__(self, camera: "Camera", zone: str | None, ring: FrameRing, smoothing: SmoothingConfig) -> None:
        StreamLabels.__init__(self, camera.name, zone, smoothing)
        self.camera = camera
        self.ring = ring

    def take_window(self) -> Window | None:
        """The newest window that ends after the last classified one, or None."""
        ms = self.camera.classifier.loaded.spec
        w = self.ring.newest_window(ms.frames, ms.fps, after=self.last_end)
        if w is None or w.end_seq <= self.last_end:
            return None
        self.took(w.end_seq)
        return w


class Camera:
    """One source, end to end up to the classifier (which it shares with other cameras): one
    capture, one :class:`Stream` per labelled stream of ``cfg.streams()``.

    The camera's own label counts (``stats()``, ``ring``, ``smoother``...) are its first stream's:
    the whole frame's, or its first zone's when the whole frame is not labelled."""

    def __init__(self, cfg: CameraConfig, classifier: Classifier, smoothing: SmoothingConfig, *,
                 first: Source | None = None, wake: threading.Condition | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.classifier = classifier
        self.spec = SourceSpec.of_camera(cfg)
        self.stop_event = threading.Event()
        self._wake = wake
        rings, self.capture = camera_capture(self.spec, classifier.loaded.spec, stop_event=self.stop_event,
                                             name=cfg.name, loop=bool(cfg.loop), first=first,
                                             on_frame=self._notify if wake is not None else None,
                                             supervisor=supervisor, zones=cfg.zones, whole_frame=cfg.whole_frame)
        self.streams: dict[str | None, Stream] = {z: Stream(self, z, rings[z], smoothing) for z in cfg.streams()}
        self.primary = next(iter(self.streams.values()))
        # --sports-only: the sport classes' indices in the model's outputs (raises if it has none)
        self.subset = sport_indices(classifier.loaded.classes) if cfg.sports_only else None
        self.started = time.time()
        self._gaps_seen = 0  # the capture's interruptions the smoothers have been reset for

    # the first stream's, for a camera read as one stream
    @property
    def ring(self) -> FrameRing:
        return self.primary.ring

    @property
    def smoother(self) -> LabelSmoother:
        return self.primary.smoother

    @property
    def last_end(self) -> int:
        return self.primary.last_end

    @property
    def skipped(self) -> int:
        return self.primary.skipped

    @property
    def seq(self) -> int:
        return self.primary.seq

    def stats(self) -> dict[str, Any]:
        return self.primary.stats()

    def zone_stats(self) -> dict[str, dict[str, Any]]:
        """Each zone's label counts, by zone name."""
        return {z: s.stats() for z, s in self.streams.items() if z is not None}

    def problems(self, now: float, **kwargs: Any) -> list[str]:
        """Why the camera's labels are not healthy: its streams' problems (a zone's named)."""
        out = []
        for zone, stream in self.streams.items():
            out += [p if zone is None else f"zone {zone}: {p}" for p in stream.problems(now, **kwargs)]
        return out

    def take_window(self) -> Window | None:
        """The first stream's newest new window (see :meth:`Stream.take_window`)."""
        return self.primary.take_window()

    def _notify(self, *_: Any) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        """Start capturing (idempotent: a camera added and started before the app's work starts
        is not started again)."""
        if self.capture.ident is None:
            self.capture.start()

    def close(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop capture and release the source, waiting ``timeout`` s at most (idempotent)."""
        self.stop_event.set()
        if self.capture.is_alive():
            self.capture.join(timeout)
        else:  # never started: close the pre-opened source
            self.capture.release()

    def reset_if_reconnected(self) -> None:
        """A new stream starts a new label history, in every zone (however short its gap was)."""
        gaps = self.capture.interruptions
        if gaps != self._gaps_seen:
            for stream in self.streams.values():
                stream.smoother.reset()
        self._gaps_seen = gaps
