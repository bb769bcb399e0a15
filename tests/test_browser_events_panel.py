"""The Events panel alone, its server played by playwright: a clip of a codec browsers do not
play is offered as a download, not a broken player, an open event's clip is said to come when
it ends, and a deleted event leaves the list and the player."""

from __future__ import annotations

import json
from email.utils import formatdate
import re
import time

import pytest

from browser import MARKS, chromium_page
from conftest import ROOT
from streamrec.live.wire import message_schema

pytestmark = MARKS
PAGE = ROOT / "streamrec" / "serve" / "web" / "index.html"
BASE = "http://streamrec.test"


@pytest.fixture
def page():
    with chromium_page(1280, 900) as page:
        yield page


def test_a_clip_browsers_cannot_play_is_a_download_and_a_deleted_event_goes(page):
    now = time.time()
    common = {"rule": "lifting", "camera": "court-1", "label": "deadlifting", "start_ts": now - 20, "end_ts": now - 5,
              "peak_score": 0.9, "mean_score": 0.8, "state": "closed", "has_clip": True, "clip_bytes": 1000}
    listing = [{**common, "id": "hevc1", "clip": "/api/events/hevc1/clip.mp4", "thumbnail": "/api/events/hevc1/thumb.jpg",
                "clip_codec": "hevc", "clip_plays_in_browser": False},
               {**common, "id": "h264", "start_ts": now - 60, "clip": "/api/events/h264/clip.mp4",
                "thumbnail": "/api/events/h264/thumb.jpg", "clip_codec": "h264", "clip_plays_in_browser": True},
               {**common, "id": "open1", "start_ts": now - 3, "end_ts": None, "state": "open", "clip_bytes": 0,
                "clip": "/api/events/open1/clip.mp4", "thumbnail": None, "clip_codec": "h264",
                "clip_plays_in_browser": True}]  # its clip is being written: a 404 until it ends
    clip_requests: list[str] = []
    page.route(re.compile(r"^http://streamrec\.test/(\?.*)?$"),
               lambda r: r.fulfill(status=200, content_type="text/html", body=PAGE.read_text()))
    page.route(f"{BASE}/healthz*", lambda r: r.fulfill(status=200, json={"status": "ok"},  # a server's clock in Date
                                                     headers={"Date": formatdate(usegmt=True)}))
    page.route(f"{BASE}/api/schema*", lambda r: r.fulfill(status=200, json=message_schema()))
    page.route(f"{BASE}/api/history*", lambda r: r.fulfill(status=200, json={"segments": [], "truncated": False}))
    page.route(f"{BASE}/api/events?*", lambda r: r.fulfill(status=200, json={"events": listing}))
    page.route(f"{BASE}/api/events/*/thumb.jpg*", lambda r: r.fulfill(status=404, json={"error": "none"}))
    page.route(f"{BASE}/api/events/*/clip.mp4*", lambda r: (clip_requests.append(r.request.url),
                                                            r.fulfill(status=404, json={"error": "none"})))
    sockets = []
    page.route_web_socket("ws://streamrec.test/ws*", lambda ws: sockets.append(ws))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{BASE}/")
    page.wait_for_selector("[data-testid=event][data-id=hevc1]", timeout=10_000)
    assert "hevc video: download" in page.inner_text("[data-testid=event][data-id=hevc1]")
    assert "download" not in page.inner_text("[data-testid=event][data-id=h264]")

    page.click("[data-testid=event][data-id=hevc1]")
    page.wait_for_selector("[data-testid=clip-download]", state="visible", timeout=5_000)
    assert page.get_attribute("[data-testid=clip-download]", "href") == f"{BASE}/api/events/hevc1/clip.mp4"
    assert page.get_attribute("[data-testid=clip-download]", "download") == "hevc1.mp4"
    assert "this clip is hevc video, which browsers do not play" in page.inner_text("[data-testid=player-box]")
    assert page.get_attribute("[data-testid=player]", "src") is None and clip_requests == []

    page.click("[data-testid=event][data-id=open1]")  # an open event: the player says its clip comes when it ends
    page.wait_for_function("document.querySelector('.player .ptext')?.textContent.includes('still being recorded')",
                           timeout=10_000)
    assert page.inner_text("[data-testid=player-box] .ptext") == (
        "deadlifting on court-1: still being recorded; its video can be watched once the event ends.")
    assert clip_requests == [f"{BASE}/api/events/open1/clip.mp4"]
    page.click("[data-testid=event][data-id=hevc1]")

    # deleted (from another page, or by the API): it leaves the list and the player
    listing[:] = listing[1:]
    sockets[0].send(json.dumps({"type": "event_deleted", "id": "hevc1", "state": "deleted"}))
    page.wait_for_selector("[data-testid=event][data-id=hevc1]", state="detached", timeout=5_000)
    assert page.is_hidden("[data-testid=player-box]")
    assert page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => e.dataset.id)") == ["open1", "h264"]
    assert errors == []


