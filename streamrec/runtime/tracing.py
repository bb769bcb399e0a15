"""``torch.fx`` tracing next to running models, in one process.

While ``torch.fx`` traces a module it patches ``nn.Module.__call__`` for every thread, so a model
running in another thread at that moment fails ("module is not installed as a submodule"):
seen when a camera with a new model was added while the others were being classified. Model
calls hold :data:`guard` shared (any number at once), a trace holds it alone; a waiting trace
goes first, so it waits for the calls in progress and no longer.

Example:
    >>> with guard.call():  # around running a model
    ...     pass
    >>> with guard.trace():  # around torch.fx tracing
    ...     pass
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class CallTraceGuard:
    """Many model calls at once, or one trace alone (a readers-writer lock, writers first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls = 0
        self._tracing = False
        self._waiting = 0  # traces waiting: new calls hold back for them

    @property
    def waiting(self) -> int:
        """How many traces wait for the calls in flight (new calls hold back for them)."""
        return self._waiting

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._tracing and not self._waiting)
            self._calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._calls -= 1
                if self._calls == 0:
                    self._cond.notify_all()

    @contextmanager
    def trace(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._tracing and self._calls == 0)
            finally:
                self._waiting -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._cond:
                self._tracing = False
                self._cond.notify_all()


guard = CallTraceGuard()
