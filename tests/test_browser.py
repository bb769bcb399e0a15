"""The page in real headless Chromium (Debian's chromium driven by playwright)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from browser import MARKS, chromium_page
from conftest import ROOT, free_port, streamrec_cmd, wait_http
from streamrec.live.history import HistoryStore, Segment

pytestmark = MARKS


def serve(clip, port: int, db) -> subprocess.Popen:
    """``streamrec serve`` of ``clip`` with random weights, its history in ``db`` (the test's own
    file, never the user's default database, which other runs may be writing)."""
    proc = subprocess.Popen(
        streamrec_cmd("serve", "--source", str(clip), "--loop", "--weights", "none", "--model", "tiny3d",
                      "--port", str(port), "--db", str(db)),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return proc


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=15)


@pytest.fixture
def page():
    with chromium_page(1000, 760) as page:
        yield page


SAMPLE_VIDEO = """ms => new Promise(done => {
  const img = document.querySelector('[data-testid=video]');
  const widths = [];
  let changes = 0;
  const seen = new MutationObserver(() => { changes += 1; widths.push(img.naturalWidth); });
  seen.observe(img, { attributes: true, attributeFilter: ['src'] });
  const tick = setInterval(() => widths.push(img.naturalWidth), 5);
  setTimeout(() => { seen.disconnect(); clearInterval(tick); done([widths, changes]); }, ms);
})"""


def cameras_heard(page) -> set[str]:
    """The cameras named in the JSON messages the page's websockets receive from now on (filled
    while playwright waits on the page)."""
    heard: set[str] = set()

    def on_frame(payload) -> None:
        if isinstance(payload, str):
            camera = json.loads(payload).get("camera")
            if camera:
                heard.add(camera)

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    return heard


def wait_until_heard(page, heard: set[str], cameras: set[str], timeout_s: float = 60.0) -> None:
    """The positive event a check that something did *not* happen waits for: messages of every camera came in."""
    deadline = time.monotonic() + timeout_s
    while not cameras <= heard:
        assert time.monotonic() < deadline, f"no message of {sorted(cameras - heard)} within {timeout_s} s"
        page.wait_for_timeout(50)  # lets playwright deliver the websocket events


def label_seq(page) -> int:
    return int(page.get_attribute("[data-testid=label]", "data-seq") or 0)


@pytest.mark.slow
def test_page_shows_predictions_video_and_reconnects(demo_clip, page, artifacts, tmp_path):
    port = free_port()
    proc = serve(demo_clip, port, tmp_path / "h.db")
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq >= 1", timeout=60_000)
        assert page.inner_text("[data-testid=label]") != "loading model…"
        assert page.locator(".top li").count() == 5
        banner = page.locator("[data-testid=banner]")
        assert banner.is_visible() and "meaningless" in banner.inner_text()
        assert 0 <= float(page.inner_text("[data-testid=age]")) < 30  # the shown label's age, in seconds
        assert page.inner_text("[data-testid=source-error]") == ""
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz"))
        page.wait_for_function("document.querySelector('.model')?.textContent !== ''", timeout=20_000)
        assert page.inner_text(".model") == f"{health['model']} (cpu, {health['backend']})"

        # the video image updates
        page.wait_for_function("Number(document.querySelector('[data-testid=video]')?.dataset.frames || 0) >= 2", timeout=20_000)
        # every frame swapped in is already decoded: sampled right after each change of src and
        # every 5 ms for 3 s, the image is never blank (naturalWidth 0) or another size
        widths, changes = page.evaluate(SAMPLE_VIDEO, 3000)
        assert changes >= 2
        assert set(widths) == {340}  # the 340x256 clip, under the 480 px preview width
        page.screenshot(path=str(artifacts / "browser-live.png"))

        # the server stops and starts again: the page reconnects by itself
        assert stop(proc) == 0
        page.wait_for_function("document.getElementById('conn').textContent.includes('reconnecting')", timeout=20_000)
        # no new label comes: its age keeps growing on the page, and is marked late
        page.wait_for_function("document.querySelector('[data-testid=age]').classList.contains('late')", timeout=20_000)
        assert float(page.inner_text("[data-testid=age]")) >= 2.0  # shown to 0.1 s: 2.04 s reads 2.0
        seq_before = label_seq(page)
        proc = serve(demo_clip, port, tmp_path / "h.db")
        page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=60_000)
        page.wait_for_function(f"document.querySelector('[data-testid=label]')?.dataset.seq != '{seq_before}'", timeout=60_000)
        page.screenshot(path=str(artifacts / "browser-reconnected.png"))
    finally:
        if proc.poll() is None:
            stop(proc)


