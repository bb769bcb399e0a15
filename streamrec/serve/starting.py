"""``streamrec serve`` answers on its address from the first second, while the models are prepared.

A first start on a machine can take a minute: a model's first CPU load (a child process,
:mod:`streamrec.runtime.firststart`) and ``--backend auto`` timing every backend once. Meanwhile
:class:`StartingServer` holds serve's listening socket and answers: ``/`` is the page, which
says "preparing the model (about N s)" and what is being done; ``/healthz`` says
``{"status": "starting", "preparing": {...}}`` (without the token, only the status and the message);
anything else
is a 503 with ``Retry-After``. When the models are ready the same socket goes to the web server
(:meth:`StartingServer.handoff`): a connection made meanwhile waits in the socket's queue and is
answered by the real server; none is refused.

What is being done is the newest ``INFO`` line of the ``streamrec`` loggers, the one the terminal
shows too. The estimate is the duration of the last start of the same models on this machine
(kept in ``starts.json`` in the cache), else a guess from what has to be done.

Test hook: with ``STREAMREC_START_GATE`` set to a file path, the preparation waits (saying so)
until that file exists, so that a test sees the preparing server for as long as it needs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from streamrec.errors import StreamrecError
from streamrec.fsutil import atomic_write_text
from streamrec.serve.heads import host_allowed, request_host, unreserved
from streamrec.serve.tokens import token_exchange, token_source
from streamrec.serve.server import page_html

logger = logging.getLogger(__name__)
STUCK_S = 3.0  # seconds a start has after SIGTERM or Ctrl-C to end before serve exits without it
HEADER_TIMEOUT_S = 5.0  # seconds a connection has to send its request (as the web server's default header timeout)


def _gone(self, request, client_address) -> None:
    """A connection that failed (the client went away, timed out): logged, not printed as a traceback."""
    import sys

    logger.debug("starting server: request from %s failed: %s", client_address, sys.exc_info()[1])

GATE_ENV = "STREAMREC_START_GATE"  # test hook: wait for this file before preparing
FIRST_LOAD_S = 20.0  # a model's first CPU load (torchvision import, weights, the prepared-model cache)
TIMING_S = 30.0  # --backend auto timing every backend once, per model
CACHED_S = 3.0  # everything cached: read the prepared model, build the chosen backend


def estimate_seconds(cache: Path, key: str, *, first_loads: int, timings: int) -> float:
    """The last recorded start of ``key`` on this machine, else a guess from the number of
    first loads and backend timings to do.

    Example:
        >>> estimate_seconds(Path("/nonexistent"), "m", first_loads=1, timings=1)
        53.0
    """
    try:
        recorded = json.loads((cache / "starts.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, (int, float)) and recorded > 0:
        return float(recorded)
    return first_loads * FIRST_LOAD_S + timings * TIMING_S + CACHED_S


def record_seconds(cache: Path, key: str, seconds: float) -> None:
    """Keep how long the start of ``key`` took, for the next estimate (best effort)."""
    path = cache / "starts.json"
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    known[key] = round(seconds, 1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(known, indent=1))  # never a half-written file
    except OSError as exc:
        logger.debug("cannot keep the start time in %s: %s", path, exc)


class _Doing(logging.Handler):
    """Keeps the newest INFO line of the ``streamrec`` loggers: what the start is doing."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text = "starting"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.text = record.getMessage()[:300]
        except Exception:  # noqa: BLE001 - a bad log call must not stop the start
            pass


