"""The websocket's messages as types (:mod:`streamrec.live.wire`): what every builder sends
validates, a bad value is refused naming its field, and ``GET /api/schema`` on a real server
serves the JSON Schema that accepts what its websocket sends and refuses a bad message."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import typing
import urllib.request

import numpy as np
import pytest

from streamrec.config import ServeConfig
from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig
from streamrec.events.manager import EventManager
from streamrec.events.store import Event as StoredEvent
from streamrec.live.capture import CaptureState
from streamrec.live.history import HistoryStore
from streamrec.live.messages import prediction_message, status_message, validate_prediction
from streamrec.live.smoothing import LabelSmoother, SmoothingConfig
from streamrec.catalog import MEANINGLESS, UNCERTAIN
from streamrec.live.wire import (CaptureStateName, Event, EventDeleted, Prediction, Removed, Status, message_schema,
                                 validate_message)
from streamrec.serve.core import AppCore
from streamrec.supervision import Supervisor
from streamrec.zones import ZoneConfig, stream_key

CLASSES = [f"c{i}" for i in range(8)]
PROBS = np.array([0.05, 0.4, 0.1, 0.2, 0.05, 0.1, 0.05, 0.05])
TOKEN = "wire-token"


def sent(msg: dict) -> dict:
    """A message as a client reads it: through strict JSON."""
    return json.loads(json.dumps(msg, allow_nan=False))


def prediction(zone: str | None = None, **kw) -> dict:
    sm = LabelSmoother(SmoothingConfig(threshold=0.2)).update(PROBS)
    args = dict(seq=4, smoothed=sm, probs=PROBS, classes=CLASSES, start_ts=100.0, end_ts=101.0, frames=16,
                infer_ms=600.0, sent_ts=101.25, capture_fps=30.0, camera="gym", zone=zone)
    return sent(prediction_message(**{**args, **kw}))


ZONES = (ZoneConfig("rack", 0.0, 0.0, 0.5, 0.5),
         ZoneConfig.from_polygon("mat", [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]], camera="gym"))
SOURCE = {"state": "running", "source": "gym.mp4", "frames": 120, "capture_fps": 30.0, "dropped": 0,
          "decode_errors": 0, "reconnects": 0, "error": None}


def status(**extra) -> dict:
    return sent(status_message(camera="gym", source=SOURCE, inference={"inference_rate": 2.0, "predictions": 9},
                               model="tiny3d", device="cpu", backend="torch", meaningless=True, zones=ZONES,
                               whole_frame=False, **extra))


def event(end_ts: float | None) -> dict:
    ev = StoredEvent("e1", "lifting", "gym", "deadlifting", 100.0, 0.81234, 0.7, end_ts=end_ts, zone="rack")
    return sent({"type": "event", **ev.to_json()})


def test_predictions_of_a_zone_and_of_the_whole_frame_validate():
    for zone in ("rack", None):
        msg = prediction(zone)
        got = validate_message(msg)
        assert isinstance(got, Prediction) and got == validate_prediction(msg)
        assert (got.zone, got.label, got.window.frames, got.latency_ms) == (zone, "c1", 16, 250.0)
        assert [t.label for t in got.top] == ["c1", "c3", "c2", "c5", "c0"]


def test_status_with_zones_and_with_the_clusters_node_validates():
    got = validate_message(status())
    assert isinstance(got, Status)
    assert [(z.name, z.polygon) for z in got.zones] == [("rack", None), ("mat", [(0.5, 0.5), (0.8, 0.5), (0.65, 0.9)])]
    assert (got.source.state, got.whole_frame, got.node) == ("running", False, None)
    assert validate_message(status(node="10.0.0.7")).node == "10.0.0.7"
    for state in ("error", "unreachable"):  # the cluster's: an actor that failed to start, or did not answer
        msg = status(node="10.0.0.7")
        msg["source"] = {"state": state, "error": "RayActorError"}
        assert validate_message(msg).source.state == state
    bare = sent(status_message(camera="gym", source={}, inference={}, model=None, device=None, backend=None,
                               meaningless=False))  # the cluster's camera removed meanwhile
    assert validate_message(bare).source.state is None


def test_events_opened_closed_and_deleted_validate(tmp_path):
    opened, closed = validate_message(event(None)), validate_message(event(104.0))
    assert isinstance(opened, Event) and (opened.state, opened.zone, opened.peak_score) == ("open", "rack", 0.8123)
    assert (closed.state, closed.end_ts) == ("closed", 104.0)
    published: list[dict] = []
    rule = RuleConfig(name="lifting", labels=("deadlifting",), min_seconds=1.0, end_seconds=1.0)
    events = EventManager(rules=(rule,), notify=NotifyConfig(), recording=RecordingConfig(dir=str(tmp_path)),
                          db=str(tmp_path / "events.db"), classes=["deadlifting"], supervisor=Supervisor(),
                          publish=published.append)
    try:
        events.store.opened(StoredEvent("e1", "lifting", "gym", "deadlifting", 100.0, 0.9, 0.8), now=100.0)
        assert events.delete("e1")
    finally:
        events.close()
    assert [validate_message(sent(m)) for m in published] == [EventDeleted(id="e1", state="deleted")]


def test_the_capture_states_are_those_of_the_capture():
    assert set(typing.get_args(CaptureStateName)) == {s.value for s in CaptureState}


def with_(msg: dict, path: str, value) -> dict:
    """``msg`` with ``value`` at ``path`` (``a.b``), or without the field when ``value`` is ``...``."""
    msg = json.loads(json.dumps(msg))
    *parents, last = path.split(".")
    at = msg
    for p in parents:
        at = at[p]
    if value is ...:
        del at[last]
    else:
        at[last] = value
    return msg


@pytest.mark.parametrize("msg, path, value, error", [
    (prediction(), "score", 1.5, "prediction.score: expected `float` <= 1.0, got 1.5"),
    (prediction(), "latency_ms", -1.0, "prediction.latency_ms: expected `float` >= 0.0, got -1.0"),
    (prediction(), "infer_ms", float("inf"), "prediction.infer_ms: expected `float` <= 1.7976931348623157e+308, got inf"),
    (prediction(), "zone", "a/b", "prediction.zone: expected a zone's name or null (the whole frame), got 'a/b'"),
    (prediction(), "label", ..., "prediction: object missing required field `label`"),
    (prediction(), "type", "frame",
     "message.type: expected one of 'prediction', 'status', 'event', 'event_deleted', 'removed', got 'frame'"),
    (prediction(), "seq", True, "prediction.seq: expected `int`, got `bool`"),
    (prediction(), "window.frames", 0, "prediction.window.frames: expected `int` >= 1, got 0"),
    (prediction(), "window.start_ts", 102.0,
     "prediction.window: expected start_ts <= end_ts, got start_ts 102.0 > end_ts 101.0"),
    (prediction(), "top", [{"label": "a", "score": 0.2}, {"label": "b", "score": 0.3}],
     "prediction.top: expected scores in descending order, got [0.2, 0.3]"),
    (prediction(), "top", [], "prediction.top: expected `array` of length >= 1, got []"),
    (prediction(), "extra", 1, "prediction: object contains unknown field `extra`"),
    (status(), "source.state", "asleep",
     "status.source.state: expected one of 'ended', 'error', 'reconnecting', 'running', 'starting', 'stopped', "
     "'unreachable', got 'asleep'"),
    (event(104.0), "state", "gone", "event.state: expected one of 'closed', 'open', got 'gone'"),
    (event(None), "state", "closed", "event.state: expected 'open' exactly when end_ts is null, got 'closed' with end_ts None"),
    ({"type": "removed", "camera": ""}, "camera", "", "removed.camera: expected `str` of length >= 1, got ''"),
])
def test_a_bad_value_is_refused_naming_the_field(msg, path, value, error):
    with pytest.raises(ValueError) as err:
        validate_message(with_(msg, path, value))
    assert str(err.value) == error


def test_validate_prediction_refuses_another_message():
    with pytest.raises(ValueError) as err:
        validate_prediction(status())
    assert str(err.value) == "prediction.type: expected 'prediction', got 'status'"


@pytest.fixture(scope="module")
def core():
    """A real app core serving its routes and websocket in process (port 0, with a token)."""
    app = AppCore(ServeConfig(source="0", port=0, token=TOKEN), HistoryStore(":memory:"))
    app.build_server()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(app.server.start(), loop).result(30)
    yield app
    asyncio.run_coroutine_threadsafe(app.server.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    app.history.close()


def get_schema(port: int) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/schema", timeout=30) as answer:  # without the token
        return answer.status, json.loads(answer.read())


def test_the_served_schema_is_the_messages_schema(core):
    status_code, schema = get_schema(core.server.port)
    assert status_code == 200 and schema == message_schema()
    assert sorted(schema["discriminator"]["mapping"]) == ["event", "event_deleted", "prediction", "removed", "status"]
    assert schema["x-streamrec"] == {"uncertain": UNCERTAIN, "meaningless": MEANINGLESS}


def test_the_page_holds_no_copy_of_what_the_schema_says():
    """The page reads the label of no clear answer and the random-weights warning from /api/schema."""
    from streamrec.serve.server import page_html

    page = page_html().decode()
    assert MEANINGLESS not in page and "labels are meaningless" not in page
    assert '= "uncertain"' not in page and '"x-streamrec"' in page


def websocket_messages(core: AppCore) -> list[dict]:
    """What the websocket sends a page while the app publishes one message of each kind."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{core.server.port}/ws?token={TOKEN}", max_size=2**22) as ws:
        deadline = time.monotonic() + 10
        while len(core.hub.clients) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        core.deliver([(stream_key("gym", None), prediction()), (stream_key("gym", "rack"), prediction("rack"))])
        core.hub.publish_threadsafe("status:gym", json.dumps(status(node="10.0.0.7")))
        core.publish_event(event(None))
        core.publish_event(event(104.0))
        core.publish_event({"type": "event_deleted", "id": "e1", "state": "deleted"})
        with core.lock:
            core.announce_removed("gym")
        return [json.loads(ws.recv(timeout=10)) for _ in range(7)]


