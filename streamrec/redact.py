"""Text that is shown: logs, ``/healthz``, the page, status messages and error messages pass
source URLs (and ``postgresql://`` URLs) through :func:`mask_credentials`; file and folder names
that are printed, written to CSV or drawn pass through :func:`shown`.

Example:
    >>> mask_credentials("cannot connect to rtsp://admin:p@ss@10.0.0.5/live?authtoken=abc")
    'cannot connect to rtsp://admin:***@10.0.0.5/live?authtoken=***'
"""

from __future__ import annotations

import os  # noqa: F401 - the examples use it
import re
from urllib.parse import unquote_plus

# query parameters whose values are secrets (compared lower case, after percent-decoding)
SECRET_QUERY_KEYS = frozenset({
    "access_token", "api_key", "apikey", "auth", "auth_token", "authtoken", "client_secret", "key", "pass",
    "passwd", "password", "pwd", "secret", "sig", "signature", "token", "x-amz-signature",
})
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")
_QUERY_PARAM = re.compile(r"(?P<key>[^=&;]*)=(?P<value>[^&;]*)")


def mask_credentials(text: str) -> str:
    """Hide passwords and secret query parameters in any URL inside ``text``.

    The user information runs to the *last* ``@`` before the host (a password may hold ``@``,
    ``?``, ``#`` and even ``/``), the user name stays; the value of every query parameter
    named in :data:`SECRET_QUERY_KEYS` is replaced too.

    >>> mask_credentials("cannot open rtsp://admin:hunter2@10.0.0.5/stream1")
    'cannot open rtsp://admin:***@10.0.0.5/stream1'
    >>> mask_credentials("rtsp://admin:p@ss@cam:554/live?channel=1&authtoken=abc")
    'rtsp://admin:***@cam:554/live?channel=1&authtoken=***'
    """
    return _URL.sub(lambda m: m["scheme"] + _mask_url_rest(m["rest"]), text)


def _mask_url_rest(rest: str) -> str:
    """``rest`` (a URL after ``scheme://``) with the password and secret query values masked."""
    at = _userinfo_end(rest)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = (f"{user}:***" if colon else rest[:at]) + rest[at:]
        at = len(user) + 4 if colon else at
    q = rest.find("?", at + 1)
    if q < 0:
        return rest
    end = rest.find("#", q)
    end = len(rest) if end < 0 else end

    def value(m: re.Match) -> str:
        secret = unquote_plus(m["key"]).strip().lower() in SECRET_QUERY_KEYS
        return f"{m['key']}=***" if secret else m[0]

    return rest[: q + 1] + _QUERY_PARAM.sub(value, rest[q + 1 : end]) + rest[end:]


def _userinfo_end(rest: str) -> int:
    """The index of the ``@`` that ends the user information of ``rest``, or -1 when none: the
    last ``@`` before the query (a password may hold ``@`` and ``/``), else the last one before
    the path (a password may hold ``?`` or ``#``); not an ``@`` in a path after ``host[:port]/``."""
    ends = [i for i in (rest.find("?"), rest.find("#")) if i >= 0]
    at = rest.rfind("@", 0, min(ends, default=len(rest)))
    if at < 0:
        slash = rest.find("/")
        return rest.rfind("@", 0, len(rest) if slash < 0 else slash)
    slash = rest.find("/", 0, at)
    if slash >= 0:
        before = rest[:slash]
        if "@" not in before and (":" not in before or before.rpartition(":")[2].isdigit()):
            return -1  # host[:port]/path@...: no user information
    return at


def shown(name: str) -> str:
    """A file or folder name as text that can be printed and written: bytes that are not UTF-8
    (which Python keeps as lone surrogates) become U+FFFD. ``print`` and ``csv`` fail on them.

    >>> shown(os.fsdecode(b"caf\\xe9.avi"))
    'caf\ufffd.avi'
    """
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no file name holds
        return name.encode("utf-8", "replace").decode("utf-8")