class StartingServer:
    """Serve's address while the models are prepared; see the module's docstring."""

    def __init__(self, host: str, port: int, *, token: str | None, allowed_hosts: tuple[str, ...] = (),
                 expected_s: float) -> None:
        self.token = token or ""
        self.allowed_hosts = tuple(allowed_hosts)
        self.expected_s = expected_s
        self.started = time.monotonic()
        self.doing = _Doing()
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            raise StreamrecError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
        server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True,
                                                                "allow_reuse_address": True, "handle_error": _gone})
        try:
            self.httpd = server_class((host, port), self._handler_class())
        except OSError as exc:
            raise StreamrecError(f"--port {port}: cannot listen on {host}: {exc.strerror or exc}") from None
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def message(self) -> str:
        return f"preparing the model (about {round(self.expected_s)} s)"

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def state(self) -> dict:
        """``/healthz``'s answer with the token."""
        return {"status": "starting", "preparing": {
            "message": self.message, "expected_s": round(self.expected_s), "doing": self.doing.text,
            "elapsed_s": round(self.elapsed_s(), 1)}}

    def start(self) -> "StartingServer":
        logging.getLogger("streamrec").addHandler(self.doing)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="starting-server", daemon=True)
        self._thread.start()
        logger.info("%s; the page is up meanwhile: http://%s:%d/", self.message, self.host, self.port)
        return self

    def wait_for_gate(self) -> None:
        """Test hook: wait until the file ``$STREAMREC_START_GATE`` exists (no wait without it)."""
        gate = os.environ.get(GATE_ENV)
        if gate:
            logger.info("waiting for %s (%s)", gate, GATE_ENV)
            while not Path(gate).exists():
                time.sleep(0.05)

    def _stop_answering(self) -> None:
        logging.getLogger("streamrec").removeHandler(self.doing)
        if self._thread is not None:
            self.httpd.shutdown()  # the accept loop ends; the socket stays open and listening
            self._thread.join()
            self._thread = None

    def handoff(self) -> socket.socket:
        """Stop answering and give the listening socket (connections waiting in its queue included)."""
        self._stop_answering()
        return self.httpd.socket

    def close(self) -> None:
        """Stop answering and close the socket (the start failed)."""
        self._stop_answering()
        self.httpd.server_close()

    def _handler_class(self) -> type:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = HEADER_TIMEOUT_S  # a request that does not come (or a client that stops reading) lets go of its thread

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    owner.answer(self)
                except ValueError:  # urlsplit: a target that is no URL ("http://[::1/")
                    owner._send(self, HTTPStatus.BAD_REQUEST, "text/plain", b"malformed request\n")

            do_HEAD = do_GET  # noqa: N815 - the same status and headers; _send leaves the body out

            def __getattr__(self, name: str):  # do_POST, do_PUT...: any other method
                if name.startswith("do_"):
                    return self.do_GET  # answer() says 405 (503 under /api/)
                raise AttributeError(name)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
                logger.debug("starting server: " + format, *args)

        return Handler

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        """The token in the query, ``Authorization: Bearer`` or the page's cookie, as the server takes it."""
        return token_source(req.path, req.headers, self.token) is not None

    def answer(self, req: BaseHTTPRequestHandler) -> None:
        """One GET: as the web server would answer it, while the models are prepared."""
        hosts = req.headers.get_all("Host") or []
        path = unreserved(urlsplit(req.path).path)
        if len(hosts) != 1:
            return self._send(req, HTTPStatus.BAD_REQUEST, "text/plain", b"exactly one Host header is required\n")
        if not host_allowed(request_host(req.path, hosts[0]), bound=self.host, port=self.port, allowed=self.allowed_hosts):
            return self._send(req, HTTPStatus.MISDIRECTED_REQUEST, "text/plain",
                              b"this server does not answer to that Host name (see serve --allowed-host)\n")
        if req.command not in ("GET", "HEAD") and not path.startswith("/api/"):
            return self._send(req, HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"GET or HEAD only\n")
        if path == "/healthz":
            body = self.state() if self._authorized(req) else {"status": "starting", "preparing": {"message": self.message}}
            return self._send(req, HTTPStatus.OK, "application/json", json.dumps(body).encode())
        if path == "/" and self._authorized(req):
            if token_source(req.path, req.headers, self.token) == "query":  # traded for the cookie, as later
                return self._send(req, HTTPStatus.SEE_OTHER, "text/plain", b"", *token_exchange(req.path, self.token))
            return self._send(req, HTTPStatus.OK, "text/html; charset=utf-8", page_html())
        if path == "/":
            return self._send(req, HTTPStatus.UNAUTHORIZED, "text/plain", b"missing or wrong token: open /?token=...\n")
        self._send(req, HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", f"{self.message}\n".encode())

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: HTTPStatus, content_type: str, body: bytes,
              *extra: tuple[str, str]) -> None:
        req.send_response(status)
        for name, value in extra:
            req.send_header(name, value)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            req.send_header("Retry-After", "2")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            req.send_header("Allow", "GET, HEAD")
        req.send_header("Connection", "close")
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)


