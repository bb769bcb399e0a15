"""Text that is shown: logs, ``/healthz``, the page, status messages and error messages pass
source URLs (and ``postgresql://`` URLs) through :func:`mask_credentials`; file and folder names
that are printed, written to CSV or drawn pass through :func:`shown`; text that comes from
elsewhere (a webhook's answer, a broker's error) passes through :func:`printable` before it is
logged or stored, and names that are logged are refused when :func:`control_characters` finds any.

Example:
    >>> mask_credentials("cannot connect to rtsp://admin:p@ss@10.0.0.5/live?authtoken=abc")
    'cannot connect to rtsp://admin:***@10.0.0.5/live?authtoken=***'
    >>> printable("moved\\r\\nX-Injected: 1")
    'moved\\\\r\\\\nX-Injected: 1'
"""

from __future__ import annotations

import logging
import os  # noqa: F401 - the examples use it
import re
import unicodedata
from urllib.parse import unquote_plus

# query parameters whose values are secrets; any key holding one of SECRET_WORDS, or a word
# ending in "key" or "sig", is one too (see :func:`secret_key`)
SECRET_QUERY_KEYS = frozenset({
    "access_token", "access-token", "api_key", "api-key", "apikey", "auth", "auth_token", "authtoken",
    "client_secret", "key", "pass", "passwd", "password", "private_token", "pwd", "secret", "sig",
    "signature", "token", "x-api-key", "x-amz-signature",
})
# what a secret's key holds: a token, secret, password, authorization, credential, login
# cookie ("sess" and "ion", or "sessid"), signature, JWT or bearer
SECRET_WORDS = re.compile(r"token|secret|(?<!com)(?<!by)pass(?!enger|ive|age|thr)|pwd|auth(?!or(?!i[sz]))|credential"
                          r"|sess(?:ion|id)|signature|jwt|bearer|cookie")
# words that are a secret's whole name: IP cameras' password parameters (pw, psw, loginpas), a PIN,
# a one-time password, a login's id (sid), a signed URL's ticket, HMAC or hash
SECRET_NAMES = frozenset({"pw", "psw", "loginpas", "pin", "otp", "sid", "ticket", "hmac", "hash"})
SHOWN = "***"
DATABASE_SCHEMES = ("postgresql", "postgres")  # a user alone is a role's name, which a server's errors name

# where a URL starts: a scheme not glued to a word; a URL's text reaches the next URL that follows
# a space, a quote, a bracket or "=" (a URL inside another one's query), or the end of the line
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://")
_NEXT_URL = re.compile(r"(?:(?<=[\s'\"<(\[{,=])[A-Za-z][A-Za-z0-9+.-]*://)|[\r\n]")
_USER = re.compile(r"[^:/?#@\s]*")
_PORT_PATH = re.compile(r"\d{1,5}/[^@/\s]")  # "cam:554/live@main": a port and a path
# what follows the "@" that ends the user information: a host, then a port or a path (strong),
# or the end of the URL (weak)
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%]+\]|[\w-]+(?:\.[\w-]+)*\.?)")
_STRONG = re.compile(r":\d{1,5}(?![\w@.%-])|[/?#]|;[^\s=&;#?/'\"<>@]+=")
_PORTED = re.compile(r":\d{1,5}(?:[/?#]|$)")
_WEAK = re.compile(r"$|[\s'\"<>()\[\]{},;:!]")
_QUERY = re.compile(r"[?;#][\w.%+\[\]-]+=")  # the first parameter of a query, ";" parameters or fragment
_KEY_BEFORE = re.compile(r"[?&;#](?P<key>[^\s=&;#?/'\"<>]+)=$")
_PARAM = re.compile(r"[?&;#](?P<key>[^\s=&;#?/'\"<>]+)[ \t]*(?:=|%3[dD])")  # "key=", "key =", "key%3D"
_CLOSING = "'\")]}>.,:;!?"
# the next line's first word, when an "@" and a host follow (the rest of a wrapped URL)
_HOST_PORT = re.compile(r"[^:]*:\d{1,5}")
_CONTINUED = re.compile(r"[\r\n]+[ \t]*(?P<word>[^\s@]*@[\w\[-][^\s]*)")
# words that end in "key" and name no secret
_NOT_KEYS = frozenset({"monkey", "donkey", "turkey", "hockey", "jockey", "whiskey", "lackey", "hokey", "malarkey"})


