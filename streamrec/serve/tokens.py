"""Where a request carries the ``--token``, and how the page trades it for a cookie.

A request carries the token in its ``?token=`` (scripts, curl), else in ``Authorization: Bearer``,
else in the ``streamrec_token`` cookie. Opening the page as ``/?token=T`` answers ``303 See Other``
to the same page without the token, with the cookie ``streamrec_token=T; HttpOnly; SameSite=Lax;
Path=/``: the page's own requests (websocket, images, clips, API calls) then carry the cookie, and
the token stays out of its addresses, proxy logs and the browser's history. HttpOnly keeps the
page's scripts from reading it; SameSite=Lax keeps other sites' pages from sending it, but for a
link followed to the page (from a chat, a mail, a dashboard: Strict would leave the page without
it); what changes something also has its ``Origin`` checked (:func:`cookie_refusal`). The
cookie has no ``Secure`` flag: the server speaks plain HTTP (behind an HTTPS proxy it still travels
encrypted).

Example:
    >>> token_exchange("/?camera=gate&token=s3cret&overlay=1", "s3cret")[0]
    ('Location', '/?camera=gate&overlay=1')
    >>> token_exchange("/?token=s3cret", "s3cret")[1][1]
    'streamrec_token=s3cret; HttpOnly; SameSite=Lax; Path=/'
    >>> cookie_tokens(["theme=dark; streamrec_token=s3cret", "streamrec_token=planted"])
    ['s3cret', 'planted']
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Iterable
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlsplit


logger = logging.getLogger(__name__)
TOKEN_COOKIE = "streamrec_token"


def cookie_tokens(cookie_headers: Iterable[str]) -> list[str]:
    """Every ``streamrec_token`` cookie of a request's ``Cookie`` header lines, in order (a page of
    another port of the same host may have set one more, with another path: each is tried)."""
    found = []
    for line in cookie_headers:
        for pair in line.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.strip() == TOKEN_COOKIE:
                found.append(unquote(value.strip().strip('"')))
    return found


def bearer_token(authorization: str) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` header (the scheme in any case, spaces or
    tabs after it), else ``None``."""
    scheme, _, credentials = authorization.replace("\t", " ").strip().partition(" ")
    return utf8_header(credentials.strip()) if scheme.lower() == "bearer" else None


def utf8_header(value: str) -> str:
    """A header value as its sender wrote it: the connection reads header bytes as ISO-8859-1;
    clients (curl, requests, fetch) send UTF-8, so the bytes are read again as UTF-8 where
    they are that (a token ``clé`` sent by curl), else kept as they were read.

    >>> utf8_header("cl\u00c3\u00a9"), utf8_header("caf\u00e9")
    ('clé', 'café')
    """
    try:
        return value.encode("iso-8859-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is ``token`` (compared in constant time)."""
    return hmac.compare_digest(given.encode(), token.encode())


def token_source(target: str, headers: Any, token: str | None) -> str | None:
    """Where a request's right token came from: ``"query"`` (``?token=``), ``"bearer"``
    (``Authorization: Bearer``) or ``"cookie"``, in that order: the first of them the request
    carries decides (a wrong query token is not rescued by a right cookie); of several cookies,
    any right one counts. ``""`` when the server has no ``token``; ``None`` when the request
    carries none or a wrong one."""
    if not token:
        return ""
    given = (parse_qs(urlsplit(target).query).get("token") or [""])[0]
    if given:
        return "query" if token_matches(given, token) else None
    given = bearer_token(headers.get("Authorization", "")) or ""
    if given:
        return "bearer" if token_matches(given, token) else None
    cookies = cookie_tokens(headers.get_all("Cookie") or [])
    return "cookie" if any([token_matches(c, token) for c in cookies]) else None


def token_exchange(target: str, token: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The ``Location`` and ``Set-Cookie`` headers of the ``303`` that answers the page's
    ``/?token=...``: the page again without its ``token`` parameters (the others kept as sent),
    and the token as the ``streamrec_token`` cookie (percent-encoded: any token fits in it)."""
    query = urlsplit(target).query
    kept = "&".join(p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) != "token")
    return (("Location", f"/?{kept}" if kept else "/"),
            ("Set-Cookie", f"{TOKEN_COOKIE}={quote(token, safe='')}; HttpOnly; SameSite=Lax; Path=/"))


def cross_origin(headers: Any) -> bool:
    """Whether a request comes from a page of another origin: its ``Origin`` header (when it has
    one) names another host and port than its ``Host`` header. Raises ``ValueError`` for an
    ``Origin`` that is no URL."""
    origin = headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != headers.get("Host", "")


def cookie_refusal(headers: Any) -> str | None:
    """Why a request that changes something (not a ``GET``) with the token from the cookie alone
    is refused, else ``None``: a page of another origin sent it. Browsers send ``Origin`` with
    such requests; SameSite=Lax keeps other sites' pages from sending the cookie with them, but a page
    of another port of the same host is the same site. A browser's ``Sec-Fetch-Site`` other than
    ``same-origin`` (or ``none``: the user's own action), and, without an ``Origin``, a ``Referer``
    of another origin, say so too."""
    origin, host = headers.get("Origin"), headers.get("Host", "")
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"cross-origin request refused (Sec-Fetch-Site {site[:40]!r})"
    referer = headers.get("Referer") if origin is None else None
    try:
        if referer is not None and urlsplit(referer).netloc != host:
            return f"cross-origin request refused (Referer {referer[:100]!r} is not this server, Host {host[:100]!r})"
        if not cross_origin(headers):
            return None
    except ValueError:  # an Origin or Referer that is no URL
        if origin is None:
            return f"cross-origin request refused (Referer {referer[:100]!r} is no URL)"
    return f"cross-origin request refused (Origin {origin[:100]!r} is not this server, Host {host[:100]!r})"