@pytest.mark.slow
def test_a_restarted_server_without_a_camera_loses_its_tile(demo_clip, page, tmp_path):
    """The gym's config loses a camera and the server restarts: the open page drops that tile
    (it never got the removal notice) and keeps the others."""
    def config(names):
        lines = ['model = "tiny3d"', 'weights = "none"']
        for name in names:
            lines += ["[[cameras]]", f'name = "{name}"', f'source = "{demo_clip}"', "loop = true"]
        path = tmp_path / f"{len(names)}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(cfg):
        proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--port", str(port), "--db", str(tmp_path / "h.db")),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc, timeout=120)
        return proc

    names = "els => els.map(e => e.dataset.camera).sort()"
    port = free_port()
    proc = start(config(["court-1", "pool"]))
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.querySelectorAll('[data-testid=camera]').length === 2", timeout=60_000)
        assert stop(proc) == 0
        page.wait_for_function("document.getElementById('conn').textContent.includes('reconnecting')", timeout=20_000)
        proc = start(config(["court-1"]))
        page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('[data-testid=camera]').length === 1", timeout=10_000)
        assert page.eval_on_selector_all("[data-testid=camera]", names) == ["court-1"]
        assert page.inner_text("#count") == "1 camera"
    finally:
        if proc.poll() is None:
            stop(proc)


@pytest.mark.slow
def test_overlay_mode_shows_only_the_label_and_the_warning(demo_clip, page, artifacts, tmp_path):
    """An OBS overlay of a model with random weights: the label, and the warning that it means nothing."""
    port = free_port()
    proc = serve(demo_clip, port, tmp_path / "h.db")  # --weights none
    try:
        page.goto(f"http://127.0.0.1:{port}/?overlay=1")
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq >= 1", timeout=60_000)
        assert page.is_visible("[data-testid=label]")
        page.wait_for_selector("[data-testid=banner]", state="visible", timeout=10_000)
        assert "meaningless" in page.inner_text("[data-testid=banner]")
        assert not page.is_visible("[data-testid=video]") and not page.is_visible(".health")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
        png = page.screenshot(path=str(artifacts / "browser-overlay.png"), omit_background=True)
        rgba = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)  # (H, W, 4) BGRA
        assert rgba.shape == (760, 1000, 4)
        alpha = rgba[..., 3]
        boxes = [page.locator(sel).bounding_box() for sel in ("[data-testid=label]", "[data-testid=banner]")]
        assert alpha[-1, -1] == 0 and alpha[0, 0] == 0  # the root element paints no background either
        opaque = np.argwhere(alpha > 0)  # (row, col) of every painted pixel: the label, its shadow and the warning
        assert len(opaque) > 0
        inside = np.zeros(len(opaque), bool)
        for box in boxes:
            inside |= ((box["y"] - 8 <= opaque[:, 0]) & (opaque[:, 0] <= box["y"] + box["height"] + 8)
                       & (box["x"] - 8 <= opaque[:, 1]) & (opaque[:, 1] <= box["x"] + box["width"] + 8))
        assert inside.all(), f"{(~inside).sum()} painted pixels outside the label and the warning"
    finally:
        stop(proc)


# the last 10 minutes of a camera, as the history database holds them (seconds before now)
PAST = [("arm wrestling", -560, -430, 0.72, 0.90), ("uncertain", -430, -400, 0.31, 0.38),
        ("shaking hands", -400, -310, 0.58, 0.74), ("arm wrestling", -310, -170, 0.81, 0.93),
        ("clapping", -170, -95, 0.64, 0.77), ("stretching arm", -95, -40, 0.55, 0.69)]
CLOCK = re.compile(r"\d{1,2}:\d{2}")