def mask_credentials(text: str) -> str:
    """Hide passwords and secret parameter values in any URL inside ``text``.

    The password runs from the user name's ``:`` to the ``@`` that a host follows (a password may
    hold spaces, quotes, ``@``, ``/``, ``?``, ``#`` and ``%``); the user name and the host stay.
    User information without a ``:`` (a token as the user, ``https://TOKEN@host``; not a
    database's role, ``postgresql://role@host``), and a user name that holds an encoded ``:``
    (``admin%3Apw``), is masked whole.
    Every ``key=value`` of the query, of ``;`` parameters and of the fragment whose key names a
    secret (:func:`secret_key`) gets ``***`` for its value.

    >>> mask_credentials("cannot open rtsp://admin:hunter2@10.0.0.5/stream1")
    'cannot open rtsp://admin:***@10.0.0.5/stream1'
    >>> mask_credentials("rtsp://admin:pa ss@cam:554/live?channel=1&x-api-key=abc;private_token=t")
    'rtsp://admin:***@cam:554/live?channel=1&x-api-key=***;private_token=***'
    """
    out, pos = [], 0
    for m in _SCHEME.finditer(text):
        if m.start() < pos:
            continue  # inside the URL before (in a password, say)
        end = _url_end(text, m.end())
        rest, end = _wrapped(text, m.end(), end)
        out += [text[pos:m.end()], _mask_url(rest, m.group()[:-3].lower())]
        pos = end
    return "".join(out) + text[pos:]


def mask_url(url: str) -> str:
    """``url``, one whole URL (a configured value, not text around one), masked as by
    :func:`mask_credentials`; user information that holds a blank or a control character is
    masked whole (in free text a blank ends a URL; in a value it does not).

    >>> mask_url("http://u u:hunter2@h/x")
    'http://***@h/x'
    """
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if sep and at >= 0 and any(c.isspace() or unicodedata.category(c)[0] == "C" for c in rest[:at]):
        return mask_credentials(f"{scheme}://{SHOWN}@{rest[at + 1:]}")
    return mask_credentials(url)


def _wrapped(text: str, start: int, end: int) -> tuple[str, int]:
    """The URL's text from ``start`` and where it ends: a URL that a line break cuts inside its
    user information (``rtsp://admin:hun`` and ``ter2@cam/live`` on the next line, as a message
    may be wrapped) goes on with the next line's first word, the line break left out."""
    piece = text[start:end]
    cont = _CONTINUED.match(text, end)
    more = cont["word"].split("@")[0] if cont is not None else ""
    if cont is None or any(c in piece for c in "@/?#") or ":" not in piece + more or (
            _HOST_PORT.fullmatch(piece) and ":" not in more):
        return piece, end  # "http://cam:8080" then "user@example.com": a port, not a password
    return piece + cont["word"], cont.end()


def mask_quoted(text: str, url: str) -> str:
    """``text`` (an error that ``url`` caused: a driver may quote the URL, or a part of it, as it
    is) with the passwords and secret values of ``url`` hidden wherever they appear, and any
    URL in it masked (:func:`mask_credentials`).

    >>> mask_quoted('unexpected spaces found in "se cret"', "postgresql://u:se cret@db/x")
    'unexpected spaces found in "***"'
    """
    hidden = [s for secret in _hidden_parts(url) if len(secret) >= 3 for s in (secret, unquote_plus(secret))]
    for secret in sorted(set(hidden), key=len, reverse=True):
        text = text.replace(secret, SHOWN)
    return mask_credentials(text)


def _hidden_parts(url: str) -> list[str]:
    """The parts of ``url`` that :func:`mask_credentials` replaces with ``***`` (in linear time:
    the masked text is ``url`` with some parts replaced, in order)."""
    parts = mask_credentials(url).split(SHOWN)
    if not url.startswith(parts[0]):
        return []
    pos, hidden = len(parts[0]), []
    for i, part in enumerate(parts[1:], 1):
        end = len(url) - len(part) if i == len(parts) - 1 else url.find(part, pos)
        if end < pos or not url.startswith(part, end):
            break
        hidden.append(url[pos:end])
        pos = end + len(part)
    return hidden


