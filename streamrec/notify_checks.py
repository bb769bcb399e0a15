"""Checks of the values notifications put on the wire: webhook and broker URLs, MQTT topics and
user names, and the ids cameras have in Home Assistant. Each bad value is a
:class:`~streamrec.errors.StreamrecError` naming the setting, what was expected and what was given.

Example:
    >>> check_topic("ha/#", "[notify.mqtt] discovery_prefix")
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: [notify.mqtt] discovery_prefix: expected an MQTT topic (UTF-8 text without + or #, NUL or control characters), got 'ha/#' ('#')
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from urllib.parse import quote, unquote, urlsplit

from streamrec.errors import StreamrecError
from streamrec.redact import mask_url, printable, shows_nothing
from streamrec.hosts import DNS_NAME_MAX, ascii_host, ends_in_number
from streamrec.zones import split_key

MQTT_TOPIC_MAX_BYTES = 65535  # an MQTT string: a two-byte length, then UTF-8


def url_parts(url: str, where: str, expected: str) -> tuple[str, str, int | None]:
    """``url``'s scheme, host and port (``None``: the scheme's default), or a :class:`StreamrecError`
    naming ``where`` and ``expected`` for a URL that cannot be used: no host, a port that is not
    1-65535, a malformed IPv6 address, a blank or control character."""
    shown = mask_url(url)  # never a password in a message
    bad = next((c for c in url if c.isspace() or invisible(c) or c == "\\"), None)
    if bad is not None:  # a backslash: clients disagree on where the host ends ("https://h:443\\@evil/")
        raise StreamrecError(f"{where}: expected {expected} without blanks, backslashes, control or invisible "
                             f"characters, got {shown!r} ({bad!r})")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "http://[::1/x": an opening bracket without its closing one
        raise StreamrecError(f"{where}: expected {expected}, got {shown!r} ({exc})") from None
    try:
        port = parts.port
    except ValueError as exc:
        raise StreamrecError(f"{where}: expected {expected} with a port 1-65535, got {shown!r} ({exc})") from None
    if not parts.hostname:
        raise StreamrecError(f"{where}: expected {expected} with a host, got {shown!r}")
    hostport = parts.netloc.rpartition("@")[2]
    rest = hostport.partition("]")[2] if hostport.startswith("[") else None
    if rest is not None and ((rest and not rest.startswith(":")) or "%" in parts.hostname or not ipv6(parts.hostname)):
        why = "an IPv6 zone such as %25eth0 is not supported" if "%" in parts.hostname else "malformed IPv6 address"
        raise StreamrecError(f"{where}: expected {expected} with a host, got {shown!r} ({why})")
    if rest is None:
        check_host_name(parts.hostname, where, expected, shown)
    if port == 0 or hostport.endswith(":"):
        why = "port 0" if port == 0 else "empty port"
        raise StreamrecError(f"{where}: expected {expected} with a port 1-65535, got {shown!r} ({why})")
    if "#" in url:  # never sent to the server: a part of the address that would be dropped unseen
        raise StreamrecError(f"{where}: expected {expected} without a #fragment, got {shown!r}")
    return parts.scheme, parts.hostname, port


def ipv6(text: str) -> bool:
    """Whether ``text`` (a URL's host in brackets) is an IPv6 address: not an IPvFuture literal
    (``v1.fe``) or anything else no socket connects to.

    >>> ipv6("::1"), ipv6("v1.fe"), ipv6("zz::1")
    (True, False, False)
    """
    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        return False


def check_host_name(host: str, where: str, expected: str, shown: str) -> None:
    """``host`` (not in brackets) as a name that DNS can look up (an international name as
    IDNA), or a dotted IPv4 address; else a :class:`StreamrecError`."""
    why = None
    if not re.fullmatch(r"[\w.-]+", host):
        why = ""
    elif any(label.startswith("-") or label.endswith("-") for label in host.split(".")):
        why = " (a part of the name starts or ends with '-')"
    elif re.fullmatch(r"[0-9.]+", host) or ends_in_number(host):  # 0x7f.1, 0x7f000001: no name, no address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            why = " (not an IPv4 address)"
    else:
        try:
            name = ascii_host(host).rstrip(".")
            if len(name) > DNS_NAME_MAX or any(not label for label in name.split(".")):
                why = f" (a name of at most {DNS_NAME_MAX} characters without empty parts, got {len(name)})"
        except UnicodeError as exc:  # idna's errors are UnicodeErrors
            why = f" ({exc.__cause__ or exc})"
    if why is not None:
        raise StreamrecError(f"{where}: expected {expected} with a host name of letters, digits, '.', '-' or '_', "
                             f"got {shown!r}{why}")


def ascii_target(path: str, query: str = "") -> str:
    """A request target (path and query) as HTTP sends it: characters that are not ASCII
    percent-encoded as UTF-8 (``%`` escapes and reserved characters kept as they are written).

    >>> ascii_target("/hooks/café", "tag=été")
    '/hooks/caf%C3%A9?tag=%C3%A9t%C3%A9'
    """
    keep = "!#$%&'()*+,/:;=?@[]~-._"
    return quote(path or "/", safe=keep) + (f"?{quote(query, safe=keep)}" if query else "")


def invisible(c: str) -> bool:
    """``c`` is a control, format (zero-width, bidirectional, byte order mark) or line separator
    character, a surrogate, a Hangul filler (:func:`~streamrec.redact.shows_nothing`) or a noncharacter: not to be published as (or hidden in) a topic."""
    code = ord(c)
    return shows_nothing(c) or 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def check_topic(topic: str, where: str) -> None:
    """``topic`` (or the part of one that ``where`` names) as an MQTT topic to publish to: not
    empty, no ``+`` or ``#`` wildcards, no empty level inside (``a//b``) nor one with a space at
    either end, no NUL, control or
    invisible characters (:func:`invisible`), valid UTF-8 of at most 65535 bytes; else a :class:`StreamrecError` naming ``where``."""
    bad = next((c for c in topic if c in "+#" or invisible(c)), None)
    if not topic.strip("/") or bad is not None:
        what = "empty" if bad is None else f"{bad!r}"
        raise StreamrecError(f"{where}: expected an MQTT topic (UTF-8 text without + or #, NUL or control "
                             f"characters), got {printable(repr(topic), limit=80)} ({what})")
    if "//" in topic.strip("/"):
        raise StreamrecError(f"{where}: expected an MQTT topic without empty levels ('//'), got {printable(repr(topic), limit=80)}")
    if any(level != level.strip() for level in topic.split("/")):  # " streamrec" is another topic than "streamrec"
        raise StreamrecError(f"{where}: expected an MQTT topic whose levels neither start nor end with a space, "
                             f"got {printable(repr(topic), limit=80)}")
    if topic.strip("/").startswith("$"):
        raise StreamrecError(f"{where}: expected an MQTT topic not starting with $ (the broker's own), got {printable(repr(topic), limit=80)}")
    size = len(topic.encode("utf-8"))
    if size > MQTT_TOPIC_MAX_BYTES:
        raise StreamrecError(f"{where}: expected an MQTT topic of at most {MQTT_TOPIC_MAX_BYTES} bytes as UTF-8, "
                             f"got {size} bytes")


def check_user(url: str) -> None:
    """The user name and password of an ``mqtt://user:pass@host`` URL, as MQTT sends them:
    percent-decoded UTF-8 without NUL or control characters, at most 65535 bytes each. The
    message names the part, never its text (a user name may be a token)."""
    parts = urlsplit(url)
    for what, value in (("user name", parts.username), ("password", parts.password)):
        if value is None:
            continue
        try:
            text = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise StreamrecError(f"[notify.mqtt] url: expected a {what} of UTF-8 text (percent-encoded bytes "
                                 f"that decode as UTF-8), got one that does not") from None
        bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs")), None)
        size = len(text.encode("utf-8", "surrogatepass"))
        if bad is not None or size > MQTT_TOPIC_MAX_BYTES:
            why = f"it holds {bad!r}" if bad is not None else f"{size} bytes"
            raise StreamrecError(f"[notify.mqtt] url: expected a {what} without NUL or control characters, of at "
                                 f"most {MQTT_TOPIC_MAX_BYTES} bytes as UTF-8, got one that is not ({why})")


def ha_object_id(camera: str) -> str:
    """``camera`` as Home Assistant's ids take it: ASCII letters, digits, ``_`` and ``-``. A name
    with other characters gets a short hash of the whole name, so that two names never share an id
    (``rack.1`` and ``rack_1``, or two names in another alphabet).

    Example:
        >>> ha_object_id("rack-1"), ha_object_id("rack.1"), ha_object_id("кухня") != ha_object_id("спорт")
        ('rack-1', 'rack_1_83925fd7', True)
    """
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", camera)
    if slug == camera:
        return slug
    return f"{slug}_{hashlib.sha256(camera.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def ha_stream_id(key: str) -> str:
    """The Home Assistant id of a labelled stream (``camera`` or ``camera/zone``): the camera's
    :func:`ha_object_id`, then ``__`` and the zone's for a zone.

    Example:
        >>> ha_stream_id("gym"), ha_stream_id("gym/rack"), ha_stream_id("rack.1/bench")
        ('gym', 'gym__rack', 'rack_1_83925fd7__bench')
    """
    camera, zone = split_key(key)
    return ha_object_id(camera) if zone is None else f"{ha_object_id(camera)}__{ha_object_id(zone)}"
