"""Webhook delivery: one JSON POST per notification, signed, with no redirects followed.

The body is the notification's payload (``{"type": "event_start"|"event_end", "event": {...}}``)
as stored in the outbox, byte for byte, with the headers

* ``Content-Type: application/json``
* ``X-Streamrec-Event: event_start`` (or ``event_end``)
* ``X-Streamrec-Signature: sha256=<hex>`` (unless ``sign = false``): HMAC-SHA256 of the body
  under the secret, for the receiver to check (:func:`signature`).

Any 2xx answer is a delivery. Every other answer, a timeout or a refused connection is a failure,
retried from the outbox. ``timeout`` bounds the whole delivery, from looking up the host name
(in a helper thread: a slow resolver cannot hold it up) to the end of the answer: a receiver
that sends its answer (or its TLS handshake) a byte at a time is cut off when the time is up.
An international host name is looked up and sent (``Host``) as IDNA.
**No redirect is followed**, to any host, the same one included: a redirect would send the event
(and its signature) somewhere the config does not name; a webhook must answer itself. A 3xx is a
failure whose error names the status and where it pointed. User information in the URL
(``https://user:pass@host/hook``) is sent as HTTP Basic authentication, never logged.

Example:
    >>> signature(b'{"type": "event_start"}', "s3cret")
    'sha256=3e1ddb36ccd88370f4c0452a66b74beca70cab6bbc66779c1484230d9d0362fd'
    >>> split_userinfo("https://bot:p%40ss@hooks.example:8443/in?x=1")
    ('https://hooks.example:8443/in?x=1', 'Basic Ym90OnBAc3M=')
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import http.client
import socket
import ssl
import threading
import time
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from streamrec.event_config import WebhookConfig, tls_context
from streamrec.events.store import Notification
from streamrec.notify_checks import ascii_host, ascii_target
from streamrec.redact import mask_quoted, mask_url, printable

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024  # read (and ignore) at most this much of an answer
REMOTE_TEXT_MAX = 300  # characters of a server's reason phrase or Location kept in errors and logs


def signature(body: bytes, secret: str) -> str:
    """The ``X-Streamrec-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def split_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` without its user information, and the ``Authorization`` header for it (or ``None``)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    user, password = unquote(parts.username), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


class Deadline:
    """Ends a request that is not over within ``seconds``, however slowly its answer trickles in:
    when the time is up, the connection's socket (:meth:`guard`) is shut down, which ends any
    read or write blocked on it. A socket timeout alone would not do: it restarts with each byte."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def left(self) -> float:
        """Seconds until the deadline (0 once it has passed or the delivery was ended)."""
        return 0.0 if self.expired else max(0.0, self.ends - time.monotonic())

    def guard(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sock = sock
            expired = self.expired
        if expired:
            self.shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired, sock = True, self._sock
        if sock is not None:
            self.shut(sock)

    @staticmethod
    def shut(sock: socket.socket) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket under any TLS layer
        except OSError:
            pass  # already closed


def resolve(host: str, port: int, deadline: Deadline) -> list[tuple]:
    """``host``'s addresses (``socket.getaddrinfo``), or a ``TimeoutError`` once ``deadline`` has
    passed while a slow resolver still looks it up (it goes on in its daemon thread, unheard)."""
    box: list = []
    done = threading.Event()

    def look_up() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            box.append(exc if isinstance(exc, OSError) else OSError(f"cannot look up {host!r}: {exc}"))
        done.set()

    threading.Thread(target=look_up, name="webhook-resolve", daemon=True).start()
    while not done.wait(min(0.1, deadline.left())):
        if deadline.left() <= 0:
            raise TimeoutError(f"the name {host!r} was not looked up in time")
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


class WebhookSender:
    """POSTs notifications to ``config.url`` (:meth:`send`); each delivery is over within
    ``config.timeout`` seconds, from connecting to the end of the answer."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.url, self.authorization = split_userinfo(config.url)
        self.where = mask_url(config.url)
        parts = urlsplit(self.url)
        self.tls = tls_context(config.ca_file, "[notify.webhook]") if parts.scheme == "https" else None
        self.host = ascii_host(parts.hostname or "")  # an international name as DNS and TLS read it
        self.port = parts.port or (443 if self.tls else 80)
        self.path = ascii_target(parts.path, parts.query)  # http.client sends ASCII alone
        hostport = parts.netloc.rpartition("@")[2]
        self.host_header = hostport if hostport.isascii() else self.host + (f":{parts.port}" if parts.port else "")
        self._lock = threading.Lock()
        self._current: Deadline | None = None  # the delivery in progress
        self._aborted = False

    def headers(self, note: Notification) -> dict[str, str]:
        body = note.payload.encode()
        headers = {"Host": self.host_header, "Content-Type": "application/json", "X-Streamrec-Event": note.kind,
                   "User-Agent": "streamrec-webhook", "Content-Length": str(len(body)), "Connection": "close"}
        if self.config.sign and self.config.secret:
            headers["X-Streamrec-Signature"] = signature(body, self.config.secret)
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    def send(self, note: Notification) -> str | None:
        """POST ``note``; ``None`` when the answer is a 2xx, else why it was not delivered."""
        timeout = self.config.timeout
        with Deadline(timeout) as deadline:
            with self._lock:
                self._current = deadline
            if self._aborted:
                deadline.expire()
            try:
                return self.post(note, deadline)
            except (OSError, http.client.HTTPException) as exc:
                if self._aborted:
                    return "stopped before the webhook answered (sent again at the next start)"
                if deadline.expired or isinstance(exc, (TimeoutError, socket.timeout)):
                    return f"no complete answer within {timeout:g} s (timeout)"
                return self.unreachable(exc)
            finally:
                with self._lock:
                    self._current = None

    def abort(self) -> None:
        """End the delivery in progress now, and any later one at once (streamrec is stopping)."""
        with self._lock:
            self._aborted, current = True, self._current
        if current is not None:
            current.expire()

    def post(self, note: Notification, deadline: Deadline) -> str | None:
        raw = self.connect(deadline)
        conn_cls = http.client.HTTPSConnection if self.tls else http.client.HTTPConnection
        conn = conn_cls(self.host, self.port, timeout=self.config.timeout, **({"context": self.tls} if self.tls else {}))
        answer = None
        try:
            conn.sock = self.secure(raw, deadline) if self.tls else raw
            conn.request("POST", self.path, body=note.payload.encode(), headers=self.headers(note))
            answer = conn.getresponse()
            if deadline.expired:  # the headers were cut short: not a whole answer
                raise TimeoutError("the answer's headers did not arrive in time")
            if 200 <= answer.status < 300:
                try:
                    answer.read(MAX_ANSWER_BYTES)
                except (OSError, http.client.HTTPException):
                    pass  # the 2xx status said it: delivered, whatever happens to the rest of the answer
                return None
            if 300 <= answer.status < 400:
                target = self.redirect_target(answer.getheader("Location"))
                return f"HTTP {answer.status} redirect to {target} not followed: the webhook must answer 2xx itself"
            return printable(f"HTTP {answer.status} {answer.reason}".strip(), limit=REMOTE_TEXT_MAX)  # the server's words
        finally:
            if answer is not None:
                answer.close()  # the answer holds the connection open until it is closed too
            conn.close()
            raw.close()

    def redirect_target(self, location: str | None) -> str:
        """A redirect's ``Location`` as it may be logged: made whole against the webhook's URL (a
        relative ``/hook/?token=...`` keeps the query of ours), masked, on one line."""
        if not location:
            return "nowhere"
        try:
            whole = urljoin(self.config.url, location.strip())
        except ValueError:  # a malformed address (an unclosed IPv6 bracket): shown as masked text
            whole = location
        return printable(mask_quoted(mask_url(whole), self.config.url), limit=REMOTE_TEXT_MAX)

    def secure(self, raw: socket.socket, deadline: Deadline) -> ssl.SSLSocket:
        """``raw`` under TLS, the deadline guarding the TLS socket: wrapping detaches ``raw`` (its
        descriptor passes to the TLS socket), so a guard left on it could no longer shut anything
        and an answer trickled after the handshake would hold the delivery past its timeout."""
        sock = self.tls.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        deadline.guard(sock)
        sock.do_handshake()
        return sock

    def connect(self, deadline: Deadline) -> socket.socket:
        """A TCP connection to the webhook within ``deadline``: the name is looked up in a helper
        thread (a resolver cannot be interrupted), each address is tried with the time left."""
        error: OSError = OSError(f"no address for {self.host}")
        for family, kind, proto, _, address in resolve(self.host, self.port, deadline):
            sock = socket.socket(family, kind, proto)
            deadline.guard(sock)
            try:
                sock.settimeout(deadline.left() or 0.001)
                sock.connect(address)
                sock.settimeout(self.config.timeout)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    def unreachable(self, reason: object) -> str:
        text = str(getattr(reason, "strerror", None) or reason)
        return printable(mask_quoted(f"cannot reach the webhook: {text}", self.config.url))
