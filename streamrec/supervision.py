"""Every long-lived thread runs under one policy: an exception is logged once (with the thread's
name: its camera or model), counted, and the thread's body starts again after a backoff. A
body that keeps failing makes the app's health ``degraded``, with the reason.

Example:
    >>> import threading
    >>> now = [0.0]
    >>> sup = Supervisor(clock=lambda: now[0], backoff_s=0.0)
    >>> calls = []
    >>> def body():
    ...     calls.append(1)
    ...     if len(calls) < 4:
    ...         raise IndexError("list index out of range")
    >>> sup.run("inference-0", body, threading.Event())  # three failures, then it returns
    >>> sup.stats()["inference-0"]["failures"], sup.reasons()
    (3, ['inference-0 keeps failing: IndexError: list index out of range (3 times)'])
    >>> now[0] += sup.window_s + 1  # long enough without a failure: healthy again
    >>> sup.reasons()
    []
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from streamrec.retry import Backoff

logger = logging.getLogger(__name__)

RECENT_ERROR_S = 300.0  # a failure this recent (a write, an event change) makes /healthz read "degraded"
SHUTDOWN_S = 15.0  # SIGTERM to exit: every join and flush of a stop shares this budget (systemd's default stop timeout is 90 s; the unit in docs/deployment.md gives 20)


class Deadline:
    """One time budget shared by the steps of a stop: each step waits at most what is left (and
    at most its own ``cap``), so the steps together stay within ``seconds``.

    Example:
        >>> now = [0.0]
        >>> d = Deadline(10.0, clock=lambda: now[0])
        >>> d.left(), d.left(cap=1.5)
        (10.0, 1.5)
        >>> now[0] = 9.0; d.left(cap=1.5)
        1.0
        >>> now[0] = 12.0; d.left(), d.expired
        (0.0, True)
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds >= 0:  # NaN too
            raise ValueError(f"Deadline: expected seconds >= 0, got {seconds!r}")
        self.clock = clock
        self.end = clock() + seconds

    def left(self, cap: float | None = None) -> float:
        """Seconds left of the budget (0 when spent), at most ``cap``."""
        rest = max(0.0, self.end - self.clock())
        return rest if cap is None else min(cap, rest)

    @property
    def expired(self) -> bool:
        return self.left() == 0.0


@dataclass
class ThreadRecord:
    """What the supervisor knows of one thread."""

    failures: int = 0
    restarts: int = 0
    last_error: str | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # clock() of recent failures
    running: bool = False


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class Supervisor:
    """Runs thread bodies (:meth:`run`), notes failures of other long-lived tasks (:meth:`failed`),
    and says which keep failing (:meth:`reasons`): ``failing_after`` failures within ``window_s``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, failing_after: int = 3, window_s: float = 60.0) -> None:
        self.clock = clock
        self.backoff = Backoff(base_s=backoff_s, cap_s=max_backoff_s)
        self.failing_after = failing_after
        self.window_s = window_s
        self._records: dict[str, ThreadRecord] = {}
        self._lock = threading.Lock()

    def record(self, name: str) -> ThreadRecord:
        with self._lock:
            return self._records.setdefault(name, ThreadRecord())

    def failed(self, name: str, exc: BaseException) -> float:
        """Note a failure of ``name``; log it when its text is new. The backoff before a restart."""
        rec = self.record(name)
        text = describe(exc)
        with self._lock:
            rec.failures += 1
            rec.recent.append(self.clock())
            new = text != rec.last_error
            rec.last_error = text
            streak = sum(1 for t in rec.recent if self.clock() - t <= self.window_s)
        if new:
            logger.error("%s failed: %s", name, text, exc_info=exc)
        return self.backoff.delay(streak - 1)

    def run(self, name: str, body: Callable[[], None], stop_event: threading.Event) -> None:
        """Call ``body`` until it returns or ``stop_event`` is set; restart it after each exception."""
        rec = self.record(name)
        rec.running = True
        try:
            while not stop_event.is_set():
                try:
                    body()
                    return
                except Exception as exc:  # noqa: BLE001 - the point: log, count, restart
                    delay = self.failed(name, exc)
                    if stop_event.wait(delay):
                        return
                    rec.restarts += 1
        finally:
            rec.running = False

    def forget(self, name: str) -> None:
        with self._lock:
            self._records.pop(name, None)

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {n: {"failures": r.failures, "restarts": r.restarts, "last_error": r.last_error,
                        "running": r.running} for n, r in self._records.items()}

    def reasons(self) -> list[str]:
        """One line per thread with ``failing_after`` or more failures within the last ``window_s``."""
        now = self.clock()
        out = []
        with self._lock:
            for name, rec in self._records.items():
                n = sum(1 for t in rec.recent if now - t <= self.window_s)
                if n >= self.failing_after:
                    out.append(f"{name} keeps failing: {rec.last_error} ({n} times)")
        return out
