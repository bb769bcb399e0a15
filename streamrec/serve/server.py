"""The asyncio HTTP + WebSocket server: ``/``, ``/healthz``, ``/metrics``, the JSON API and
``/ws`` (whose browsers the :class:`~streamrec.serve.hub.Hub` feeds).

The event loop owns every socket; an API request runs in a thread of its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import MultipleValuesError
from websockets.http11 import Request, Response

from streamrec.serve.hub import Hub
from streamrec.serve.files import FileBody, file_response
from streamrec.fsutil import raise_fd_limit
from streamrec.serve.guard import ConnectionGuard, GuardedConnection, Limits, sparse
from streamrec.serve.answers import StreamedResponse, without_body
from streamrec.redact import mask_credentials, printable
from streamrec.serve.heads import host_allowed, request_host, strict_json, unreserved
from streamrec.serve.answers import http_response as _response
from streamrec.serve.tokens import cookie_refusal, cross_origin, token_exchange, token_source

logger = logging.getLogger(__name__)

# headers of which one counts: a request that repeats one is answered 400 (never a guess between them)
ONE_ONLY = ("Host", "Origin", "Authorization", "Range", "If-Range", "Content-Type", "Upgrade", "Sec-Fetch-Site", "Referer")


def stop_on_signals(loop: asyncio.AbstractEventLoop, request_stop: Callable[[], None]) -> None:
    """Ctrl-C and SIGTERM call ``request_stop`` on ``loop`` (skipped where signals cannot be
    handled: a loop outside the main thread, as in the tests)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass


@dataclass(frozen=True)
class Route:
    """A GET handler: ``body()`` -> bytes."""

    content_type: str
    body: Callable[[], bytes]
    public: Callable[[], bytes] | None = None  # what a request without the token gets (None: a 401)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # JSON-serialisable, or a FileBody
    allow: tuple[str, ...] = ("GET", "HEAD")  # the methods a 405 names in its Allow header


@dataclass(frozen=True)
class ApiRoute:
    """A JSON handler for any method: ``handler(method, path, query, body)`` -> :class:`Reply`, where
    ``body`` is the request's JSON body (strict JSON, sent as ``Content-Type: application/json``),
    ``None`` without one.
    ``admin`` routes always need the token (and are off when none is set). A ``HEAD`` is handled
    as a ``GET`` and answered without the body."""

    handler: Callable[[str, str, dict[str, list[str]], Any], Reply]
    admin: bool = False
    admin_methods: tuple[str, ...] = ()  # methods that need the token even where the route does not
    # whether the route reads a body for (method, path): only then is one parsed (and refused when
    # it is no JSON object); elsewhere a body is left unread and the route answers 404 or 405
    reads_body: Callable[[str, str], bool] | None = None