def test_the_websockets_messages_validate_against_the_served_schema(core):
    jsonschema = pytest.importorskip("jsonschema")
    _, schema = get_schema(core.server.port)
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator(schema)
    got = websocket_messages(core)
    kinds = sorted(((m["type"], m.get("zone"), m.get("state")) for m in got), key=str)
    assert kinds == [("event", "rack", "closed"), ("event", "rack", "open"), ("event_deleted", None, "deleted"),
                     ("prediction", "rack", None), ("prediction", None, None), ("removed", None, None),
                     ("status", None, None)]
    for msg in got:
        checker.validate(msg)
        assert type(validate_message(msg)) in (Prediction, Status, Event, EventDeleted, Removed)
    bad = next(m for m in got if m["type"] == "prediction")
    worst = jsonschema.exceptions.best_match(checker.iter_errors({**bad, "score": 1.5}))
    assert (list(worst.path), worst.message) == (["score"], "1.5 is greater than the maximum of 1")
    assert not checker.is_valid({**bad, "type": "frame"}) and not checker.is_valid({**bad, "zone": "a/b"})


def test_two_cameras_removed_at_once_are_both_told_to_the_page(core):
    """Each removal has its own slot: the second never replaces the first one's unsent notice
    (the page kept the first camera's tile until it reconnected)."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{core.server.port}/ws?token={TOKEN}", max_size=2**22) as ws:
        deadline = time.monotonic() + 10
        while len(core.hub.clients) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with core.lock:
            core.announce_removed("cam-a")
            core.announce_removed("cam-b")
        got = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
    assert sorted(m["camera"] for m in got) == ["cam-a", "cam-b"] and {m["type"] for m in got} == {"removed"}


def test_latency_is_never_negative_when_the_clock_went_back():
    from streamrec.live.messages import prediction_message
    from streamrec.live.smoothing import Smoothed

    smoothed = Smoothed(label_index=0, score=0.9, uncertain=False, raw_index=0, raw_score=0.9, scores=np.array([0.9, 0.1]))
    msg = prediction_message(camera="gym", seq=1, smoothed=smoothed, probs=np.array([0.9, 0.1]), classes=["a", "b"],
                             start_ts=100.0, end_ts=102.0, frames=16, infer_ms=5.0, sent_ts=100.0, capture_fps=25.0)
    assert msg["latency_ms"] == 0.0
    validate_message(msg)
