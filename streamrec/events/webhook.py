"""Webhook delivery: one JSON POST per notification, signed, with no redirects followed.

The body is the notification's payload (``{"type": "event_start"|"event_end", "event": {...}}``)
as stored in the outbox, byte for byte, with the headers

* ``Content-Type: application/json``
* ``X-Streamrec-Event: event_start`` (or ``event_end``)
* ``X-Streamrec-Signature: sha256=<hex>`` when a secret is set: HMAC-SHA256 of the body under the
  secret, for the receiver to check (:func:`signature`).

Any 2xx answer is a delivery. Every other answer, a timeout or a refused connection is a failure,
retried from the outbox. **No redirect is followed**, to any host, the same one included: a
redirect would send the event (and its signature) somewhere the config does not name, and
urllib would turn the POST into a GET without the body; a webhook must answer itself. A 3xx is
a failure whose error names the status and where it pointed. User information in the URL
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
import socket
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from streamrec.event_config import WebhookConfig, tls_context
from streamrec.events.store import Notification
from streamrec.live.sources import mask_credentials

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024  # read (and ignore) at most this much of an answer


def signature(body: bytes, secret: str) -> str:
    """The ``X-Streamrec-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: the 3xx answer comes back as an ``HTTPError`` with its status."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None


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


class WebhookSender:
    """POSTs notifications to ``config.url`` (:meth:`send`); stateless but for its opener."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.url, self.authorization = split_userinfo(config.url)
        self.where = mask_credentials(config.url)
        tls = urllib.request.HTTPSHandler(context=tls_context(config.ca_file, "[notify.webhook]"))
        self._opener = urllib.request.build_opener(RefuseRedirects, tls)

    def request(self, note: Notification) -> urllib.request.Request:
        body = note.payload.encode()
        headers = {"Content-Type": "application/json", "X-Streamrec-Event": note.kind,
                   "User-Agent": "streamrec-webhook"}
        if self.config.secret:
            headers["X-Streamrec-Signature"] = signature(body, self.config.secret)
        if self.authorization:
            headers["Authorization"] = self.authorization
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def send(self, note: Notification) -> str | None:
        """POST ``note``; ``None`` when the answer is a 2xx, else why it was not delivered."""
        try:
            with self._opener.open(self.request(note), timeout=self.config.timeout) as answer:
                try:
                    answer.read(MAX_ANSWER_BYTES)
                except OSError:
                    pass  # the 2xx status said it: delivered, whatever happens to the rest of the answer
                return None
        except urllib.error.HTTPError as exc:
            with exc:
                if 300 <= exc.code < 400:
                    target = mask_credentials(exc.headers.get("Location") or "nowhere")
                    return f"HTTP {exc.code} redirect to {target} not followed: the webhook must answer 2xx itself"
                return f"HTTP {exc.code} {exc.reason}".strip()
        except urllib.error.URLError as exc:
            return self.unreachable(exc.reason)
        except (TimeoutError, socket.timeout):
            return f"no answer within {self.config.timeout:g} s"
        except OSError as exc:  # a connection reset while reading the answer, a TLS error
            return self.unreachable(exc)

    def unreachable(self, reason: object) -> str:
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {self.config.timeout:g} s"
        text = str(getattr(reason, "strerror", None) or reason)
        return mask_credentials(f"cannot reach the webhook: {text}")
