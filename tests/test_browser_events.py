"""The page's Events panel and day view in real headless Chromium (Debian's chromium driven by
playwright): a deterministic model and two rules open events within seconds; the page shows them
as the websocket pushes them, plays and seeks a clip, filters the list, and sums the day's
minutes per activity."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta

import av
import cv2
import pytest
import torch

from browser import MARKS, chromium_page
from conftest import ROOT, free_port, streamrec_cmd, wait_http, wait_until
from streamrec.events.store import Event, EventStore
from streamrec.live.history import HistoryStore, Segment
from streamrec.models.registry import build_model, make_checkpoint, model_spec
from streamrec.live.wire import message_schema

pytestmark = MARKS
DASHBOARD_PNG = ROOT / "docs" / "dashboard.png"


CLASSES = ["clapping", "arm wrestling", "shaking hands"]


def always_b(path) -> str:
    """A tiny3d checkpoint whose head always answers its second class, "arm wrestling" (score about
    1): a deterministic model (tests/test_events.py's, with names a coach reads)."""
    module = build_model("tiny3d", num_classes=3)
    with torch.no_grad():
        module.fc.weight.zero_()
        module.fc.bias.copy_(torch.tensor([0.0, 12.0, 0.0]))
    torch.save(make_checkpoint(module, model="tiny3d", classes=CLASSES, spec=model_spec("tiny3d")), path)
    return str(path)


# "wrestling" opens about a second after the first label; "long bout" (the same label) some
# seconds later, once the page is open: it can only reach the page through the websocket
CONFIG = """
source = "{video}"
loop = true
camera = "gate"
db = "{db}"
[[rules]]
name = "wrestling"
labels = ["arm wrestling"]
min_seconds = 1
end_seconds = 1
[[rules]]
name = "long bout"
labels = ["arm wrestling"]
min_seconds = 10
end_seconds = 1
[recording]
dir = "{clips}"
pre_seconds = 1
post_seconds = 1
max_seconds = 4
"""
# earlier today (seconds before now; cut at midnight): the day view's segments
PAST = [("shaking hands", -3 * 3600, -2.75 * 3600), ("arm wrestling", -2.75 * 3600, -2 * 3600),
        ("uncertain", -2 * 3600, -1.9 * 3600), ("clapping", -1.9 * 3600, -1.5 * 3600),
        ("shaking hands", -330, -210), ("arm wrestling", -210, -30)]


def seed(db, clips, demo_clip, now: float, midnight: float) -> tuple[dict[str, float], list[str]]:
    """The history of earlier today and two events that ended: one with its thumbnail, one whose
    thumbnail is gone. The minutes per label within today, and the events' ids."""
    store = HistoryStore(str(db))
    minutes: dict[str, float] = {}
    for label, start, end in PAST:
        start, end = max(now + start, midnight), now + end
        if end > start:
            store.add(Segment("gate", label, start, end, 0.9, 0.95, int(end - start) * 2))
            minutes[label] = minutes.get(label, 0.0) + (end - start) / 60
    store.flush()
    store.close()
    events = EventStore(str(db))
    with av.open(str(demo_clip)) as c:
        frame = next(f for i, f in enumerate(c.decode(video=0)) if i == 100).to_ndarray(format="bgr24")
    (clips / "gate").mkdir(parents=True)
    cv2.imwrite(str(clips / "gate" / "seed-1.jpg"), frame)
    ids = []
    for n, (start, end) in enumerate([(-300, -235), (-200, -170)], 1):
        start, end = max(now + start, midnight + 1), max(now + end, midnight + 2)
        ev = Event(f"{int(start)}-seed000{n}", "wrestling", "gate", "arm wrestling", start, 0.97, 0.9)
        events.opened(ev, now=start)
        ev.end_ts = end
        events.closed(ev, now=end)
        events.set_files(ev.id, thumbnail=f"gate/seed-{n}.jpg")  # seed-2.jpg is not there
        ids.append(ev.id)
    events.close()
    return minutes, ids


@pytest.fixture
def page():
    with chromium_page(1280, 900, args=("--autoplay-policy=no-user-gesture-required",)) as page:
        yield page


TOKEN = "s3cret"  # every request of the page carries it: the list, the clips, the thumbnails, the history


def get_json(url: str):
    with urllib.request.urlopen(f"{url}?token={TOKEN}", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_events_reach_the_page_play_filter_and_the_day_adds_up(tmp_path, demo_clip, page, artifacts):
    db, clips = tmp_path / "h.db", tmp_path / "clips"
    now = time.time()
    midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if now - midnight < 400:  # the last minutes' segments and events, and the page's "2 min 0 s", are today's
        pytest.skip(f"the local day began {now - midnight:.0f} s ago; this test seeds the last 400 s of today")
    seeded, (shown_id, gone_id) = seed(db, clips, demo_clip, now, midnight)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(CONFIG.format(video=demo_clip, db=db, clips=clips))  # H.264: its packets are remuxed into clips
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--weights", always_b(tmp_path / "b.pt"),
                                          "--port", str(port), "--device", "cpu", "--token", TOKEN),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_http(f"{base}/healthz", proc=proc, timeout=120)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        pushed: list[dict] = []  # the events the websocket brought

        def on_frame(payload) -> None:
            if isinstance(payload, str) and json.loads(payload).get("type") == "event":
                pushed.append(json.loads(payload))

        page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
        listed: list[str] = []  # the page's /api/events requests
        page.on("request", lambda r: "/api/events?" in r.url and listed.append(r.url))
        clip_responses: list[int] = []
        page.on("response", lambda r: "/clip.mp4" in r.url and clip_responses.append(r.status))
        refused: list[str] = []  # a request without the token
        page.on("response", lambda r: r.status == 401 and refused.append(r.url))

        page.goto(f"{base}/?token={TOKEN}")
        page.evaluate("window.sameDocument = true")  # gone if the page reloads
        item = lambda i: f"[data-testid=event][data-id='{i}']"  # noqa: E731
        # today's events that ended: the thumbnail (lazy), or a placeholder where it 404s; how long each lasted
        page.wait_for_selector(item(shown_id), timeout=30_000)
        page.wait_for_function(f"document.querySelector(\"{item(shown_id)} img.thumb\")?.naturalWidth > 0", timeout=10_000)
        assert page.get_attribute(f"{item(shown_id)} img.thumb", "loading") == "lazy"
        assert ("lasted 1 min 5 s" if now - midnight > 300 else "lasted") in page.inner_text(item(shown_id))  # cut at midnight
        page.wait_for_function(f"document.querySelector(\"{item(gone_id)} .thumb.ph\")?.textContent === 'no picture'",
                               timeout=10_000)
        # the first live event: camera, rule, label, start time and "open"
        page.wait_for_selector("[data-testid=event][data-state=open]", timeout=90_000)
        first = page.locator("[data-testid=event][data-state=open]").first
        text = first.inner_text()
        assert all(w in text for w in ("arm wrestling", "gate", "wrestling", "open")), text
        assert first.get_attribute("data-rule") == "wrestling"
        assert first.locator(".thumb.ph").inner_text() == "recording…"  # no thumbnail while open
        assert page.is_hidden("[data-testid=events-empty]")

        # the second one comes later, pushed by the websocket: no reload, no new request for the list
        requests_before = len(listed)
        page.wait_for_function("document.querySelectorAll('[data-testid=event][data-state=open]').length === 2",
                               timeout=60_000)
        assert page.evaluate("window.sameDocument") is True
        assert len(listed) == requests_before, listed
        bout = [e for e in pushed if e["rule"] == "long bout"]
        assert bout and bout[0]["state"] == "open"
        live = dict(page.eval_on_selector_all("[data-testid=event][data-state=open]",
                                              "els => els.map(e => [e.dataset.rule, e.dataset.id])"))
        assert live["long bout"] == bout[0]["id"]
        live_id = live["wrestling"]
        ids = page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => e.dataset.id)")
        assert ids[2:] == [gone_id, shown_id], ids  # newest first

        # a click plays the clip; seeking works, and the clip's bytes come as ranges (206)
        wait_until(lambda: (get_json(f"{base}/api/events/{live_id}").get("clip_bytes") or 0) > 0,
                   "the clip of the first event", timeout=60)  # max_seconds: finished while the event is open
        page.click(item(live_id))
        page.wait_for_selector("[data-testid=player-box]", state="visible", timeout=5_000)
        assert page.get_attribute("[data-testid=player]", "src") == f"{base}/api/events/{live_id}/clip.mp4"
        page.wait_for_function("document.querySelector('[data-testid=player]').currentTime > 0.5", timeout=30_000)
        duration = page.evaluate("document.querySelector('[data-testid=player]').duration")
        assert 3 <= duration <= 15, duration  # max_seconds (4) from the keyframe before pre_seconds
        to = duration - 1
        page.evaluate("v => { const p = document.querySelector('[data-testid=player]'); p.pause(); p.currentTime = v; }", to)
        page.wait_for_function(f"(p => !p.seeking && Math.abs(p.currentTime - {to}) < 0.2)"
                               "(document.querySelector('[data-testid=player]'))", timeout=15_000)
        assert 206 in clip_responses, clip_responses
        assert "playing" in page.get_attribute(item(live_id), "class").split()

        # the filters narrow the list
        def shown() -> list[str]:
            return page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => e.dataset.id)")

        page.select_option("[data-testid=event-rule]", "long bout")
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 1", timeout=10_000)
        assert shown() == [bout[0]["id"]]
        page.select_option("[data-testid=event-rule]", "wrestling")
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 3", timeout=10_000)
        assert sorted(shown()) == sorted([live_id, gone_id, shown_id])
        page.select_option("[data-testid=event-rule]", "")
        page.select_option("[data-testid=event-camera]", "gate")
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 4", timeout=10_000)
        yesterday = (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%d")
        page.fill("[data-testid=day]", yesterday)
        page.wait_for_selector("[data-testid=events-empty]", state="visible", timeout=10_000)
        assert page.locator("[data-testid=event]").count() == 0
        assert page.inner_text("[data-testid=events-empty]") == "No events match these choices on this day."
        assert page.get_attribute("[data-testid=view-day]", "aria-pressed") == "true"  # another day: the day view
        page.select_option("[data-testid=event-camera]", "")
        page.fill("[data-testid=day]", datetime.now().strftime("%Y-%m-%d"))
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 4", timeout=10_000)

        # the day view: the day's segments, its hours, and minutes per activity
        minutes = "[data-testid=minutes] li[data-label]"
        page.wait_for_function(f"document.querySelectorAll('{minutes}').length >= {len(seeded)}", timeout=20_000)
        got = dict(page.eval_on_selector_all(minutes, "els => els.map(e => [e.dataset.label, Number(e.dataset.minutes)])"))
        assert set(got) == set(seeded), got
        for label in ("shaking hands", "clapping", "uncertain"):
            if label in seeded:
                assert got[label] == pytest.approx(seeded[label], abs=0.01), (label, got)
        assert got["arm wrestling"] >= seeded["arm wrestling"], got  # and the live labels' open segment
        text = page.inner_text("[data-testid=minutes]")
        assert "Minutes per activity, today" in text and "shaking hands" in text, text
        ticks = page.eval_on_selector_all("[data-testid=axis] span", "els => els.map(e => e.textContent)")
        assert len(ticks) >= 4 and all(":00" in t or t == "now" for t in ticks), ticks
        legend = page.eval_on_selector_all("[data-testid=legend] li[data-label]", "els => els.map(e => e.dataset.label)")
        assert set(legend) == set(seeded), legend
        # two minutes are 2 px of a day: the click is dispatched to the piece itself
        page.locator("[data-testid=timeline] span[data-label='shaking hands']").last.dispatch_event("click")
        info = page.locator("[data-testid=segment-info]")
        info.wait_for(state="visible", timeout=5_000)
        assert "shaking hands" in info.inner_text() and "2 min 0 s" in info.inner_text()

        # an event without a clip says so in the player
        page.click(item(gone_id))
        page.wait_for_function("document.querySelector('.player .ptext')?.textContent.includes('no video clip')", timeout=5_000)
        assert page.get_attribute("[data-testid=player]", "src") is None
        page.click(item(live_id))
        page.wait_for_function("document.querySelector('[data-testid=player]').readyState >= 2", timeout=15_000)

        # the picture of it all: the README's (with STREAMREC_DASHBOARD_PNG=1)
        page.evaluate("document.activeElement?.blur()")
        page.evaluate("v => { const p = document.querySelector('[data-testid=player]'); p.pause(); p.currentTime = v; }", 2.0)
        page.wait_for_function("(p => !p.seeking && p.readyState >= 2)(document.querySelector('[data-testid=player]'))",
                               timeout=15_000)
        page.screenshot(path=str(artifacts / "browser-events.png"))
        if os.environ.get("STREAMREC_DASHBOARD_PNG"):
            page.screenshot(path=str(DASHBOARD_PNG))
        assert errors == [] and refused == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


PAGE = ROOT / "streamrec" / "serve" / "web" / "index.html"


@pytest.mark.slow
def test_the_panel_follows_the_websocket_by_id(page, demo_clip):
    """The page alone, its server played by playwright: an event pushed open, then closed, is one
    item that changes (its duration, then its thumbnail); pushes of another day or of a camera the
    filter leaves out stay off the list."""
    base = "http://streamrec.test"
    with av.open(str(demo_clip)) as c:
        jpeg = cv2.imencode(".jpg", next(c.decode(video=0)).to_ndarray(format="bgr24"))[1].tobytes()
    listing: list[dict] = []  # what GET /api/events answers
    asked: list[str] = []
    page.route(re.compile(r"^http://streamrec\.test/(\?.*)?$"),
               lambda r: r.fulfill(status=200, content_type="text/html", body=PAGE.read_text()))
    page.route(f"{base}/healthz*", lambda r: r.fulfill(status=200, json={"status": "ok"}))
    page.route(f"{base}/api/schema*", lambda r: r.fulfill(status=200, json=message_schema()))
    page.route(f"{base}/api/history*", lambda r: r.fulfill(status=200, json={"segments": [], "truncated": False}))

    def events(route) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, json={"events": listing})

    page.route(f"{base}/api/events?*", events)
    page.route(f"{base}/api/events/*/thumb.jpg*", lambda r: r.fulfill(status=200, content_type="image/jpeg", body=jpeg))
    sockets = []
    page.route_web_socket("ws://streamrec.test/ws*", lambda ws: sockets.append(ws))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/?camera=court-1")  # one camera: its events alone
    page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=10_000)
    page.wait_for_selector("[data-testid=events-empty]", state="visible", timeout=10_000)
    assert page.input_value("[data-testid=event-camera]") == "court-1"
    assert "camera=court-1" in asked[-1]

    now = time.time()
    ev = {"id": "e1", "rule": "lifting", "camera": "court-1", "label": "deadlifting", "start_ts": now - 12, "end_ts": None,
          "peak_score": 0.91, "mean_score": 0.8, "clip": "/api/events/e1/clip.mp4", "thumbnail": "/api/events/e1/thumb.jpg",
          "state": "open"}
    sockets[0].send(json.dumps({"type": "event", **ev}))
    page.wait_for_selector("[data-testid=event][data-id=e1][data-state=open]", timeout=5_000)
    assert "open" in page.inner_text("[data-testid=event]") and page.inner_text(".event .thumb.ph") == "recording…"
    closed = {**ev, "end_ts": now, "state": "closed"}
    listing[:] = [{**closed, "has_clip": True, "clip_bytes": 1000}]
    sockets[0].send(json.dumps({"type": "event", **closed}))
    page.wait_for_selector("[data-testid=event][data-id=e1][data-state=closed]", timeout=5_000)
    assert page.locator("[data-testid=event]").count() == 1
    assert "lasted 12 s" in page.inner_text("[data-testid=event]")
    page.wait_for_function("document.querySelector('.event img.thumb')?.naturalWidth > 0", timeout=5_000)
    assert page.get_attribute(".event img.thumb", "src") == f"{base}/api/events/e1/thumb.jpg"
    # other days, other cameras: not on the list; the other camera joins the filter's choices
    sockets[0].send(json.dumps({"type": "event", **ev, "id": "old", "start_ts": now - 3 * 86400, "end_ts": now - 3 * 86400 + 5,
                                "state": "closed"}))
    sockets[0].send(json.dumps({"type": "event", **ev, "id": "e2", "camera": "court-2"}))
    page.wait_for_function("[...document.querySelectorAll('[data-testid=event-camera] option')].some(o => o.value === 'court-2')",
                           timeout=5_000)
    assert page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => e.dataset.id)") == ["e1"]
    assert errors == []