def _url_end(text: str, start: int) -> int:
    """Where the URL whose text starts at ``start`` ends: at the next URL (not one that is the
    value of a secret parameter: that is masked whole) or line break."""
    while (nxt := _NEXT_URL.search(text, start)) is not None:
        sep = max(text.rfind(c, 0, nxt.start()) for c in "?&;#")  # the last parameter's start: linear, not a search
        key = _KEY_BEFORE.match(text, sep, nxt.start()) if sep >= 0 else None
        if key is None or not secret_key(key["key"]):
            return nxt.start()
        start = nxt.end()
    return len(text)


def _mask_url(rest: str, scheme: str = "") -> str:
    """``rest`` (the text after ``scheme://``) with its password and secret values masked."""
    user = _USER.match(rest).end()
    if user and "%3a" in rest[:user].lower():  # "admin%3Apw": a password, encoded
        rest, user = SHOWN + rest[user:], len(SHOWN)
    if rest[user:user + 1] == "@" and user and scheme not in DATABASE_SCHEMES:  # "TOKEN@host": a token may be the user
        rest, user = SHOWN + rest[user:], len(SHOWN)
    host = user + 1 if rest[user:user + 1] == "@" else 0
    if rest[user:user + 1] == ":":
        at = _userinfo_end(rest, user + 1)
        if at >= 0:
            rest, host = rest[:user + 1] + SHOWN + rest[at:], user + 1 + len(SHOWN)
    return rest[:host] + _mask_params(rest[host:])


def _userinfo_end(rest: str, after: int) -> int:
    """The index of the ``@`` that ends the user information (the password starts at ``after``),
    or -1. Candidates are the ``@`` that a host follows, and then a port, a path or query (strong)
    or the URL's end (weak): the last of them before the query's first ``key=`` (a password
    holds none), and a password is not empty when it can hold something. ``host:port/path@x``
    has no user information."""
    found, strong, ported = [], set(), -1
    for at in (i for i, c in enumerate(rest) if c == "@" and i >= after):
        h = _HOST.match(rest, at + 1)
        if h is not None and h.group() and _STRONG.match(rest, h.end()):
            found.append(at)
            strong.add(at)
            ported = at if _PORTED.match(rest, h.end()) else ported
        elif h is not None and h.group() and _WEAK.match(rest, h.end()):
            found.append(at)
    found = [at for at in found if ported < 0 or at <= ported or at in strong]  # "@cam:554/live@main": a path's "@"
    port = _PORT_PATH.match(rest, after) is not None
    if not strong and port:
        return -1  # a port and a path that holds "@", not a password
    if not found:
        return rest.rfind("@", after)
    query = _QUERY.search(rest, after)
    before = [at for at in found if query is None or at < query.start()]
    if not before and port:
        return -1  # "host:8443/in?token=a@b#": the "@" is in the query
    if len(found) > 1 and before[:1] == [after]:
        before = before[1:] or found[1:2]  # "u:@h?k=@cam": the password is "@h?k=", not nothing
    return before[-1] if before else found[0]


def _mask_params(rest: str) -> str:
    """``rest`` (a URL from its host on) with the values of its secret parameters masked."""
    out, pos = [], 0
    while (m := _PARAM.search(rest, pos)) is not None:
        if not secret_key(m["key"]):
            out.append(rest[pos:m.end()])
            pos = m.end()
            continue
        end = _value_end(rest, m.end())
        out += [rest[pos:m.end()], SHOWN if end > m.end() else ""]
        pos = end
    return "".join(out) + rest[pos:]


def _value_end(rest: str, start: int) -> int:
    """Where the secret value starting at ``start`` ends: its first character always belongs to
    it (a value may start with anything), then it runs to a space, a ``#``, or a ``&``, ``;`` or ``?``
    that another ``key=`` follows; up to two closing quotes or punctuation marks at its end are the text's."""
    if start >= len(rest):
        return start
    end = start + 1
    while end < len(rest) and not rest[end].isspace() and rest[end] != "#":
        if rest[end] in "&;?" and _PARAM.match(rest, end):
            break
        end += 1
    for _ in range(2):  # "...?token=abc')": the quote and bracket close the text around the URL
        if end > start + 1 and rest[end - 1] in _CLOSING:
            end -= 1
    return end