def played_server(page, listing: list[dict], history_urls: list[str], held: list, hold: list[bool]) -> list:
    """The server of the page, played: the listing of events (held back while ``hold[0]``), no
    history (its request URLs kept), clips and thumbnails missing; the page's websockets."""
    page.route(re.compile(r"^http://streamrec\.test/(\?.*)?$"),
               lambda r: r.fulfill(status=200, content_type="text/html", body=PAGE.read_text()))
    page.route(f"{BASE}/healthz*", lambda r: r.fulfill(status=200, json={"status": "ok"},  # a server's clock in Date
                                                     headers={"Date": formatdate(usegmt=True)}))
    page.route(f"{BASE}/api/schema*", lambda r: r.fulfill(status=200, json=message_schema()))
    page.route(f"{BASE}/api/history*", lambda r: (history_urls.append(r.request.url),
                                                  r.fulfill(status=200, json={"segments": [], "truncated": False})))
    page.route(f"{BASE}/api/events?*", lambda r: held.append(r) if hold[0] else r.fulfill(status=200, json={"events": listing}))
    page.route(f"{BASE}/api/events/*/thumb.jpg*", lambda r: r.fulfill(status=404, json={"error": "none"}))
    page.route(f"{BASE}/api/events/*/clip.mp4*", lambda r: r.fulfill(status=404, json={"error": "none"}))
    sockets = []
    page.route_web_socket("ws://streamrec.test/ws*", lambda ws: sockets.append(ws))
    return sockets


def test_a_clip_that_fails_is_a_download_and_a_delete_during_a_list_request_holds(page):
    now = time.time()
    ev = {"id": "late1", "rule": "lifting", "camera": "court-1", "label": "deadlifting", "start_ts": now - 20,
          "end_ts": now - 5, "peak_score": 0.9, "mean_score": 0.8, "state": "closed", "has_clip": True, "clip_bytes": 1000,
          "clip": "/api/events/late1/clip.mp4", "thumbnail": "/api/events/late1/thumb.jpg", "clip_codec": None,
          "clip_plays_in_browser": None, "zone": None}
    listing, history_urls, held, hold = [ev], [], [], [False]
    sockets = played_server(page, listing, history_urls, held, hold)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{BASE}/")
    page.wait_for_selector("[data-testid=event][data-id=late1]", timeout=10_000)
    # a clip whose codec the page does not know, and that the browser cannot play: offered as a download
    page.click("[data-testid=event][data-id=late1]")
    page.wait_for_selector("[data-testid=clip-download]", state="visible", timeout=10_000)
    assert page.get_attribute("[data-testid=clip-download]", "href") == f"{BASE}/api/events/late1/clip.mp4"
    page.click("[data-testid=player-close]")
    # a list request on its way when the event is deleted: its answer, asked before, does not bring it back
    hold[0] = True
    closed = {**ev, "id": "late2", "start_ts": now - 4, "end_ts": now - 1, "type": "event"}
    sockets[0].send(json.dumps(closed))  # a closed event: the page asks for the list a second on
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert held, "the page asked for no list"
    sockets[0].send(json.dumps({"type": "event_deleted", "id": "late1", "state": "deleted"}))
    page.wait_for_selector("[data-testid=event][data-id=late1]", state="detached", timeout=5_000)
    hold[0] = False
    held.pop().fulfill(status=200, json={"events": [{k: v for k, v in closed.items() if k != "type"}, ev]})
    page.wait_for_timeout(500)
    assert page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => e.dataset.id)") == ["late2"]
    # the strips ask for the whole frames' segments alone (zones' rows no longer fill the server's cap)
    assert history_urls and all("zone=&" in url for url in history_urls)
    assert errors == []


def test_the_strips_follow_the_servers_clock_not_a_browsers_set_wrong(page):
    from streamrec.config import SmoothingConfig
    from streamrec.live.messages import prediction_message, status_message
    from streamrec.live.smoothing import LabelSmoother

    import numpy as np

    listing, history_urls, held, hold = [], [], [], [False]
    sockets = played_server(page, listing, history_urls, held, hold)
    page.clock.set_system_time(time.time() - 1200)  # this browser's clock is 20 minutes behind
    page.goto(f"{BASE}/")
    deadline = time.monotonic() + 10
    while not sockets and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    now = time.time()
    probs = np.array([0.1, 0.7, 0.2])
    sockets[0].send(json.dumps(status_message(camera="gym", source={"state": "running", "capture_fps": 25.0},
                                              inference={"inference_rate": 2.0}, model="tiny3d", device="cpu",
                                              backend="torch", meaningless=False)))
    smoothed = LabelSmoother(SmoothingConfig(threshold=0.2)).update(probs)
    sockets[0].send(json.dumps(prediction_message(seq=1, smoothed=smoothed, probs=probs, classes=["a", "b", "c"],
                                                  start_ts=now - 2.0, end_ts=now - 0.5, frames=16, infer_ms=50.0,
                                                  sent_ts=now, capture_fps=25.0, camera="gym")))
    asked = len(history_urls)
    deadline = time.monotonic() + 15
    while len(history_urls) < asked + 2 and time.monotonic() < deadline:  # one asked after the label came
        page.wait_for_timeout(200)
    since = float(re.search(r"since=([0-9.]+)", history_urls[-1])[1])
    assert abs(since - (time.time() - 600)) < 30, since - time.time()  # the server's last 10 minutes, not 30 ago
