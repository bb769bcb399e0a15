"""Where a request carries the ``--token``, and how the page trades it for a cookie.

A request carries the token in its ``?token=`` (scripts, curl), else in ``Authorization: Bearer``,
else in the ``streamrec_token`` cookie. Opening the page as ``/?token=T`` answers ``303 See Other``
to the same page without the token, with the cookie ``streamrec_token=T; HttpOnly; SameSite=Strict;
Path=/``: the page's own requests (websocket, images, clips, API calls) then carry the cookie, and
the token stays out of its addresses, proxy logs and the browser's history. HttpOnly keeps the
page's scripts from reading it; SameSite=Strict keeps other sites' pages from sending it. The
cookie has no ``Secure`` flag: the server speaks plain HTTP (behind an HTTPS proxy it still travels
encrypted).

Example:
    >>> token_exchange("/?camera=gate&token=s3cret&overlay=1", "s3cret")[0]
    ('Location', '/?camera=gate&overlay=1')
    >>> token_exchange("/?token=s3cret", "s3cret")[1][1]
    'streamrec_token=s3cret; HttpOnly; SameSite=Strict; Path=/'
    >>> cookie_token(["theme=dark; streamrec_token=s3cret"])
    's3cret'
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Iterable
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlsplit

from streamrec.serve.guard import bearer_token

logger = logging.getLogger(__name__)
TOKEN_COOKIE = "streamrec_token"


def cookie_token(cookie_headers: Iterable[str]) -> str:
    """The ``streamrec_token`` cookie of a request's ``Cookie`` header lines ("" when there is
    none; the first of several: a browser sends the one of the most specific path first)."""
    for line in cookie_headers:
        for pair in line.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.strip() == TOKEN_COOKIE:
                return unquote(value.strip().strip('"'))
    return ""


def given_token(target: str, headers: Any) -> tuple[str, str]:
    """The token a request carries and where: ``("...", "query")``, ``("...", "bearer")`` or
    ``("...", "cookie")`` in that order of precedence, ``("", "")`` when it carries none.
    ``target``: the request's path and query; ``headers``: its headers (``get``, ``get_all``)."""
    given = (parse_qs(urlsplit(target).query).get("token") or [""])[0]
    if given:
        return given, "query"
    given = bearer_token(headers.get("Authorization", "")) or ""
    if given:
        return given, "bearer"
    given = cookie_token(headers.get_all("Cookie") or [])
    return (given, "cookie") if given else ("", "")


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is ``token`` (compared in constant time)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


def token_source(target: str, headers: Any, token: str | None) -> str | None:
    """Where a request's right token came from (see :func:`given_token`); ``""`` when the server
    has no ``token``; ``None`` when the request carries none or a wrong one (a wrong cookie too)."""
    if not token:
        return ""
    given, source = given_token(target, headers)
    return source if token_matches(given, token) else None


def token_exchange(target: str, token: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The ``Location`` and ``Set-Cookie`` headers of the ``303`` that answers the page's
    ``/?token=...``: the page again without its ``token`` parameters (the others kept as sent),
    and the token as the ``streamrec_token`` cookie (percent-encoded: any token fits in it)."""
    query = urlsplit(target).query
    kept = "&".join(p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) != "token")
    return (("Location", f"/?{kept}" if kept else "/"),
            ("Set-Cookie", f"{TOKEN_COOKIE}={quote(token, safe='')}; HttpOnly; SameSite=Strict; Path=/"))


def cross_origin(headers: Any) -> bool:
    """Whether a request comes from a page of another origin: its ``Origin`` header (when it has
    one) names another host and port than its ``Host`` header. Raises ``ValueError`` for an
    ``Origin`` that is no URL."""
    origin = headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != headers.get("Host", "")


def cookie_refusal(headers: Any) -> str | None:
    """Why a request that changes something (not a ``GET``) with the token from the cookie alone
    is refused, else ``None``: a page of another origin sent it. Browsers send ``Origin`` with
    such requests; SameSite=Strict keeps other sites' pages from sending the cookie, but a page
    of another port of the same host is the same site."""
    origin, host = headers.get("Origin"), headers.get("Host", "")
    try:
        if not cross_origin(headers):
            return None
    except ValueError:  # an Origin that is no URL
        pass
    return f"cross-origin request refused (Origin {origin[:100]!r} is not this server, Host {host[:100]!r})"
