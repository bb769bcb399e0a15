"""Host names as a server and its clients read them: a ``Host`` header's name and port, the
names a server answers to (``allowed_hosts``), and a name as DNS looks it up.

Example:
    >>> split_host("[::1]:8000"), ascii_host("straße.de"), ends_in_number("0x7f000001")
    (('::1', 8000), 'xn--strae-oqa.de', True)
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from streamrec.errors import StreamrecError
from streamrec.validate import described

DNS_NAME_MAX = 253  # the longest name DNS looks up, in ASCII, without the root's dot


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header value (port None when absent), lower case, IPv6
    brackets removed; None when it is not a host[:port].

    >>> split_host("[::1]:8000"), split_host("Example.COM"), split_host("a:b")
    (('::1', 8000), ('example.com', None), None)
    """
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")
        port_text = port_text if sep else None
    if port_text is not None and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    name = name.lower().rstrip(".")
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    return name, (int(port_text) if port_text is not None else None)


def check_allowed_hosts(values: Any) -> tuple[str, ...]:
    """``allowed_hosts`` as a tuple of ``name`` or ``name:port`` entries, an international name as
    the ``Host`` header carries it (IDNA: ``кухня.local`` is ``xn--j1agri5c.local``); a one-line
    error for an entry no request can name (an empty part, ``1.2.3``, a port outside 1-65535).

    >>> check_allowed_hosts(["кухня.local:8000", "Cam.LAN", "[::1]"])
    ('xn--j1agri5c.local:8000', 'cam.lan', '[::1]')
    """
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise StreamrecError(f"allowed_hosts: expected a list of host names, got {described(values)}")
    return tuple(_allowed_host(v) for v in values)


def _allowed_host(value: Any) -> str:
    parsed = split_host(value) if isinstance(value, str) else None
    name, port = parsed if parsed is not None else ("", None)
    try:
        if ":" in name:
            name = f"[{ipaddress.IPv6Address(name)}]"
        elif ends_in_number(name):
            name = str(ipaddress.IPv4Address(name))
        else:
            name = ascii_host(name).lower()
            if len(name) > DNS_NAME_MAX or not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name):
                raise ValueError(name)
    except (ValueError, UnicodeError):
        name = ""
    if not name or port is not None and not 1 <= port <= 65535:
        raise StreamrecError(f"allowed_hosts: expected host names (name or name:port, port 1-65535; a name of "
                             f"letters, digits, '-' or '_' parts joined by '.', or an IP address), got {described(value)}")
    return name if port is None else f"{name}:{port}"


def ends_in_number(host: str) -> bool:
    """Whether ``host``'s last part is a number (decimal digits, or hexadecimal after ``0x``): as
    browsers and ``getaddrinfo`` read it, the name is then an IPv4 address in some notation.

    >>> ends_in_number("0x7f000001"), ends_in_number("cam.0x1f"), ends_in_number("cam.local"), ends_in_number("0xcafe.ex")
    (True, True, False, False)
    """
    last = host.rstrip(".").rpartition(".")[2]
    return last.isascii() and (last.isdigit() or re.fullmatch(r"0[xX][0-9a-fA-F]*", last) is not None)


def ascii_host(host: str) -> str:
    """``host`` as DNS looks it up: an international name in IDNA 2008 with the UTS 46 mapping that
    browsers use (the ``idna`` package), an ASCII name as it is. Python's own ``idna`` codec is
    IDNA 2003, which maps ``ß`` to ``ss``: it would connect to another host.

    >>> ascii_host("straße.de"), ascii_host("Bücher.example"), ascii_host("ha_1.local")
    ('xn--strae-oqa.de', 'xn--bcher-kva.example', 'ha_1.local')
    """
    if host.isascii():
        host.encode("idna")  # its labels checked: none empty, none over 63 characters (a UnicodeError)
        return host
    import idna

    return idna.encode(host, uts46=True).decode("ascii")
