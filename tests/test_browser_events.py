"""The page's Events panel and day view in real headless Chromium (Debian's chromium driven by
playwright): a deterministic model and two rules open events within seconds; the page shows them
as the websocket pushes them, plays and seeks a clip, filters the list, and sums the day's
minutes per activity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from conftest import ROOT, free_port, streamrec_cmd, wait_http, wait_until, write_frames
from streamrec.live.history import HistoryStore, Segment
from streamrec.models.registry import build_model, make_checkpoint, model_spec

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed; .ci/run installs it"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
DASHBOARD_PNG = ROOT / "docs" / "dashboard.png"


def always_b(path) -> str:
    """A tiny3d checkpoint whose head always answers "b" (score about 1): a deterministic model."""
    module = build_model("tiny3d", num_classes=3)
    with torch.no_grad():
        module.fc.weight.zero_()
        module.fc.bias.copy_(torch.tensor([0.0, 12.0, 0.0]))
    torch.save(make_checkpoint(module, model="tiny3d", classes=["a", "b", "c"], spec=model_spec("tiny3d")), path)
    return str(path)


def h264_video(path, *, seconds: float = 4, fps: int = 30, size=(320, 240)):
    """A synthetic H.264 .mp4 (a square moving over a gradient) with a keyframe every half second,
    so that a clip can start close to its event."""
    w, h = size
    base = np.tile(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, 1, 3))

    def frames():
        for i in range(int(seconds * fps)):
            img = base.copy()
            x = (i * 4) % (w - 40)
            img[h // 3: h // 3 + 40, x: x + 40] = 255
            yield img

    return write_frames(path, frames(), fps, codec="libx264", gop=fps // 2)


# "bees" opens about a second after the first label; "wasps" (the same label) some seconds later,
# once the page is open: it can only reach the page through the websocket
CONFIG = """
source = "{video}"
loop = true
camera = "gate"
db = "{db}"
[[rules]]
name = "bees"
labels = ["b"]
min_seconds = 1
end_seconds = 1
[[rules]]
name = "wasps"
labels = ["b"]
min_seconds = 8
end_seconds = 1
[recording]
dir = "{clips}"
pre_seconds = 1
post_seconds = 1
max_seconds = 4
"""


@pytest.fixture
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_events_reach_the_page_play_filter_and_the_day_adds_up(tmp_path, page, artifacts):
    db = tmp_path / "h.db"
    # earlier today: 2 minutes of "a", then 3 of "b" (cut at midnight if the test runs just after it)
    now = time.time()
    midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    past = [("a", now - 330, now - 210), ("b", now - 210, now - 30)]
    store = HistoryStore(str(db))
    for label, start, end in past:
        store.add(Segment("gate", label, start, end, 0.9, 0.95, int(end - start) * 2))
    store.flush()
    store.close()
    seeded = {label: max(0.0, end - max(start, midnight)) / 60 for label, start, end in past}

    cfg = tmp_path / "gate.toml"
    cfg.write_text(CONFIG.format(video=h264_video(tmp_path / "v.mp4"), db=db, clips=tmp_path / "clips"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--weights", always_b(tmp_path / "b.pt"),
                                          "--port", str(port), "--device", "cpu"),
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
        clip_responses: list[tuple[int, str | None]] = []
        page.on("response", lambda r: "/clip.mp4" in r.url and clip_responses.append((r.status, r.request.headers.get("range"))))

        page.goto(base + "/")
        page.evaluate("window.sameDocument = true")  # gone if the page reloads
        # the first event, with its camera, rule, label, start time and "open"
        page.wait_for_selector("[data-testid=event][data-state=open]", timeout=90_000)
        bees = page.locator("[data-testid=event]").first
        text = bees.inner_text()
        assert "gate" in text and "bees" in text and "open" in text, text
        assert page.is_hidden("[data-testid=events-empty]")
        assert bees.locator(".thumb.ph").inner_text() == "recording…"  # no thumbnail while open

        # the second one comes later, pushed by the websocket: no reload, no new request for the list
        requests_before = len(listed)
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 2", timeout=60_000)
        assert page.evaluate("window.sameDocument") is True
        assert len(listed) == requests_before, listed
        wasps = [e for e in pushed if e["rule"] == "wasps"]
        assert wasps and wasps[0]["state"] == "open"
        rules = dict(page.eval_on_selector_all("[data-testid=event]", "els => els.map(e => [e.dataset.rule, e.dataset.id])"))
        assert rules["wasps"] == wasps[0]["id"]
        bees_id = rules["bees"]

        # a click plays the clip; seeking asks for a byte range, answered 206
        def clip_bytes() -> int:
            return get_json(f"{base}/api/events/{bees_id}").get("clip_bytes") or 0

        wait_until(lambda: clip_bytes() > 0, "the clip of the first event", timeout=60)  # max_seconds: done while open
        page.click(f"[data-testid=event][data-id='{bees_id}']")
        page.wait_for_selector("[data-testid=player-box]", state="visible", timeout=5_000)
        src = page.get_attribute("[data-testid=player]", "src")
        assert src == f"{base}/api/events/{bees_id}/clip.mp4"
        page.wait_for_function("document.querySelector('[data-testid=player]').currentTime > 0.5", timeout=30_000)
        duration = page.evaluate("document.querySelector('[data-testid=player]').duration")
        assert 3 <= duration <= 7, duration  # max_seconds (4) and the keyframe before pre_seconds
        page.evaluate("v => { const p = document.querySelector('[data-testid=player]'); p.pause(); p.currentTime = v; }",
                      duration - 1)
        page.wait_for_function(f"(p => !p.seeking && Math.abs(p.currentTime - {duration - 1}) < 0.2)"
                               "(document.querySelector('[data-testid=player]'))", timeout=15_000)
        assert any(status == 206 for status, _ in clip_responses), clip_responses
        assert page.locator(f"[data-testid=event][data-id='{bees_id}']").get_attribute("class").split().count("playing") == 1

        # the filters narrow the list
        page.select_option("[data-testid=event-rule]", "wasps")
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 1", timeout=10_000)
        assert page.get_attribute("[data-testid=event]", "data-id") == wasps[0]["id"]
        page.select_option("[data-testid=event-rule]", "bees")
        page.wait_for_function(f"[...document.querySelectorAll('[data-testid=event]')].map(e => e.dataset.id).join() === '{bees_id}'",
                               timeout=10_000)
        page.select_option("[data-testid=event-rule]", "")
        page.select_option("[data-testid=event-camera]", "gate")
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 2", timeout=10_000)
        yesterday = (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%d")
        page.fill("[data-testid=day]", yesterday)
        page.wait_for_selector("[data-testid=events-empty]", state="visible", timeout=10_000)
        assert page.locator("[data-testid=event]").count() == 0
        assert "No events" in page.inner_text("[data-testid=events-empty]")
        assert page.get_attribute("[data-testid=view-day]", "aria-pressed") == "true"  # another day: the day view
        today = datetime.now().strftime("%Y-%m-%d")
        page.fill("[data-testid=day]", today)
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 2", timeout=10_000)

        # the day view: the day's segments, the hours, and minutes per activity
        page.click("[data-testid=view-day]")
        minutes = "[data-testid=minutes] li[data-label]"
        page.wait_for_function(f"document.querySelector(\"{minutes}[data-label=a]\")", timeout=20_000)
        shown = dict(page.eval_on_selector_all(minutes, "els => els.map(e => [e.dataset.label, Number(e.dataset.minutes)])"))
        assert shown["a"] == pytest.approx(seeded["a"], abs=0.01), shown
        assert shown["b"] >= seeded["b"], shown  # and the open segment of the live labels
        assert set(shown) <= {"a", "b", "uncertain"}, shown
        text = page.inner_text("[data-testid=minutes]")
        assert "Minutes per activity, today" in text and "2.0 min" in text, text
        ticks = page.eval_on_selector_all("[data-testid=axis] span", "els => els.map(e => e.textContent)")
        assert len(ticks) >= 4 and all(":00" in t or t == "now" for t in ticks), ticks
        legend = page.eval_on_selector_all("[data-testid=legend] li[data-label]", "els => els.map(e => e.dataset.label)")
        assert {"a", "b"} <= set(legend), legend
        # two minutes are 2 px of a day: the click is dispatched to the piece itself
        page.locator("[data-testid=timeline] span[data-label=a]").dispatch_event("click")
        info = page.locator("[data-testid=segment-info]")
        info.wait_for(state="visible", timeout=5_000)
        assert "2 min 0 s" in info.inner_text()

        # the picture of it all: the README's
        page.select_option("[data-testid=event-camera]", "")
        page.wait_for_function("document.querySelectorAll('[data-testid=event]').length === 2", timeout=10_000)
        page.evaluate("v => { const p = document.querySelector('[data-testid=player]'); p.pause(); p.currentTime = v; }", 1.0)
        page.wait_for_function("(p => !p.seeking && p.readyState >= 2)(document.querySelector('[data-testid=player]'))",
                               timeout=15_000)
        page.screenshot(path=str(artifacts / "browser-events.png"))
        if os.environ.get("STREAMREC_DASHBOARD_PNG"):
            page.screenshot(path=str(DASHBOARD_PNG))
        assert errors == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