def secret_key(key: str) -> bool:
    """Whether the parameter ``key`` names a secret: compared after percent-decoding, in lower
    case, in Unicode's compatibility form less invisible characters (``ｔｏｋｅｎ``, ``to\u200bken``),
    word by word (``-``, ``_``, ``.`` and spaces split words; digits at a word's end are dropped):
    a word that :data:`SECRET_WORDS` finds in, one of :data:`SECRET_NAMES`, or ending in
    ``key``/``keys`` or ``sig``.

    >>> [secret_key(k) for k in ("X-Api-Key", "private_token", "api%5Fkey", "sessionId", "keyframe", "channel")]
    [True, True, True, True, False, False]
    """
    for _ in range(3):  # "%255F" is "%5F" is "_"
        decoded = unquote_plus(key)
        if decoded == key:
            break
        key = decoded
    key = "".join(c for c in unicodedata.normalize("NFKC", key) if not shows_nothing(c)).lower().strip()
    words = [w.rstrip("0123456789") for w in re.split(r"[\W_]+", key) if w]
    return key in SECRET_QUERY_KEYS or any(
        SECRET_WORDS.search(w) or w in SECRET_NAMES
        or (w.endswith(("key", "keys", "sig")) and w.rstrip("s") not in _NOT_KEYS) for w in words)


def printable(text: object, *, limit: int | None = None) -> str:
    """``text`` on one line, as a terminal shows it: control characters (C0, DEL, C1), line and
    paragraph separators, and the characters that show nothing (Unicode's format characters:
    bidirectional overrides, zero-width spaces and joiners, tags; the Hangul fillers) become
    escapes (``\\n``, ``\\x1b``, ``\\u202e``). Text from elsewhere (a server's answer or error)
    goes through this before it is logged or stored. With ``limit``, text longer than that many
    characters is cut there and says how long it was: a server's words fill no log or ``/healthz``.

    >>> printable("HTTP 302 \\x1b[31mred\\u202e")
    'HTTP 302 \\\\x1b[31mred\\\\u202e'
    >>> printable("HTTP 500 " + "x" * 60_000, limit=12)
    'HTTP 500 xxx... (60,009 characters)'
    """
    text = str(text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text):,} characters)"
    return _SUSPECT.sub(lambda m: _escape(m) if shows_nothing(m.group()) else m.group(), text)


def control_characters(text: str) -> list[str]:
    """The characters of ``text`` that :func:`printable` would escape, escaped (none: ``[]``).

    >>> control_characters("court\\n1"), control_characters("court-1")
    (['\\\\n'], [])
    """
    return [_escape(m) for m in _SUSPECT.finditer(text) if shows_nothing(m.group())]


_SUSPECT = re.compile(r"[^\x20-\x7e]")  # what may be escaped: all but printable ASCII
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")  # Hangul fillers: letters that show nothing


def shows_nothing(c: str) -> bool:
    """Whether ``c`` (one character) shows as nothing, or moves the text: a control or format character, a line or
    paragraph separator, a lone surrogate, a Hangul filler."""
    return unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") or c in _FILLERS


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    code = ord(c)
    return _NAMED.get(c) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


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


class OneLineFormatter(logging.Formatter):
    """Log lines whose message is on one line, with passwords in URLs hidden, whatever a caller
    passed in (a name, a path, an exception's text); a traceback still follows on its own lines.

    >>> OneLineFormatter("%(message)s").format(logging.makeLogRecord({"msg": "rtsp://u:pw@cam/x\\nFAKE"}))
    'rtsp://u:***@cam/x\\\\nFAKE'
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(mask_credentials(record.message))
        return super().formatMessage(record)


def one_line_logs(before: list[logging.Handler]) -> None:
    """Give the root logger's handlers that ``logging.basicConfig`` added (those not in ``before``)
    a :class:`OneLineFormatter`."""
    for handler in [h for h in logging.getLogger().handlers if h not in before]:
        handler.setFormatter(OneLineFormatter(handler.formatter._fmt if handler.formatter else None))
