"""The events thread's inbox: items handled one at a time, in the order they came, by one
named thread, so that whoever hands them over never waits on what handling them costs (a
database write, a clip starting).

With ``tick_s``, ``handle(TICK)`` is called that often while the thread runs, busy or idle (the
rules look for streams whose labels stopped). Labels are bounded (``limit`` waiting at most; past that they are dropped and counted); other
items (a camera removed, a clip finished) always get in, and :meth:`Inbox.put` returns an
event that is set once the item was handled. Items that come while no thread runs (before
:meth:`Inbox.start`, after :meth:`Inbox.stop` with nothing left queued, after
:meth:`Inbox.close`) are handled in the caller's thread.

Example:
    >>> from streamrec.supervision import Supervisor
    >>> seen = []
    >>> inbox = Inbox(seen.append, name="demo", supervisor=Supervisor(), limit=2)
    >>> [inbox.put_label(("label", i)) for i in range(3)], inbox.dropped
    ([True, True, False], 1)
    >>> inbox.start(); inbox.put(("forget", "cam")).wait(5)
    True
    >>> inbox.stop(); seen
    [('label', 0), ('label', 1), ('forget', 'cam')]
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from streamrec.errors import StreamrecError
from streamrec.supervision import Supervisor

logger = logging.getLogger(__name__)

STOP_S = 10.0  # stop(): how long the thread may take to handle what is queued
TICK = ("tick", None, None)  # handed to handle() every tick_s while the thread runs


class Inbox:
    """See the module's docstring. ``handle(item)`` runs under :attr:`lock` (take it to work on
    what ``handle`` works on from another thread); an exception it raises is logged and counted
    (:attr:`errors`), and the next item is handled."""

    def __init__(self, handle: Callable[[Any], None], *, name: str, supervisor: Supervisor, limit: int,
                 tick_s: float | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit: expected >= 1 labels, got {limit}")
        self.handle = handle
        self.tick_s = tick_s  # handle(TICK) this often while the thread runs, busy or not
        self.name = name
        self.supervisor = supervisor
        self.limit = limit
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.dropped = 0
        self.errors = 0
        self._q: queue.SimpleQueue[tuple[Any, threading.Event | None] | None] = queue.SimpleQueue()
        self._labels = 0  # labels queued, not handled yet
        self._pending = 0  # items queued, not handled yet
        self._count = threading.Condition()
        self._thread: threading.Thread | None = None
        self._abandoned = False
        self._closed = False  # close(): later items are handled in the caller's thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._abandoned

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.supervisor.run, args=(self.name, self._run, self.closing),
                                            name=self.name, daemon=True)
            self._thread.start()

    def put_label(self, item: Any) -> bool:
        """Queue a label (never waits); ``False`` when ``limit`` labels wait already (dropped,
        counted) or after :meth:`close`."""
        with self._count:
            if self._closed:
                return False
            if self._labels >= self.limit:
                self.dropped += 1
                return False
            self._labels += 1
            self._pending += 1
        self._q.put((item, None))
        return True

    def put(self, item: Any) -> threading.Event:
        """Queue an item that must not be dropped; the event is set once it was handled. Before
        :meth:`start` and after :meth:`close` it is handled here and now."""
        done = threading.Event()
        with self._count:
            # while the thread runs, or after it ended with items still queued for drain(): in order
            queue_it = self._thread is not None and not self._abandoned and not self._closed \
                and (self._thread.is_alive() or self._pending > 0)
            if queue_it:
                self._pending += 1
                self._q.put((item, done))
        if not queue_it:
            self._handle(item)
            done.set()
        return done

    def queued(self) -> int:
        with self._count:
            return self._pending

    def flush(self, timeout: float = STOP_S) -> bool:
        """Wait until what was queued so far was handled; whether it was within ``timeout``."""
        with self._count:
            return self._count.wait_for(lambda: self._pending == 0 or not self.running, timeout) \
                and self._pending == 0

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_s if self.tick_s else float("inf")
        try:
            while not self._abandoned:
                try:
                    entry = self._q.get(timeout=max(0.0, next_tick - time.monotonic())) if self.tick_s else self._q.get()
                except queue.Empty:
                    entry = TICK
                if entry is None:
                    break
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + (self.tick_s or 0.0)
                    self._handle(TICK)
                if entry is TICK:
                    continue
                item, done = entry
                try:
                    self._handle(item)
                finally:
                    self._handled(done)
        finally:
            with self._count:  # flush() stops waiting for a thread that is gone
                self._count.notify_all()

    def _handle(self, item: Any) -> None:
        with self.lock:
            try:
                self.handle(item)
            except StreamrecError as exc:  # a database that did not answer in time (at close): one line
                self.errors += 1
                logger.error("%s: %s", self.name, exc)
            except Exception:  # noqa: BLE001 - one item's failure (a bug) must not stop the others
                self.errors += 1
                logger.exception("%s: cannot handle %s", self.name, str(item)[:120])

    def _handled(self, done: threading.Event | None) -> None:
        with self._count:
            self._pending -= 1
            self._labels -= done is None
            self._count.notify_all()
        if done is not None:
            done.set()

    def stop(self, timeout: float = STOP_S) -> None:
        """Handle what is queued (``closing`` is set first: a handler may give up waiting), then
        stop the thread; what it has not reached within ``timeout`` is left to :meth:`drain`."""
        self.closing.set()
        if self._thread is None or not self._thread.is_alive():
            return
        self._q.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandoned = True  # it stops after the item in hand
            logger.warning("%s: still busy after %.0f s; %d queued items are handled at close", self.name, timeout,
                           self.queued())

    def drain(self, *, labels: bool = True, wait: float = 1.0) -> int:
        """Handle, in this thread, what is queued while no thread runs (``labels=False``: drop the
        labels, handle the rest); how many items were handled. The thread, given up on by
        :meth:`stop`, may finish its item meanwhile (``wait`` s at most); nothing while it is
        still in it (a write the database does not answer): the items would wait for it."""
        if self.running:
            return 0
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(wait)
            if self._thread.is_alive():
                return 0
        n = 0
        while True:
            try:
                entry = self._q.get_nowait()
            except queue.Empty:
                return n
            if entry is None:
                continue
            item, done = entry
            if labels or done is not None:
                self._handle(item)
                n += 1
            self._handled(done)

    def close(self, wait: float = 1.0) -> None:
        """From now on :meth:`put` handles items in the caller's thread and labels are dropped
        (what is queued too, see :meth:`drain`)."""
        with self._count:
            self._closed = True
        self.drain(labels=False, wait=wait)
