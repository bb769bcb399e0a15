"""Real receivers the event tests start on loopback: a webhook receiver (``http.server`` in a
thread), Debian's ``mosquitto`` broker on a free port, and a paho subscriber."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from conftest import free_port, wait_until

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")


def accept_each(server: socket.socket, handle, *, threads: bool = True) -> None:
    """Accept connections on ``server`` in a daemon thread until it is closed, handing each to
    ``handle(conn)``: in a thread of its own, or one after another with ``threads=False``."""

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if threads:
                threading.Thread(target=handle, args=(conn,), daemon=True).start()
            else:
                handle(conn)

    threading.Thread(target=serve, daemon=True).start()


# -- a webhook receiver ---------------------------------------------------------------------------
class Receiver:
    """An HTTP server on a free loopback port recording each request; it answers 500 to the first
    ``fail`` requests, or 302 to ``redirect`` when set; with ``hold`` set to an event, it answers once
    that is set. With ``tls=(certificate, key)`` (PEM
    files) it is an HTTPS server."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[dict] = []
        self.fail = 0
        self.redirect: str | None = None
        self.hold: threading.Event | None = None  # when set here, each answer waits until it is set
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    failing = receiver.fail > 0
                    receiver.fail -= failing
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                if receiver.redirect:
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect)
                else:
                    self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- a broker -------------------------------------------------------------------------------------
class Broker:
    """mosquitto on a free loopback port; :meth:`stop` and :meth:`start` again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.write_conf("allow_anonymous true")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def write_conf(self, *lines: str) -> None:
        # as root, mosquitto would run as the user 'mosquitto', which cannot read files under pytest's tmp_path
        user = ["user root"] if os.geteuid() == 0 else []
        self.conf.write_text("\n".join([f"listener {self.port} 127.0.0.1", "persistence false", *user, *lines, ""]))

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)

        def listening() -> bool:
            assert self.proc.poll() is None, f"mosquitto exited: {self.log.read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, "mosquitto listening", timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """A paho client subscribed to ``topics`` of ``broker``, collecting (topic, payload, retain)."""

    def __init__(self, broker: Broker, *topics: str) -> None:
        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_message = self.on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(30), "no SUBACK from the broker"

    def on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[str, bool]]:
        with self.lock:
            return [(payload, retain) for t, payload, retain in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def receiver():
    """A webhook receiver for one test (import the fixture into the test module)."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def broker(tmp_path):
    """mosquitto on a free port for one test (import the fixture into the test module)."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto): these tests run a real broker")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()
