"""The page's day view and minutes per activity count the activity in progress from its start
(the open segment /api/history answers, grown by the websocket's labels), and a segment that an
outage ended stops at its last label. The real page and the real history route, in headless
Chromium; the requests are answered in the test (no model, no camera)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from browser import MARKS, chromium_page
from streamrec.live.history import HistoryStore
from streamrec.live.segments import Segment
from streamrec.live.messages import prediction_message, status_message
from streamrec.live.smoothing import Smoothed
from streamrec.live.wire import message_schema
from streamrec.serve.routes import HISTORY_API_LIMIT, history_api
from streamrec.serve.server import page_html

pytestmark = MARKS
BASE = "http://streamrec.test"


def prediction(seq: int, end_ts: float) -> str:
    sm = Smoothed(label_index=0, score=0.9, uncertain=False, raw_index=0, raw_score=0.9, scores=np.array([0.9, 0.1]))
    return json.dumps(prediction_message(seq=seq, smoothed=sm, classes=["walking", "running"],
                                         top=[{"label": "walking", "score": 0.9}], start_ts=end_ts - 1, end_ts=end_ts,
                                         frames=16, infer_ms=5.0, sent_ts=end_ts, capture_fps=15.0, camera="gate"))


def status(state: str) -> str:
    source = {"state": state, "source": "rtsp://cam/x", "frames": 100, "capture_fps": 15.0, "dropped": 0,
              "decode_errors": 0, "reconnects": 0, "error": None}
    return json.dumps(status_message(camera="gate", source=source, inference={"inference_rate": 1.0}, model="tiny3d",
                                     device="cpu", backend=None, meaningless=False))


def serve_page(page, store: HistoryStore, ws_messages: list[str], *, limit: int = HISTORY_API_LIMIT) -> None:
    """The page, /api/history from ``store`` (``limit`` segments an answer), a /healthz, the message schema, no events,
    and a websocket that sends ``ws_messages`` once it opens."""
    route = history_api(store, limit=limit)

    def answer(r) -> None:
        url = urlsplit(r.request.url)
        if url.path == "/":
            return r.fulfill(status=200, content_type="text/html; charset=utf-8", body=page_html())
        if url.path == "/api/history":
            reply = route.handler("GET", url.path, parse_qs(url.query))
            return r.fulfill(status=reply.status, content_type="application/json", body=json.dumps(reply.body))
        if url.path == "/healthz":
            return r.fulfill(status=200, content_type="application/json", body='{"status": "ok", "reasons": []}')
        if url.path == "/api/schema":
            return r.fulfill(status=200, content_type="application/json", body=json.dumps(message_schema()))
        if url.path == "/api/events":
            return r.fulfill(status=200, content_type="application/json", body='{"events": [], "truncated": false}')
        return r.fulfill(status=404, body="")

    def socket(ws) -> None:
        for m in ws_messages:
            ws.send(m)

    page.route(f"{BASE}/**", answer)
    page.route_web_socket(f"{BASE.replace('http', 'ws')}/**", socket)
    page.goto(f"{BASE}/")


def room_in_today(seconds: float) -> float:
    """Now, or a skip when the local day began less than ``seconds`` ago (the seeded past would be yesterday's)."""
    now = time.time()
    midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if now - midnight < seconds:
        pytest.skip(f"the local day began {now - midnight:.0f} s ago; this test seeds the last {seconds:.0f} s of today")
    return now


def minutes_of(page) -> dict[str, float]:
    sel = "[data-testid=minutes] li[data-label]"
    page.wait_for_function(f"document.querySelectorAll('{sel}').length >= 1", timeout=20_000)
    return dict(page.eval_on_selector_all(sel, "els => els.map(e => [e.dataset.label, Number(e.dataset.minutes)])"))


@pytest.fixture
def page():
    with chromium_page(1280, 900) as page:
        yield page


def test_the_day_view_counts_the_activity_in_progress_from_its_start(page):
    store = HistoryStore(":memory:")
    try:
        now = room_in_today(200)
        tracker = store.tracker("gate")
        for i in range(180):  # walking for 3 minutes, and still
            tracker.update("walking", 0.9, now - 180 + i)
        serve_page(page, store, [status("running"), prediction(1, now)])
        page.wait_for_selector("[data-testid=timeline] span[data-label=walking]", timeout=20_000)
        page.click("[data-testid=view-day]")
        got = minutes_of(page)
        assert set(got) == {"walking"} and 2.95 <= got["walking"] <= 3.5, got
        assert page.eval_on_selector_all("[data-testid=timeline] span[data-label=walking]", "els => els.length") == 1
    finally:
        store.close()


def test_a_segment_an_outage_ended_stops_at_its_last_label(page):
    store = HistoryStore(":memory:")
    try:
        now = room_in_today(200)
        tracker = store.tracker("gate")
        for i in range(60):  # a minute of walking, then the camera went away 2 minutes ago
            tracker.update("walking", 0.9, now - 180 + i)
        serve_page(page, store, [status("reconnecting")])
        page.wait_for_selector("[data-testid=timeline] span[data-label=walking]", timeout=20_000)
        page.click("[data-testid=view-day]")
        got = minutes_of(page)
        assert set(got) == {"walking"} and abs(got["walking"] - 59 / 60) < 0.01, got
    finally:
        store.close()


def test_labels_after_an_outage_start_a_new_piece_on_the_page(page):
    store = HistoryStore(":memory:")
    try:
        now = room_in_today(30)
        tracker = store.tracker("gate")
        for ts in (now - 10, now - 9, now - 8):
            tracker.update("walking", 0.9, ts)
        tracker.interrupt()  # the server ended it when the camera went away, 2 s before it came back
        store.flush()
        messages = [status("running"), prediction(1, now - 10), prediction(2, now - 9), prediction(3, now - 8),
                    status("reconnecting"), status("running"), prediction(4, now - 6), prediction(5, now - 5),
                    prediction(6, now - 4)]
        serve_page(page, store, messages)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.wait_for_function("document.querySelectorAll('[data-testid=timeline] span[data-label=walking]').length === 2",
                               timeout=20_000)
        page.click("[data-testid=view-day]")
        got = minutes_of(page)
        assert set(got) == {"walking"} and abs(got["walking"] - 4 / 60) < 0.001, got  # 2 s + 2 s, not the outage
        assert errors == []
    finally:
        store.close()


def test_the_day_view_counts_every_segment_of_a_day_longer_than_one_answer(page):
    """A label that flickers makes more segments in a day than one /api/history answer holds (the
    newest, "truncated"): the page asks for the earlier ones too, or the morning reads empty."""
    store = HistoryStore(":memory:")
    try:
        yesterday = datetime.now().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
        noon = yesterday.timestamp()
        for i in range(120):  # 10 minutes of yesterday noon: 5 s walking, 5 s running, ...
            start = noon + 5 * i
            store.add(Segment("gate", ("walking", "running")[i % 2], start, start + 5, 0.8, 0.9, 5))
        serve_page(page, store, [status("running")], limit=50)  # 50 segments an answer: three pages
        page.wait_for_selector("[data-testid=timeline]", timeout=20_000)
        page.fill("[data-testid=day]", yesterday.strftime("%Y-%m-%d"))
        page.click("[data-testid=view-day]")
        page.wait_for_function("document.querySelectorAll('[data-testid=timeline] span[data-label]').length >= 120",
                               timeout=20_000)
        got = minutes_of(page)
        assert got == pytest.approx({"walking": 5.0, "running": 5.0}, abs=1e-6), got
    finally:
        store.close()


def test_a_camera_whose_model_is_not_known_yet_shows_a_dash_not_null(page):
    """A cluster camera before its model actor answers: no model, device or backend yet."""
    store = HistoryStore(":memory:")
    try:
        unknown = json.loads(status("running"))
        unknown.update(model=None, device=None, backend=None)
        serve_page(page, store, [json.dumps(unknown)])
        page.wait_for_function("document.querySelector('.tile .model')?.textContent === '–'", timeout=20_000)
        page.route_web_socket(f"{BASE.replace('http', 'ws')}/**", lambda ws: ws.send(status("running")))
        page.reload()
        page.wait_for_function("document.querySelector('.tile .model')?.textContent === 'tiny3d (cpu)'", timeout=20_000)
    finally:
        store.close()


def test_a_replayed_old_label_moves_neither_the_clock_nor_its_age(page):
    """A new page gets the server's last label at once, an hour old here (a file that ended): the
    10-minute strip stays the server's last 10 minutes, and the label reads an hour old."""
    store = HistoryStore(":memory:")
    try:
        asked: list[str] = []
        page.on("request", lambda r: "/api/history" in r.url and asked.append(r.url))
        now = time.time()
        serve_page(page, store, [status("running"), prediction(7, now - 3600)])
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq === '7'", timeout=20_000)
        page.wait_for_function("Number(document.querySelector('.tile .age')?.textContent) > 0", timeout=20_000)
        age = float(page.inner_text(".tile .age"))
        assert 3590 <= age <= 3700, age
        before = len(asked)
        for _ in range(100):  # the strip is asked for every 5 s: once more since the label came
            if len(asked) > before:
                break
            page.wait_for_timeout(100)
        since = float(parse_qs(urlsplit(asked[-1]).query)["since"][0])
        assert len(asked) > before and abs(since - (time.time() - 600)) < 60, since - time.time()
    finally:
        store.close()


def test_a_camera_without_answers_says_why_and_a_zones_only_camera_has_no_age(page):
    store = HistoryStore(":memory:")
    try:
        serve_page(page, store, [status("reconnecting")])  # an RTSP camera down since the start
        page.wait_for_function("document.querySelector('[data-testid=label]')?.textContent === "
                               "'no answer: the video is reconnecting'", timeout=20_000)
        zones_only = json.loads(status("running"))
        zones_only["whole_frame"] = False
        page.route_web_socket(f"{BASE.replace('http', 'ws')}/**",
                              lambda ws: [ws.send(m) for m in (status("running"), prediction(1, time.time()),
                                                               json.dumps(zones_only))])
        page.reload()
        page.wait_for_function("document.querySelector('[data-testid=label]')?.textContent === "
                               "'zones only: the whole frame is not labelled'", timeout=20_000)
        page.wait_for_timeout(1500)  # the age is refreshed each second: it stays blank
        assert [page.inner_text(f".tile {sel}") for sel in (".age", ".lat", ".infer")] == ["–", "–", "–"]
    finally:
        store.close()