@pytest.mark.slow
def test_a_coach_reads_the_dashboard(demo_clip, page, artifacts, tmp_path):
    """Plain words first, the engineering figures behind "details"; the 10-minute strip with its
    legend, time axis and a click for a segment's details; a favicon; /healthz's degraded state in a
    banner. Its screenshot goes to artifacts/ (the README's picture, docs/dashboard.png, comes
    from tests/test_browser_events.py with STREAMREC_DASHBOARD_PNG=1)."""
    db = tmp_path / "history.db"
    store = HistoryStore(str(db))
    now = time.time()
    for label, start, end, mean, peak in PAST:
        store.add(Segment("default", label, now + start, now + end, mean, peak, int(end - start) * 2))
    store.flush()
    store.close()
    port = free_port()
    proc = serve(demo_clip, port, db)
    try:
        url = f"http://127.0.0.1:{port}"
        errors: list[str] = []  # the page's uncaught exceptions and console errors (a 404 favicon among them)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(url + "/")
        # no label yet: the page says the model is loading (the tile's first words), never an empty label
        assert page.evaluate("document.getElementById('tile-template').content"
                             ".querySelector('[data-testid=label]').textContent") == "loading model…"
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq >= 1", timeout=60_000)
        page.wait_for_function("Number(document.querySelector('[data-testid=video]')?.dataset.frames || 0) >= 1", timeout=20_000)
        page.wait_for_function("document.querySelector('.every')?.textContent !== '–'", timeout=20_000)
        legend = "[data-testid=legend] li[data-label]"
        page.wait_for_function(f"document.querySelectorAll('{legend}').length >= 4", timeout=20_000)

        # plain words, each with a one-sentence tooltip; the engineering figures hidden
        stats = page.inner_text(".stats")
        assert re.search(r"Sees [\d.]+ frames/s", stats) and re.search(r"Answers every [\d.]+ s", stats), stats
        assert re.search(r"Answer is [\d.]+ s old", stats), stats
        titles = page.eval_on_selector_all(".stats > span, .details > span", "els => els.map(e => e.title)")
        assert len(titles) >= 10 and all(t.endswith(".") and len(t) > 20 for t in titles), titles
        assert page.is_hidden("[data-testid=details]")

        # the legend: every label on the strip, each its own colour (the uncertain stretches grey)
        # labels and colours read at once: the legend is drawn anew with the strip, and a swatch read
        # after that is no longer in the page (no computed colour)
        shown = page.eval_on_selector_all(legend, "els => els.map(e => [e.dataset.label, "
                                                  "getComputedStyle(e.querySelector('.swatch')).backgroundColor])")
        labels, swatches = [label for label, _ in shown], [colour for _, colour in shown]
        assert {"arm wrestling", "shaking hands", "clapping", "stretching arm", "uncertain"} <= set(labels), labels
        assert len(set(swatches)) == len(labels), swatches
        strip = page.eval_on_selector_all("[data-testid=timeline] span",
                                          "els => els.map(e => [e.dataset.label, getComputedStyle(e).backgroundColor])")
        assert dict(strip)["shaking hands"] == swatches[labels.index("shaking hands")]
        # the time axis: clock times under the strip, "now" at its right end
        ticks = page.eval_on_selector_all("[data-testid=axis] span", "els => els.map(e => e.textContent)")
        assert ticks[-1] == "now" and len(ticks) >= 4 and all(CLOCK.search(t) for t in ticks[:-1]), ticks

        # a click on a segment: its label, start and end times and score
        page.click("[data-testid=timeline] span[data-label='shaking hands']")
        info = page.locator("[data-testid=segment-info]")
        info.wait_for(state="visible", timeout=5_000)
        text = info.inner_text()
        assert "shaking hands" in text and len(CLOCK.findall(text)) == 2 and "1 min 30 s" in text, text
        assert "score 58% on average, 74% at best" in text, text
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq >= 3", timeout=20_000)
        page.screenshot(path=str(artifacts / "dashboard-coach.png"))

        # "details": the engineering figures, each explained
        page.click("[data-testid=details-toggle]")
        details = page.locator("[data-testid=details]")
        assert details.is_visible()
        assert re.search(r"dropped \d+", details.inner_text()) and re.search(r"latency \d+ ms", details.inner_text())
        assert "before the model looked at them" in page.get_attribute(".details .drops >> xpath=..", "title")
        page.click("[data-testid=details-toggle]")
        assert page.is_hidden("[data-testid=details]")

        # the favicon: the page's own, and /favicon.ico for a browser that asks for it
        with urllib.request.urlopen(url + "/favicon.ico", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
            icon = r.read()
        href = page.get_attribute("link[rel=icon]", "href")
        assert href.startswith("data:image/svg+xml,") and unquote(href.split(",", 1)[1]).encode() == icon

        # a degraded server: the page shows why, in a banner
        reason = "camera default: no new label for 30 s while frames arrive"
        health = json.loads(wait_http(url + "/healthz"))
        page.route("**/healthz*", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps({**health, "status": "degraded", "reasons": [reason]})))
        page.wait_for_selector("[data-testid=degraded]", state="visible", timeout=15_000)
        assert reason in page.inner_text("[data-testid=degraded]")
        assert errors == []
    finally:
        stop(proc)


