"""Names that are logged, shown and stored stay on one line and are drawn as written: rule and
camera names with control characters, line or paragraph separators or bidirectional overrides
are refused (one line naming the field, exit 2; a 400 from the camera API); what a remote
server says (a webhook's status line and ``Location``, a broker's error) is escaped before it
is logged or stored."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError
from streamrec.event_config import MqttConfig, RuleConfig, WebhookConfig
from streamrec.events.mqtt import MqttPublisher
from streamrec.events.store import Notification
from streamrec.events.webhook import WebhookSender
from streamrec.redact import control_characters, printable
from streamrec.serve.routes import cameras_api

from conftest import error_line, run_main

BAD = [("\n", "\\n"), ("\r", "\\r"), ("\x1b[31m", "\\x1b"), ("\x00", "\\x00"), ("\x7f", "\\x7f"), ("\x85", "\\x85"),
       ("\x9b", "\\x9b"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\u202e", "\\u202e"), ("\u2066", "\\u2066"),
       ("\u200f", "\\u200f"), ("\t", "\\t"),
       # characters that show nothing: joiners, a soft hyphen, a tag letter, a Hangul filler
       ("\u200d", "\\u200d"), ("\u200c", "\\u200c"), ("\u00ad", "\\xad"), ("\U000e0041", "\\U000e0041"),
       ("\u3164", "\\u3164")]


@pytest.mark.parametrize("char, escaped", BAD)
def test_printable_escapes_each_kind_of_control_character(char, escaped):
    assert printable(f"a{char}b") == f"a{escaped}{char[1:]}b"
    assert control_characters(f"a{char}b") == [escaped]


def test_printable_keeps_text_as_it_is_otherwise():
    text = "Café 東京 ü → 'quoted' \\n stays, кухня, ٣ 🏋 e\u0301"
    assert printable(text) == text and control_characters(text) == []


@pytest.mark.parametrize("char, escaped", BAD)
def test_a_rule_name_with_a_control_character_is_refused(char, escaped):
    name = f"lift{char}ing"
    with pytest.raises(StreamrecError) as info:
        RuleConfig.from_dict({"name": name, "labels": ["deadlifting"]})
    assert str(info.value) == ("[[rules]] name: expected text without control characters, line breaks or "
                               f"bidirectional overrides, got {printable(repr(name))} ({escaped})")
    assert "\n" not in str(info.value)


def test_a_rule_name_from_the_config_file_is_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "rules.toml"
    cfg.write_text('source = "0"\n[[rules]]\nname = "lifting\\u001b[2J\\nFAKE log line"\nlabels = ["deadlifting"]\n')
    assert error_line(run_main("serve", "--config", str(cfg))) == (
        "streamrec: error: [[rules]] name: expected text without control characters, line breaks or bidirectional "
        "overrides, got 'lifting\\x1b[2J\\nFAKE log line' (\\x1b)")


@pytest.mark.parametrize("char, escaped", BAD)
def test_a_camera_name_with_a_control_character_is_refused(char, escaped):
    name = f"court{char}1"
    with pytest.raises(StreamrecError) as info:
        ServeConfig.from_sources({"cameras": [{"name": name, "source": "0"}]}, {})
    assert str(info.value).startswith("camera name: expected 1-") and str(info.value).endswith(f"got {printable(repr(name))}")
    assert "\n" not in str(info.value) and escaped in str(info.value)


def test_a_camera_name_from_the_config_file_is_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "cams.toml"
    cfg.write_text('[[cameras]]\nname = "court\\u2028INFO fake"\nsource = "0"\n')
    line = error_line(run_main("serve", "--config", str(cfg)))
    assert line.startswith("streamrec: error: camera name: expected 1-") and line.endswith("got 'court\\u2028INFO fake'")


@pytest.mark.parametrize("char, escaped", BAD)
def test_the_camera_api_answers_400_to_a_control_character_in_a_name(char, escaped):
    added = []
    route = cameras_api(listing=lambda: {}, add=added.append, remove=lambda name: False)
    reply = route.handler("POST", "/api/cameras", {"name": [f"gate{char}2"], "source": ["0"]})
    assert reply.status == 400 and added == []
    assert reply.body["error"].startswith("camera name: expected 1-") and escaped in reply.body["error"]
    assert "\n" not in reply.body["error"]


class RawServer:
    """A TCP server on port 0 that answers every connection with ``answer`` (bytes, as written)."""

    def __init__(self, answer: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(self.answer)

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


NOTE = Notification(id=1, event_id="e1", kind="event_start", channel="webhook", payload='{"type": "event_start"}',
                    created=0.0, attempts=0)


@pytest.mark.parametrize("query, answer, error", [
    ("", b"HTTP/1.1 302 Found\r\nLocation: http://u:pw@evil.example/\x1b[2J\x1b[31mpwned\x07\r\nContent-Length: 0\r\n\r\n",
     "HTTP 302 redirect to http://u:***@evil.example/\\x1b[2J\\x1b[31mpwned\\x07 not followed: the webhook must answer "
     "2xx itself"),
    ("", b"HTTP/1.1 301 Moved\r\nLocation: /next\xe2\x80\xa8INFO: fake\r\nContent-Length: 0\r\n\r\n",
     "HTTP 301 redirect to http://127.0.0.1:{port}/next\u00e2\\x80\u00a8INFO: fake not followed: the webhook must answer "
     "2xx itself"),
    # a relative redirect that keeps the webhook's own secret (a trailing slash added): masked as ours is
    ("?token=S3cr3t", b"HTTP/1.1 301 Moved\r\nLocation: /hook/?token=S3cr3t\r\nContent-Length: 0\r\n\r\n",
     "HTTP 301 redirect to http://127.0.0.1:{port}/hook/?token=*** not followed: the webhook must answer 2xx itself"),
    ("?api_key=S3cr3t-value", b"HTTP/1.1 307 Moved\r\nLocation: ../other?q=S3cr3t-value\r\nContent-Length: 0\r\n\r\n",
     "HTTP 307 redirect to http://127.0.0.1:{port}/other?q=*** not followed: the webhook must answer 2xx itself"),
    ("", b"HTTP/1.1 500 Oops\x1b]0;title\x07 \x9b2J\r\nContent-Length: 0\r\n\r\n",
     "HTTP 500 Oops\\x1b]0;title\\x07 \\x9b2J"),
])
def test_a_webhook_answer_is_escaped_before_it_is_logged_or_stored(query, answer, error):
    server = RawServer(answer)
    try:
        url = f"http://127.0.0.1:{server.port}/hook{query}"
        sender = WebhookSender(WebhookConfig.from_dict({"url": url, "sign": False}))
        assert sender.send(NOTE) == error.format(port=server.port)
    finally:
        server.close()


def test_a_broker_error_is_escaped_before_it_is_logged(caplog):
    publisher = MqttPublisher(MqttConfig.from_dict({"url": "mqtt://u:pw@127.0.0.1:1"}))
    with caplog.at_level(logging.WARNING, logger="streamrec.events.mqtt"):
        publisher.down("the broker said: \x1b[2Jnot\nauthorised\u202e")
    assert publisher.last_error == "the broker said: \\x1b[2Jnot\\nauthorised\\u202e"
    assert [r.getMessage() for r in caplog.records] == ["MQTT: the broker said: \\x1b[2Jnot\\nauthorised\\u202e"]


def test_a_database_error_is_escaped_before_it_is_logged(tmp_path, caplog):
    import sqlite3

    from streamrec.live.history import HistoryStore, Segment

    db = tmp_path / "h.db"
    HistoryStore(str(db)).close()
    with sqlite3.connect(db) as conn:  # the database's own words, as a server's trigger could say them
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON segments BEGIN "
                     "SELECT RAISE(ABORT, 'refused\x1b[2J\nFAKE: ok'); END")
    store = HistoryStore(str(db))
    try:
        with caplog.at_level(logging.ERROR, logger="streamrec.live.history"):
            store.add(Segment("gate", "walking", 1.0, 2.0, 0.5, 0.6, 2))
            store.flush()
        assert [r.getMessage() for r in caplog.records] == [
            "history: a segment of gate was not written: refused\\x1b[2J\\nFAKE: ok"]
        assert store.dropped == 1
    finally:
        store.close()


def test_a_database_error_in_a_history_read_is_escaped(tmp_path, caplog):
    import sqlite3

    from streamrec.live.history import HistoryStore
    from streamrec.serve.routes import history_api

    db = tmp_path / "h.db"
    store = HistoryStore(str(db))
    try:
        with sqlite3.connect(db) as conn:  # the segments now read a table whose name holds an escape and a newline
            conn.execute("DROP TABLE segments")
            conn.execute('CREATE TABLE "gone\x1b[2J\nFAKE" (camera, label, start_ts, end_ts, mean_score, peak_score, windows)')
            conn.execute('CREATE VIEW segments AS SELECT * FROM "gone\x1b[2J\nFAKE"')
            conn.execute('DROP TABLE "gone\x1b[2J\nFAKE"')
        with caplog.at_level(logging.WARNING, logger="streamrec.serve.routes"):
            reply = history_api(store).handler("GET", "/api/history", {})
        assert (reply.status, reply.body) == (503, {"error": "cannot read the history database: no such table: "
                                                             "main.gone\\x1b[2J FAKE"})  # one line: blanks joined
        assert [r.getMessage() for r in caplog.records] == [
            "history: cannot read the history database: no such table: main.gone\\x1b[2J FAKE"]
    finally:
        store.close()


@pytest.mark.parametrize("char, escaped", BAD)
@pytest.mark.parametrize("scheme", ["rtsp", "RTSPS", "http"])
def test_a_source_url_with_a_control_character_is_refused_on_one_line(scheme, char, escaped):
    from streamrec.errors import SourceError
    from streamrec.live.sources import SourceSpec

    with pytest.raises(SourceError) as info:
        SourceSpec.parse(f"{scheme}://admin:pw@cam/live{char}FAKE")
    assert str(info.value).startswith("--source: expected a URL without control characters or line breaks, got '")
    assert str(info.value).endswith(f"({escaped})") and "\n" not in str(info.value) and "pw" not in str(info.value)


@pytest.mark.parametrize("char, escaped", BAD)
def test_a_file_source_is_shown_on_one_line(tmp_path, char, escaped):
    from streamrec.errors import SourceError
    from streamrec.live.sources import SourceSpec, open_source

    spec = SourceSpec.parse(f"{tmp_path}/clip{char}FAKE.mp4")
    assert spec.display_name == f"{tmp_path}/clip{escaped}{char[1:]}FAKE.mp4"
    with pytest.raises(SourceError) as info:
        open_source(spec)
    assert str(info.value) == f"--source: file not found: {spec.display_name}"


@pytest.mark.parametrize("text, line", [
    ("camera gate\x1b[2J\nFAKE INFO ok", "camera gate\\x1b[2J\\nFAKE INFO ok"),
    ("source rtsp://u:pw@cam/x\u2028unavailable", "source rtsp://u:***@cam/x\\u2028unavailable"),
    ("config /tmp/a\rb.toml\u202e", "config /tmp/a\\rb.toml\\u202e"),
])
def test_a_log_line_is_one_line_whatever_its_arguments(text, line):
    from streamrec.redact import OneLineFormatter

    record = logging.makeLogRecord({"msg": "%s", "args": (text,), "levelname": "INFO", "name": "x"})
    assert OneLineFormatter("%(levelname)s %(message)s").format(record) == f"INFO {line}"


@pytest.mark.parametrize("char, escaped", BAD[:6] + BAD[7:10])
def test_a_checkpoint_class_name_with_a_control_character_is_refused(char, escaped):
    from streamrec.errors import WeightsError
    from streamrec.models.registry import build_model, load_checkpoint, make_checkpoint, model_spec

    classes = ["serve", f"smash{char}FAKE"]
    ck = make_checkpoint(build_model("tiny3d", num_classes=2), model="tiny3d", classes=classes, spec=model_spec("tiny3d"))
    with pytest.raises(WeightsError) as info:
        load_checkpoint(ck, source="ck.pt")
    assert str(info.value) == ("--weights ck.pt: classes: expected names of 1-200 characters without control characters "
                               f"or line breaks, got {classes[1]!r}")
    assert "\n" not in str(info.value) and escaped in str(info.value)


@pytest.mark.parametrize("char, escaped", [b for b in BAD if b[0] != "\x00"])  # no file name holds NUL
def test_a_config_path_with_a_control_character_is_one_line_and_exit_2(tmp_path, capsys, char, escaped):
    from streamrec.cli.main import main

    cfg = tmp_path / f"cams{char}FAKE.toml"
    cfg.write_text("source = [\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamrec: error: --config ") and err.endswith(": not valid TOML: Invalid value (at end of document)\n")
    assert err.count("\n") == 1 and not control_characters(err[:-1])


def test_history_and_events_tables_draw_stored_names_on_one_line(tmp_path, capsys):
    import sqlite3

    from streamrec.cli.events import print_events
    from streamrec.cli.main import main
    from streamrec.live.history import HistoryStore

    db = tmp_path / "h.db"
    HistoryStore(str(db)).close()
    with sqlite3.connect(db) as conn:  # written by something else than serve
        conn.execute("INSERT INTO segments (camera, label, start_ts, end_ts, mean_score, peak_score, windows) "
                     "VALUES ('gate\x1b[2J', 'walk\ning', 0, 1, 0.5, 0.6, 2)")
    assert main(["history", "--db", str(db), "--since", "0"]) == 0
    print_events([{"id": "e1", "camera": "gate", "rule": "r\u202e", "label": "walk\x85ing", "start_ts": 0.0, "end_ts": 1.0,
                   "peak_score": 0.6}], "table")
    out = capsys.readouterr().out
    assert out.count("\n") == 4 and "gate\\x1b[2J" in out and "walk\\ning" in out and "r\\u202e" in out
    assert "walk\\x85ing" in out and not control_characters(out.replace("\n", ""))
