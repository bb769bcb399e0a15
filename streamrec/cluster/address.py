"""Checks of a Ray cluster's address before ``ray.init`` (which retries a dead one for minutes)."""

from __future__ import annotations

import logging
import socket

from streamrec.errors import StreamrecError

logger = logging.getLogger(__name__)


def check_reachable(address: str, *, timeout_s: float = 5.0, name: str = "--address") -> None:
    """Fail in ``timeout_s`` when ``address`` names a host and port that accept no connection:
    ``ray.init`` itself retries such an address for minutes, logging as it goes.

    >>> check_reachable("auto")  # found by Ray itself: nothing to check here
    >>> check_reachable("head-node")
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: --address: expected auto, local, HOST:PORT or ray://HOST:PORT, got 'head-node'
    """
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StreamrecError(f"{name}: expected auto, local, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
            grpc = speaks_http2(conn)
    except OSError as exc:
        raise StreamrecError(f"{name} {address}: no Ray cluster answers there within {timeout_s:g} s "
                             f"({exc.strerror or exc})") from None
    if not grpc:  # Ray would retry it for minutes
        raise StreamrecError(f"{name} {address}: something answers there, but not a Ray cluster (no gRPC within "
                             f"{timeout_s:g} s)")


def speaks_http2(conn: socket.socket) -> bool:
    """Whether the server on ``conn`` answers HTTP/2's preface with a SETTINGS frame, as Ray's gRPC
    servers (the GCS, the Ray client server) do; True without checking under TLS (``RAY_USE_TLS``)."""
    import os

    if os.environ.get("RAY_USE_TLS", "").strip().lower() in ("1", "true"):
        return True
    try:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # a timeout included: nothing came
        return False
    return head[3] == 0x04  # the frame type: SETTINGS
