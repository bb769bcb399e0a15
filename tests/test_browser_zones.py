"""Zones on the page in real headless Chromium: each zone outlined on the live image with its own
label, and the zone editor (drag to draw and move, rename, Escape, an error line, Save) writing
through the zones API of a real ``streamrec serve --config``."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from browser import MARKS, chromium_page
from conftest import ROOT, free_port, json_request, streamrec_cmd, wait_http

pytestmark = MARKS
TOKEN = "z0nes"

CONFIG = """model = "tiny3d"
weights = "none"
device = "cpu"

[[cameras]]
name = "gym"
source = "{clip}"
loop = true

[[cameras.zones]]
name = "rack"
x = 0
y = 0
w = 0.5
h = 0.5

[[cameras.zones]]
name = "mat"
polygon = [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]]
"""


def gym_zones(port: int) -> dict:
    status, body = json_request("GET", f"http://127.0.0.1:{port}/api/cameras", TOKEN)
    assert status == 200
    return body["zones"]["gym"]


FITS = """() => {
  const b = document.querySelector('[data-testid=zones]').getBoundingClientRect();
  const r = document.querySelector('[data-testid=zone-outline][data-zone=rack]').getBoundingClientRect();
  return Math.abs(b.width / b.height - 340 / 256) < 0.01 && Math.abs(r.x - b.x) <= 2 && Math.abs(r.width - b.width / 2) <= 2;
}"""


SAME_WIDTH_WHATEVER_THE_LABEL = """() => {
  const label = document.querySelector('[data-testid=label]'), img = document.querySelector('.tile img'), was = label.textContent;
  const widths = [];
  for (const text of ['a', 'a much longer label than any class name would give '.repeat(4)]) {
    label.textContent = text; widths.push(Math.round(img.getBoundingClientRect().width));
  }
  label.textContent = was;
  return widths;
}"""


def drag(page, box: dict, a: tuple[float, float], b: tuple[float, float]) -> None:
    """A mouse drag on the picture from fraction ``a`` to fraction ``b`` of the frame (where the picture
    is now: the tile may have grown since ``box`` was read, as its timeline filled)."""
    box = page.locator("[data-testid=zones]").bounding_box() or box
    at = lambda p: (box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"])  # noqa: E731
    page.mouse.move(*at(a))
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(*at((a[0] + (b[0] - a[0]) * k / 5, a[1] + (b[1] - a[1]) * k / 5)))
    page.mouse.up()


@pytest.mark.slow
def test_zones_are_drawn_with_labels_and_edited_with_the_mouse(demo_clip, tmp_path, artifacts):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(CONFIG.format(clip=demo_clip))
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--port", str(port), "--db",
                                          str(tmp_path / "h.db"), "--token", TOKEN),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz?token={TOKEN}", proc=proc)
        with chromium_page(1000, 900) as page:
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            labelled = "z => document.querySelector(`[data-testid=zone-label][data-zone=${z}]`)?.dataset.label"
            for zone in ("rack", "mat"):
                page.wait_for_function(labelled, arg=zone, timeout=60_000)
            assert page.get_attribute("[data-testid=zone-outline][data-zone=rack]", "width") == "0.5"
            assert page.get_attribute("[data-testid=zone-outline][data-zone=mat]", "points") == "0.5,0.5 0.8,0.5 0.65,0.9"
            rack_label = page.inner_text("[data-testid=zone-label][data-zone=rack]")
            assert rack_label.startswith("rack: ") and rack_label.endswith("%")
            # the outlines lie on the picture itself: the 340x256 clip inside the 16:9 image box (once the
            # page's layout has settled: the tile grows as its timeline and events arrive)
            page.wait_for_function(FITS, timeout=10_000)
            box = page.locator("[data-testid=zones]").bounding_box()
            assert abs(box["width"] / box["height"] - 340 / 256) < 0.01
            rack = page.locator("[data-testid=zone-outline][data-zone=rack]").bounding_box()
            assert abs(rack["x"] - box["x"]) <= 2 and abs(rack["width"] - box["width"] / 2) <= 2
            assert page.locator("[data-testid=label]").inner_text() != "zones only: the whole frame is not labelled"
            # the picture keeps its size whatever the text beside it says (a drag spans several label updates)
            assert page.evaluate(SAME_WIDTH_WHATEVER_THE_LABEL) == [944, 944]
            page.screenshot(path=str(artifacts / "browser-zones.png"))

            # Escape cancels a drawn zone
            page.click("[data-testid=zones-edit]")
            assert page.locator("[data-testid=edit-zone]").count() == 2
            drag(page, box, (0.6, 0.1), (0.9, 0.4))
            assert page.locator("[data-testid=edit-zone]").count() == 3
            page.keyboard.press("Escape")
            assert page.locator("[data-testid=zone-editor]").is_hidden()
            assert page.locator("[data-testid=edit-zone]").count() == 0
            assert [z["name"] for z in gym_zones(port)["zones"]] == ["rack", "mat"]

            # draw a zone, move the rack; a repeated name is the API's one-line error
            page.click("[data-testid=zones-edit]")
            drag(page, box, (0.6, 0.1), (0.9, 0.4))
            drag(page, box, (0.25, 0.25), (0.35, 0.35))
            names = page.locator("[data-testid=zone-name]")
            assert [names.nth(i).input_value() for i in range(names.count())] == ["rack", "mat", "zone1"]
            names.nth(2).fill("rack")
            page.click("[data-testid=zones-save]")
            error = page.locator("[data-testid=zones-error]")
            page.wait_for_function("document.querySelector('[data-testid=zones-error]')?.textContent !== 'saving…'")
            assert error.inner_text() == "camera 'gym': zones: expected unique names, got 'rack' more than once"
            names.nth(2).fill("bench")
            page.click("[data-testid=zones-save]")
            page.wait_for_selector("[data-testid=zone-editor]", state="hidden")
            assert page.inner_text("[data-testid=zones-note]") == f"Zones saved to {cfg}."

            got = gym_zones(port)
            assert got["whole_frame"] is True and [z["name"] for z in got["zones"]] == ["rack", "mat", "bench"]
            rack, mat, bench = got["zones"]
            assert abs(rack["x"] - 0.1) < 0.01 and abs(rack["y"] - 0.1) < 0.01 and (rack["w"], rack["h"]) == (0.5, 0.5)
            assert mat["polygon"] == [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]]
            for key, want in (("x", 0.6), ("y", 0.1), ("w", 0.3), ("h", 0.3)):
                assert abs(bench[key] - want) < 0.01, bench
            assert 'name = "bench"' in cfg.read_text()
            page.wait_for_function(labelled, arg="bench", timeout=60_000)  # the new zone's labels reach the page
            assert page.locator("[data-testid=zone-outline]").count() == 3
            page.screenshot(path=str(artifacts / "browser-zones-edited.png"))

            # the zones alone: the whole frame's label gives way to a note
            page.click("[data-testid=zones-edit]")
            page.uncheck("[data-testid=whole-frame]")
            page.click("[data-testid=zones-save]")
            page.wait_for_selector("[data-testid=zone-editor]", state="hidden")
            assert gym_zones(port)["whole_frame"] is False and "whole_frame = false" in cfg.read_text()
            page.wait_for_function("document.querySelector('[data-testid=label]')?.textContent"
                                   " === 'zones only: the whole frame is not labelled'", timeout=20_000)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read()
    assert rc == 0 and "Traceback" not in err, err
