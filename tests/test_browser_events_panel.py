"""The Events panel alone, its server played by playwright: a clip of a codec browsers do not
play is offered as a download, not a broken player, and a deleted event leaves the list and
the player."""

from __future__ import annotations

import json
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
                "thumbnail": "/api/events/h264/thumb.jpg", "clip_codec": "h264", "clip_plays_in_browser": True}]
    clip_requests: list[str] = []
    page.route(re.compile(r"^http://streamrec\.test/(\?.*)?$"),
               lambda r: r.fulfill(status=200, content_type="text/html", body=PAGE.read_text()))
    page.route(f"{BASE}/healthz*", lambda r: r.fulfill(status=200, json={"status": "ok"}))
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

    # deleted (from another page, or by the API): it leaves the list and the player
    listing[:] = listing[1:]
    sockets[0].send(json.dumps({"type": "event_deleted", "id": "hevc1", "state": "deleted"}))
    page.wait_for_selector("[data-testid=event][data-id=hevc1]", state="detached", timeout=5_000)
    assert page.is_hidden("[data-testid=player-box]")
    assert page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => e.dataset.id)") == ["h264"]
    assert errors == []