class WebServer:
    """Serves the page and the websocket. ``routes`` maps paths to GET handlers."""

    def __init__(
        self,
        hub: Hub,
        *,
        host: str,
        port: int,
        routes: dict[str, Route],
        api: dict[str, ApiRoute] | None = None,
        token: str | None = None,
        compression: str | None = None,
        allowed_hosts: tuple[str, ...] = (),
        limits: Limits = Limits(),
    ) -> None:
        """``allowed_hosts``: ``Host`` names served besides the bound address (and the loopback
        names of a loopback bind); ``limits``: connections and header timeout (see
        :mod:`streamrec.serve.guard`)."""
        self.hub = hub
        self.allowed_hosts = tuple(allowed_hosts)
        self.limits = limits
        self.guard: ConnectionGuard | None = None
        # per-message deflate (websockets' default) compresses every message once per client: the
        # preview JPEGs, most of the bytes, do not shrink, and the JSON messages are a few hundred
        # bytes. Off by default; benchmarks/ws_compression.py measures what it costs.
        self.compression = compression
        self.host = host
        self.port = port
        self.routes = routes
        self.api = api or {}
        self.token = token
        self._server: Server | None = None
        self._closed = False
        self.misdirected = 0  # requests refused for their Host (421)
        self.sock: socket.socket | None = None  # a socket already listening on host:port, to serve on instead

    async def start(self) -> None:
        self.hub.loop = asyncio.get_running_loop()
        self.guard = ConnectionGuard(self.limits, raise_fd_limit())
        where = {"sock": self.sock} if self.sock is not None else {"host": self.host, "port": self.port}
        self._server = await serve(
            self._handler,
            **where,
            process_request=self._process_request,
            process_response=self._process_response,
            create_connection=functools.partial(GuardedConnection, guard=self.guard),  # type: ignore[arg-type]
            max_size=2**16,
            compression=self.compression,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=1,
            # the opening handshake includes process_request: adding a camera at run time may load a
            # model (seconds to a minute on a small CPU) before the API's reply; websockets' default is 10 s.
            # The request line and headers themselves must come within limits.header_timeout_s (_Connection).
            open_timeout=300,
            write_limit=2**18,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        """Stop listening and close every client (idempotent)."""
        if self._closed or self._server is None:
            return
        self._closed = True
        self._server.close(close_connections=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.5)
        except asyncio.TimeoutError:
            logger.warning("some websocket clients did not close in time")

    def _authorized(self, request: Request) -> str | None:
        return token_source(request.path, request.headers, self.token)

    def _refusal(self, request: Request) -> Response | None:
        """A 400 for a request that repeats a header only one of which can count, a 421 for a
        ``Host`` that does not name this server (DNS rebinding: see :mod:`streamrec.serve.guard`)."""
        if not request.path.startswith("/"):  # absolute-form: an http(s) URL only (RFC 9112 3.2.2); "*" never
            target = urlsplit(request.path)
            if target.scheme not in ("http", "https") or not target.netloc:
                return _response(HTTPStatus.BAD_REQUEST, "text/plain", b"expected a path or an http(s) URL as the target\n")
        for name in ONE_ONLY:
            if len(request.headers.get_all(name)) > 1:
                return _response(HTTPStatus.BAD_REQUEST, "text/plain", f"more than one {name} header\n".encode())
        hosts = request.headers.get_all("Host")
        if not hosts:
            return _response(HTTPStatus.BAD_REQUEST, "text/plain", b"a Host header is required\n")
        host = request_host(request.path, hosts[0])
        if not host_allowed(host, bound=self.host, port=self.port, allowed=self.allowed_hosts):
            self.misdirected += 1  # logged at 1, 10, 100, then every 1000: a page of any site can send them
            if sparse(self.misdirected):
                logger.info("refused a request for Host %r (not this server; see --allowed-host; %d refused so far)",
                            host[:100], self.misdirected)
            return _response(HTTPStatus.MISDIRECTED_REQUEST, "text/plain",
                             b"this server does not answer to that Host name (see serve --allowed-host)\n")
        if not request.path.startswith("/") and urlsplit(request.path).netloc.lower() != hosts[0].strip().lower():
            return _response(HTTPStatus.BAD_REQUEST, "text/plain",  # the Origin and cookie checks read the Host header
                             b"the Host header does not name the server of the request target\n")
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | Awaitable[Response] | None:
        try:
            return self._route(request, getattr(connection, "body", b""))
        except MultipleValuesError as exc:  # a header read as one that came more than once (see ONE_ONLY)
            return _response(HTTPStatus.BAD_REQUEST, "text/plain", f"more than one {exc.args[0][:40]} header\n".encode())
        except ValueError:  # urlsplit: a path or Origin that is no URL ("//[", "http://[::1")
            return _response(HTTPStatus.BAD_REQUEST, "text/plain", b"malformed request\n")
        except Exception:  # noqa: BLE001 - an answer in every case
            logger.exception("request %s %s failed", request.method, logged_path(request.path))
            return _response(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"internal error\n")

    @staticmethod
    def _process_response(connection: ServerConnection, request: Request,
                          response: Response) -> Awaitable[Response] | None:
        """An HTTP answer is written whole by the connection (:meth:`GuardedConnection.answer`); a
        ``HEAD`` gets the status and headers a ``GET`` would, without the body."""
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        return connection.answer(without_body(response) if request.method == "HEAD" else response)  # type: ignore[attr-defined]

    def _route(self, request: Request, body: bytes) -> Response | Awaitable[Response] | None:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if request.path.startswith("//"):  # urlsplit would read "//name" as a host and act on the rest
            return _response(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        path = unreserved(urlsplit(request.path).path) or "/"  # /%68ealthz is /healthz; http://host is /
        if path == "/ws":
            if request.method not in ("GET", "HEAD"):
                return _response(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"a websocket opens with GET\n", ("Allow", "GET, HEAD"))
            if self._authorized(request) is None:
                return _response(HTTPStatus.UNAUTHORIZED, "text/plain", b"missing or wrong token\n")
            if cross_origin(request.headers):
                return _response(HTTPStatus.FORBIDDEN, "text/plain", b"cross-origin websocket refused\n")
            if request.method == "HEAD" or "websocket" not in request.headers.get("Upgrade", "").lower():
                return _response(HTTPStatus.UPGRADE_REQUIRED, "text/plain", b"a websocket opens with GET\n",
                                 ("Upgrade", "websocket"))  # a HEAD gets what a GET without the upgrade gets
            return None  # go on with the websocket handshake
        api = next((r for prefix, r in self.api.items() if path == prefix or path.startswith(prefix + "/")), None)
        if api is not None:  # in a thread of its own: adding a camera opens its source and may load a model
            segments = path.split("/")[1:]  # no empty one (a trailing or doubled /), none that names a / (%2F)
            if "" in segments or any("/" in unquote(seg) for seg in segments):
                return _json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return self._api_in_thread(api, request, unquote(path), body)  # DELETE /api/cameras/caf%C3%A9
        route = self.routes.get(path)
        if route is None:
            return _response(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        if request.method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"GET or HEAD only\n", ("Allow", "GET, HEAD"))
        via = self._authorized(request)
        if via is None and route.public is None:
            return _response(HTTPStatus.UNAUTHORIZED, "text/plain", b"missing or wrong token: open /?token=...\n")
        if via == "query" and path == "/":  # the page's token, traded for a cookie (see streamrec.serve.tokens)
            return _response(HTTPStatus.SEE_OTHER, "text/plain", b"", *token_exchange(request.path, self.token or ""))
        try:
            body = route.body() if via is not None else route.public()
        except Exception:  # noqa: BLE001
            logger.exception("handler for %s failed", printable(path))
            return _response(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"internal error\n")
        return _response(HTTPStatus.OK, route.content_type, body)

    async def _api_in_thread(self, route: ApiRoute, request: Request, path: str, body: bytes) -> Response:
        """:meth:`_api` in a daemon thread, so the loop keeps serving meanwhile and a shutdown
        does not wait for it (asyncio's executor threads are joined at exit)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Response] = loop.create_future()

        def settle(response: Response) -> None:
            if not done.done():
                done.set_result(response)
            elif isinstance(response, StreamedResponse):  # the connection went meanwhile
                response.close()

        def work() -> None:
            try:
                response = self._api(route, request, path, body)
            except BaseException:  # noqa: BLE001 - the request is answered in every case
                logger.exception("API request %s %s failed", request.method, printable(path))
                response = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            try:
                loop.call_soon_threadsafe(settle, response)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting
                pass

        try:
            threading.Thread(target=work, name="api", daemon=True).start()
        except RuntimeError as exc:  # no thread can be started now
            logger.warning("API request %s %s refused: %s", request.method, printable(path), exc)
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the server is too busy: try again"})
        return await done

    def _api(self, route: ApiRoute, request: Request, path: str, body: bytes) -> Response:
        admin = route.admin or request.method in route.admin_methods
        if admin and not self.token:
            return _json(HTTPStatus.FORBIDDEN, {"error": "the admin API needs the server to run with --token"})
        via = self._authorized(request)
        if via is None:
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong token"})
        method = "GET" if request.method == "HEAD" else request.method
        why = None if via != "cookie" or method == "GET" else cookie_refusal(request.headers)
        if why is not None:
            return _json(HTTPStatus.FORBIDDEN, {"error": f"{method} {path}: {why}"})
        reads = route.reads_body is not None and method in ("POST", "PUT") and route.reads_body(method, path)
        try:  # a body means something where the route reads one: elsewhere it is not read
            data = json_body(body, request.headers.get("Content-Type")) if reads else None
        except ValueError as exc:
            return _json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE if "Content-Type" in str(exc) else HTTPStatus.BAD_REQUEST,
                         {"error": str(exc)})
        try:
            query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)  # zone= is the whole frame
            reply = route.handler(method, path, query, data)
            if isinstance(reply.body, FileBody):
                return file_response(reply.body, request.headers)
            allow = [("Allow", ", ".join(reply.allow))] if reply.status == HTTPStatus.METHOD_NOT_ALLOWED else []
            return _json(HTTPStatus(reply.status), reply.body, *allow)
        except MultipleValuesError as exc:
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"more than one {exc.args[0][:40]} header"})
        except Exception:  # noqa: BLE001
            logger.exception("API handler for %s %s failed", request.method, printable(path))
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    async def _handler(self, ws: ServerConnection) -> None:
        await self.hub.serve_client(ws)


def _json(status: HTTPStatus, body: Any, *extra: tuple[str, str]) -> Response:
    """A JSON answer: strict JSON (a NaN raises ``ValueError``: the caller answers 500 instead)."""
    return _response(status, "application/json", json.dumps(body, allow_nan=False).encode(), *extra)


def logged_path(target: str) -> str:
    """A request target as a log shows it: the path only (the query may hold the ``--token``), on one line."""
    return printable(target.partition("?")[0].partition("#")[0], limit=200)


def json_body(body: bytes, content_type: str | None) -> Any:
    """A request's ``body`` read as strict JSON, a JSON object (``None`` without a body); a
    :class:`ValueError` that says why not. Only ``application/json`` is read: a browser sends a page's cross-site form or
    ``text/plain`` post without asking first, never JSON."""
    if not body:
        return None
    kind, _, params = (content_type or "").partition(";")
    charset = next((v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
                    if k.strip().lower() == "charset"), "utf-8")
    if kind.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise ValueError(f"request body: expected Content-Type: application/json (in UTF-8), "
                         f"got {(content_type or 'none')[:60]!r}")
    data = strict_json(body, "request body")
    if not isinstance(data, dict):  # what the API takes: a camera, a camera's zones
        shown = mask_credentials(json.dumps(data))
        raise ValueError(f"request body: expected a JSON object, got {shown if len(shown) <= 40 else shown[:40] + '...'}")
    return data


def page_html() -> bytes:
    return resources.files("streamrec.serve").joinpath("web/index.html").read_bytes()


def json_route(fn: Callable[[], Any], public: Callable[[], Any] | None = None) -> Route:
    """A JSON GET route (strict JSON: no NaN); ``public`` answers requests without the token."""
    return Route("application/json", lambda: json.dumps(fn(), allow_nan=False).encode(),
                 None if public is None else lambda: json.dumps(public(), allow_nan=False).encode())
