"""A camera: its source, ring buffer, capture thread, smoother and label counts.

:class:`~streamrec.serve.worker.InferenceWorker` takes the newest complete window of each
camera (:meth:`Camera.take_window`) and classifies the windows of all cameras sharing a model
in one forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Container, Iterator

from streamrec.config import CameraConfig, SmoothingConfig
from streamrec.errors import StreamrecError
from streamrec.live.capture import camera_capture
from streamrec.live.labels import LabelStats
from streamrec.live.ring import Window
from streamrec.live.smoothing import LabelSmoother
from streamrec.live.sources import Source, SourceSpec
from streamrec.models.kinetics import sport_indices
from streamrec.runtime.classifier import Classifier
from streamrec.supervision import Supervisor

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 1.5


@contextmanager
def adding_camera(lock: threading.Lock | threading.RLock, cameras: Container[str], adding: set[str],
                  name: str) -> Iterator[None]:
    """Hold camera name ``name`` in ``adding`` while it is being added (opening its source, loading
    a model: seconds, outside ``lock``), so that a second add of the same name fails at once.

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
        adding.add(name)
    try:
        yield
    finally:
        with lock:
            adding.discard(name)


class Camera(LabelStats):
    """One source, end to end up to the classifier (which it shares with other cameras)."""

    def __init__(self, cfg: CameraConfig, classifier: Classifier, smoothing: SmoothingConfig, *,
                 first: Source | None = None, wake: threading.Condition | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.classifier = classifier
        self.spec = SourceSpec.of_camera(cfg)
        self.stop_event = threading.Event()
        self._wake = wake
        self.ring, self.capture = camera_capture(self.spec, classifier.loaded.spec, stop_event=self.stop_event, name=cfg.name,
                                                 loop=bool(cfg.loop), first=first,
                                                 on_frame=self._notify if wake is not None else None,
                                                 supervisor=supervisor)
        self.smoother = LabelSmoother(smoothing)
        # --sports-only: the sport classes' indices in the model's outputs (raises if it has none)
        self.subset = sport_indices(classifier.loaded.classes) if cfg.sports_only else None
        LabelStats.__init__(self)
        self.started = time.time()
        self._last_state = "starting"

    def _notify(self, *_: Any) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        self.capture.start()

    def close(self) -> None:
        """Stop capture and release the source (idempotent)."""
        self.stop_event.set()
        if self.capture.is_alive():
            self.capture.join(JOIN_TIMEOUT_S)
        else:  # never started: close the pre-opened source
            self.capture.release()

    def take_window(self) -> Window | None:
        """The newest window that ends after the last classified one, or None."""
        ms = self.classifier.loaded.spec
        w = self.ring.newest_window(ms.frames, ms.fps, after=self.last_end)
        if w is None or w.end_seq <= self.last_end:
            return None
        self.took(w.end_seq)
        return w

    def reset_if_reconnected(self) -> None:
        """A new stream starts a new label history."""
        state = self.capture.state
        if state == "running" and self._last_state == "reconnecting":
            self.smoother.reset()
        self._last_state = state