@pytest.mark.slow
def test_dashboard_with_16_cameras(demo_clip, page, artifacts, tmp_path):
    cameras = [f"cam-{i:02d}" for i in range(16)]
    lines = ['model = "tiny3d"', 'weights = "none"']
    for name in cameras:
        lines += ["[[cameras]]", f'name = "{name}"', f'source = "{demo_clip}"', "loop = true"]
    cfg = tmp_path / "sixteen.toml"
    cfg.write_text("\n".join(lines) + "\n")
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--port", str(port), "--db", str(tmp_path / "h.db")),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc, timeout=120)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.querySelectorAll('[data-testid=camera]').length === 16", timeout=60_000)
        page.wait_for_function(
            "[...document.querySelectorAll('[data-testid=label]')].every(l => Number(l.dataset.seq) >= 1)", timeout=120_000)
        page.wait_for_function(
            "[...document.querySelectorAll('[data-testid=video]')].filter(i => Number(i.dataset.frames) >= 1).length === 16",
            timeout=60_000)
        page.screenshot(path=str(artifacts / "dashboard-16.png"))
        tile = page.locator("[data-camera=cam-05]")
        tile.click()
        assert "big" in tile.get_attribute("class")
        assert tile.locator(".top li").count() == 5  # the large view shows the top 5
        box = tile.bounding_box()
        assert box["width"] > 800  # it fills the 1000 px viewport
        page.screenshot(path=str(artifacts / "dashboard-16-large.png"))
        tile.click()
        assert "big" not in tile.get_attribute("class")
        heard = cameras_heard(page)
        page.goto(f"http://127.0.0.1:{port}/?camera=cam-03&overlay=1")  # one camera's overlay, for OBS
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq >= 1", timeout=60_000)
        wait_until_heard(page, heard, set(cameras))  # every camera's status reached the page: it kept one tile
        assert page.eval_on_selector_all("[data-testid=camera]", "els => els.map(e => e.dataset.camera)") == ["cam-03"]
        heard.clear()
        page.goto(f"http://127.0.0.1:{port}/?camera=cam-99")
        wait_until_heard(page, heard, set(cameras))
        assert page.locator("[data-testid=camera]").count() == 0
        assert page.inner_text("#count") == 'no camera named "cam-99" (yet)'
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_phone_sees_the_whole_label(demo_clip, page, artifacts, tmp_path):
    """A coach on the sideline opens the page on a phone: the label wraps, never cut short."""
    port = free_port()
    proc = serve(demo_clip, port, tmp_path / "h.db")
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.querySelector('[data-testid=label]')?.dataset.seq >= 1", timeout=60_000)
        label = page.locator("[data-testid=label]")
        # the longest label the page can show, measured in the same task that sets it (labels keep coming)
        fits, lines = label.evaluate("""el => {
            el.textContent = 'uncertain (best guess: passing American football (not in game))';
            const size = parseFloat(getComputedStyle(el).fontSize);
            return [el.scrollWidth <= el.clientWidth, Math.round(el.getBoundingClientRect().height / (1.4 * size))];
        }""")
        page.screenshot(path=str(artifacts / "browser-phone.png"))
        assert fits and lines >= 2
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_source_that_fails_shows_why(tmp_path, demo_clip, page):
    data = bytearray(demo_clip.read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.integers(len(data) // 4, len(data), 3000):  # every video packet damaged, the header whole
        data[i] = int(rng.integers(256))
    clip = tmp_path / "damaged.mp4"
    clip.write_bytes(bytes(data))
    port = free_port()
    proc = serve(clip, port, tmp_path / "h.db")
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.querySelector('.state')?.textContent === 'ended'", timeout=30_000)
        assert page.inner_text("[data-testid=source-error]") == f"{clip}: no decodable video frames"
    finally:
        stop(proc)