class StopServing(BaseException):
    """SIGTERM or Ctrl-C while the models are prepared (a BaseException: no ``except Exception`` keeps it)."""


class StopSignals:
    """While in its ``with``, SIGTERM and SIGINT raise :class:`StopServing` in the main thread (once:
    a second signal, or one after :meth:`disarm`, is ignored until the ``with`` ends). A first-start
    child process that runs meanwhile is killed on the way out (``subprocess.run``); a signal while
    disarmed is kept in ``pending``. ``fired`` names the signal that stopped the start, even where a
    library swallowed the exception (PyAV opening a camera). When the ``with`` has not ended
    ``grace_s`` after that signal (a C call that does not return: a camera that does not answer),
    ``on_stuck(name)`` is called from a thread that watches the signal's wakeup file descriptor."""

    def __init__(self, on_stuck: Callable[[str], None] | None = None, grace_s: float = STUCK_S) -> None:
        self.armed = True
        self.fired: str | None = None
        self.pending: str | None = None  # a signal that came while disarmed
        self._old: dict = {}
        self._on_stuck, self._grace_s = on_stuck, grace_s
        self._done = threading.Event()
        self._wakeup: tuple[int, int] | None = None

    def _stop(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if not self.armed:
            self.pending = name
            return
        self.armed, self.fired = False, name
        raise StopServing(name)

    def disarm(self) -> None:
        self.armed = False

    def _watch(self, read_fd: int) -> None:
        """The signal's byte, written by the C-level handler while the main thread may be inside
        a C call that holds it (the Python handler runs only when that returns)."""
        try:
            byte = os.read(read_fd, 1)
        except OSError:
            byte = b""
        finally:
            os.close(read_fd)
        if byte and not self._done.wait(self._grace_s) and self._on_stuck is not None:
            self._on_stuck(signal.Signals(byte[0]).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            if self._on_stuck is not None:
                read_fd, write_fd = os.pipe()
                os.set_blocking(write_fd, False)
                self._wakeup = (write_fd, signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False))
                threading.Thread(target=self._watch, args=(read_fd,), name="stop-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._wakeup[1])
            os.close(self._wakeup[0])  # the watcher reads the end of the pipe and ends
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def stop_now(name: str) -> None:
    """:class:`StopSignals`'s ``on_stuck`` for serve: the start did not end in time; exit 0 at once
    (the listening socket is released with the process)."""
    import sys

    logger.info("stopped (%s) while preparing the model (without waiting for the start to end)", name)
    sys.stderr.flush()
    os._exit(0)


def start_answering(config, models: list[tuple[str | None, str]], cache: Path) -> tuple[StartingServer, str]:
    """A started :class:`StartingServer` on ``config``'s address for a start of ``models``, and the
    key under which to :func:`record_seconds` how long the start took."""
    from streamrec.runtime.firststart import first_start_work

    loads, timings = first_start_work(cache, models, device=config.device, backend=config.backend)
    key = f"{sorted(set(map(str, models)))}|{config.device}|{config.backend}|loads={loads}|timings={timings}"
    server = StartingServer(config.host, config.port, token=config.token, allowed_hosts=config.allowed_hosts,
                            expected_s=estimate_seconds(cache, key, first_loads=loads, timings=timings))
    return server.start(), key
