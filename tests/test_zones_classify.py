"""`streamrec classify --zone`: a zone of a 2x2 mosaic gives exactly the scores of that tile saved as its own
file; the zone's box in the outputs; bad regions refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.errors import StreamrecError
from streamrec.models.registry import load_model
from streamrec.offline.classify import classify_file
from streamrec.zones import ZoneConfig

from conftest import error_line, motion_frames, run_main, write_frames

TILE_W, TILE_H = 160, 120
FPS, SECONDS = 15, 3.0
TILES = {  # zone (x,y,w,h as fractions) -> which tile of the mosaic
    "0,0,0.5,0.5": (0, 0),
    "0.5,0,0.5,0.5": (0, 1),
    "0,0.5,0.5,0.5": (1, 0),
    "0.5,0.5,0.5,0.5": (1, 1),
}


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.manual_seed(0)
    return load_model("tiny3d", weights="none")


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 320x240 mosaic of four tiles of squares moving four ways (one a tile), and each tile as its
    own file: lossless RGB (FFV1), so the tile's file holds exactly the pixels of the mosaic's quarter."""
    folder = tmp_path_factory.mktemp("mosaic")
    rng = np.random.default_rng(0)
    n = int(SECONDS * FPS)
    tiles = [motion_frames(d, n, (TILE_W, TILE_H), rng, period=30)
             for d in ("left_to_right", "right_to_left", "top_to_bottom", "left_to_right")]
    tiles[3] = [f[::-1].copy() for f in tiles[3]]  # the fourth moves left to right upside down: unlike the first
    frames = [np.vstack([np.hstack([tiles[0][i], tiles[1][i]]), np.hstack([tiles[2][i], tiles[3][i]])])
              for i in range(n)]
    path = write_frames(folder / "mosaic.mkv", frames, FPS, codec="ffv1", pix_fmt="bgr0")
    files = {rect: write_frames(folder / f"tile{row}{col}.mkv", tiles[2 * row + col], FPS, codec="ffv1", pix_fmt="bgr0")
             for rect, (row, col) in TILES.items()}
    return path, files


@pytest.mark.parametrize("rect", list(TILES))
def test_a_zone_of_the_mosaic_scores_exactly_as_its_tile_alone(mosaic, tiny, rect):
    path, files = mosaic
    zone = ZoneConfig.parse_rect(rect)
    tl = classify_file(path, loaded=tiny, device="cpu", stride=0.5, top=10, zone=zone)
    alone = classify_file(files[rect], loaded=tiny, device="cpu", stride=0.5, top=10)
    assert len(tl.windows) == len(alone.windows) == 5  # 3 s at 15 fps, a window every 0.5 s from 1 s on
    assert [(w.start, w.end, w.top) for w in tl.windows] == [(w.start, w.end, w.top) for w in alone.windows]
    assert tl.verdict == alone.verdict
    row, col = TILES[rect]
    assert tl.zone == {"name": "zone", "x": col * 0.5, "y": row * 0.5, "w": 0.5, "h": 0.5,
                       "box": [col * TILE_W, row * TILE_H, (col + 1) * TILE_W, (row + 1) * TILE_H]}
    assert alone.zone is None


def test_the_zones_differ_from_each_other_and_from_the_whole_frame(mosaic, tiny):
    path, _ = mosaic
    runs = [classify_file(path, loaded=tiny, device="cpu", stride=0.5, top=10, zone=zone)
            for zone in [None, *map(ZoneConfig.parse_rect, TILES)]]
    assert len({json.dumps([w.top for w in tl.windows]) for tl in runs}) == 5  # the crop matters: five answers


def classify_zones(path, *rects: str):
    """``streamrec classify PATH --format json --zone R ...`` with tiny3d's random weights, which must succeed."""
    proc = run_main("classify", str(path), "--weights", "none", "--model", "tiny3d", "--format", "json",
                    *(arg for rect in rects for arg in ("--zone", rect)))
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_the_command_line_names_each_zone_and_its_box(mosaic):
    path, _ = mosaic
    proc = classify_zones(path, "0,0,0.5,0.5", "0.5,0.5,0.5,0.5")
    d = json.loads(proc.stdout)
    assert [(t["zone"]["name"], t["zone"]["box"]) for t in d] == [("zone1", [0, 0, 160, 120]),
                                                                 ("zone2", [160, 120, 320, 240])]
    assert [len(t["windows"]) for t in d] == [3, 3]  # 3 s, a window every second from 1 s on
    assert "upscaled" not in proc.stderr  # 160x120 is not smaller than the 112x112 crop: no warning


@pytest.mark.slow
def test_every_zone_of_one_run_is_classified_by_the_same_model(mosaic):
    """With random weights too: the same region twice scores the same, and the model is loaded once."""
    path, _ = mosaic
    proc = classify_zones(path, "0,0,0.5,0.5", "0,0,0.5,0.5")
    first, second = json.loads(proc.stdout)
    assert first["windows"] == second["windows"] and first["verdict"] == second["verdict"]
    assert proc.stderr.count("streamrec.models.registry: --weights none") == 1, proc.stderr  # loaded once


@pytest.mark.parametrize("args, message", [
    (["--zone", "abc"], "--zone: expected x,y,w,h as four fractions of the frame, got 'abc'"),
    (["--zone", "0.5,0,0.7,0.5"], "--zone: zone 'zone': expected the zone inside the frame (x + w <= 1, y + h <= 1), "
                                  "got x + w = 1.2, y + h = 0.5"),
    (["--zone", "0,0,0.5,0.5", "--zone", "0.5,0,0.5,0.5", "--format", "csv"],
     "--zone: several zones give a table or JSON per zone; --format csv takes one --zone"),
])
def test_a_bad_zone_is_one_line(mosaic, args, message):
    path, _ = mosaic
    proc = run_main("classify", str(path), "--weights", "none", "--model", "tiny3d", *args)
    assert error_line(proc) == f"streamrec: error: {message}"


def test_a_zone_outside_the_frame_is_refused_by_the_api():
    with pytest.raises(StreamrecError, match=r"^--zone: zone 'zone': w, h: expected a size of at least 0.01 \(of the frame\), got w=0, h=0.5$"):
        ZoneConfig.parse_rect("0,0,0,0.5")
