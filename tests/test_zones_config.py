"""Zones in the config: ``[[cameras.zones]]`` rectangles and polygons, ``whole_frame``, and every
bad zone refused at start with one line naming the camera, the zone and the value (exit 2)."""

from __future__ import annotations

import math

import pytest

from conftest import error_line, run_cli
from streamrec.cli.main import main
from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError
from streamrec.zones import ZONES_MAX, ZoneConfig, parse_zones, split_key, stream_key, upscale_warnings

RACK = {"name": "rack", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5}


def camera(*zones, **kw) -> CameraConfig:
    return CameraConfig.from_dict({"name": "gym", "source": "clip.mp4", "zones": list(zones), **kw})


def test_a_camera_holds_rectangles_and_polygons_in_order_and_its_streams():
    cam = camera(RACK, {"name": "mat", "polygon": [[0.5, 0.5], [0.9, 0.6], [0.7, 1.0]]}, whole_frame=False)
    rack, mat = cam.zones
    assert (rack.x, rack.y, rack.w, rack.h, rack.polygon) == (0.0, 0.0, 0.5, 0.5, None)
    assert (mat.x, mat.y) == (0.5, 0.5) and math.isclose(mat.w, 0.4) and math.isclose(mat.h, 0.5)
    assert mat.polygon == ((0.5, 0.5), (0.9, 0.6), (0.7, 1.0))
    assert cam.streams() == ("rack", "mat")
    assert camera(RACK).streams() == (None, "rack")  # whole_frame defaults to true
    assert CameraConfig("c", "clip.mp4").streams() == (None,)


def test_pixel_boxes_cover_the_frame_without_gaps_and_are_never_empty():
    halves = [ZoneConfig("l", 0, 0, 0.5, 1), ZoneConfig("r", 0.5, 0, 0.5, 1)]
    assert [z.box(1921, 1080) for z in halves] == [(0, 0, 960, 1080), (960, 0, 1921, 1080)]
    assert ZoneConfig("tiny", 0.99, 0.99, 0.01, 0.01).box(50, 50) == (49, 49, 50, 50)
    assert ZoneConfig("tiny", 0.5, 0.5, 0.01, 0.01).box(30, 30) == (15, 15, 16, 16)  # under a pixel: one pixel


def test_the_stream_keys_of_zones_round_trip():
    assert stream_key("gym", None) == "gym" and stream_key("gym", "rack") == "gym/rack"
    assert split_key("gym/rack") == ("gym", "rack") and split_key("gym") == ("gym", None)


def test_a_zone_smaller_than_the_models_crop_is_accepted_with_an_upscaling_warning():
    small, big = ZoneConfig("small", 0, 0, 0.1, 0.1), ZoneConfig("big", 0.5, 0.5, 0.5, 0.5)
    assert upscale_warnings([small, big], 1280, 720, 112, camera="gym") == [
        "camera 'gym': zone 'small' is 128x72 pixels of a 1280x720 frame, smaller than the model's 112x112 crop: "
        "it is upscaled"]


BAD = [
    ({"name": "out", "x": 0.8, "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone 'out': expected the zone inside the frame (x + w <= 1, y + h <= 1), got x + w = 1.3, y + h = 0.5"),
    ({"name": "neg", "x": -0.1, "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone 'neg': x, y: expected the top-left corner inside the frame (0 <= x, y < 1), got x=-0.1, y=0"),
    ({"name": "flat", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0},
     "camera 'gym': zone 'flat': w, h: expected a size of at least 0.01 (of the frame), got w=0.5, h=0"),
    ({"name": "nan", "x": float("nan"), "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone 'nan': x: expected a finite number (a fraction of the frame), got nan"),
    ({"name": "txt", "x": "0", "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone 'txt': x: expected a finite number (a fraction of the frame), got '0'"),
    ({"name": "a/b", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone: name: expected 1-40 ASCII letters, digits, '-', '_' or '.' (not dots alone), got 'a/b'"),
    ({"name": "..", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone: name: expected 1-40 ASCII letters, digits, '-', '_' or '.' (not dots alone), got '..'"),
    ({"x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5},
     "camera 'gym': zone: name: expected 1-40 ASCII letters, digits, '-', '_' or '.' (not dots alone), got None"),
    ({"name": "half", "x": 0.0, "y": 0.0, "w": 0.5},
     "camera 'gym': zone 'half': expected x, y, w, h, missing h"),
    ({"name": "both", "x": 0.0, "polygon": [[0, 0], [1, 0], [1, 1]]},
     "camera 'gym': zone 'both': expected x, y, w, h or a polygon, got both"),
    ({"name": "line", "polygon": [[0, 0], [1, 1]]},
     "camera 'gym': zone 'line': polygon: expected 3-64 [x, y] points, got [[0, 0], [1, 1]]"),
    ({"name": "flatpoly", "polygon": [[0, 0.5], [0.5, 0.5], [1, 0.5]]},
     "camera 'gym': zone 'flatpoly': polygon: expected points enclosing an area of at least 0.0001 (of the frame), "
     "got 0 (points on one line?)"),
    ({"name": "diagonal", "polygon": [[0, 0], [0.5, 0.5], [1, 1]]},  # its bounding box is the whole frame
     "camera 'gym': zone 'diagonal': polygon: expected points enclosing an area of at least 0.0001 (of the frame), "
     "got 0 (points on one line?)"),
    ({"name": "repeated", "polygon": [[0, 0], [0, 0], [0.5, 0.5]]},
     "camera 'gym': zone 'repeated': polygon: expected points enclosing an area of at least 0.0001 (of the frame), "
     "got 0 (points on one line?)"),
    ({"name": "bowtie", "polygon": [[0, 0], [0.8, 0.6], [0.8, 0], [0, 0.2]]},  # its area is not 0: it crosses itself
     "camera 'gym': zone 'bowtie': polygon: expected an outline that does not cross itself, got the edge "
     "[0, 0]-[0.8, 0.6] crossing [0.8, 0]-[0, 0.2]"),
    ({"name": "folded", "polygon": [[0, 0], [1, 0], [1, 1], [0.5, 1], [1, 1]]},  # the outline runs back on itself
     "camera 'gym': zone 'folded': polygon: expected an outline that does not cross itself, got the edge "
     "[1, 0]-[1, 1] crossing [0.5, 1]-[1, 1]"),
    ({"name": "z", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5, "colour": "red"},
     "camera 'gym': zones: unknown key(s) 'colour'; expected name, x, y, w, h, polygon"),
]


@pytest.mark.parametrize("zone,line", BAD, ids=[z.get("name", "noname") for z, _ in BAD])
def test_a_bad_zone_is_one_line_naming_camera_zone_and_value(zone, line):
    with pytest.raises(StreamrecError) as info:
        camera(zone)
    assert str(info.value) == line


def test_simple_outlines_are_taken_whatever_their_turn():
    """Concave, clockwise or not, a corner on a straight edge: simple polygons all."""
    for pts in ([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.5, 0.5], [0.1, 0.9]], [[0, 0], [0, 1], [1, 1], [1, 0]],
                [[0, 0], [0.5, 0], [1, 0], [1, 1]], [[0.2, 0.2], [0.6, 0.2], [0.6, 0.6], [0.4, 0.4], [0.2, 0.6]]):
        assert camera({"name": "p", "polygon": pts}).zones[0].polygon == tuple(map(tuple, pts))


def test_duplicate_names_too_many_zones_and_a_camera_labelling_nothing_are_refused():
    with pytest.raises(StreamrecError, match=r"^camera 'gym': zones: expected unique names, got 'rack' more than once$"):
        camera(RACK, {**RACK, "x": 0.5})
    many = [{"name": f"z{i}", "x": 0.0, "y": 0.0, "w": 0.1, "h": 0.1} for i in range(ZONES_MAX + 1)]
    with pytest.raises(StreamrecError, match=rf"^camera 'gym': zones: expected at most {ZONES_MAX}, got {ZONES_MAX + 1}$"):
        camera(*many)
    assert len(parse_zones(many[:ZONES_MAX], camera="gym")) == ZONES_MAX
    with pytest.raises(StreamrecError, match=r"^camera 'gym': whole_frame: expected true for a camera without zones"):
        camera(whole_frame=False)
    with pytest.raises(StreamrecError, match=r"^camera 'gym': zones: expected \[\[cameras.zones\]\] tables, got str$"):
        CameraConfig.from_dict({"name": "gym", "source": "c.mp4", "zones": "rack"})


@pytest.mark.parametrize("text,line", [
    ("0,0,0.5", "--zone: expected x,y,w,h as four fractions of the frame, got '0,0,0.5'"),
    ("0,0,0.5,nan", "--zone: zone 'zone': h: expected a finite number (a fraction of the frame), got nan"),
    ("0.5,0,0.6,1", "--zone: zone 'zone': expected the zone inside the frame (x + w <= 1, y + h <= 1), "
                    "got x + w = 1.1, y + h = 1"),
])
def test_a_bad_zone_rectangle_on_the_command_line_is_one_line(text, line):
    with pytest.raises(StreamrecError) as info:
        ZoneConfig.parse_rect(text)
    assert str(info.value) == line


def gym_toml(tmp_path, zones: str) -> str:
    path = tmp_path / "gym.toml"
    path.write_text(f'[[cameras]]\nname = "gym"\nsource = "clip.mp4"\n{zones}')
    return str(path)


def test_serve_refuses_a_bad_zone_in_the_config_with_one_line_and_exit_2(tmp_path, capsys):
    bad = gym_toml(tmp_path, '[[cameras.zones]]\nname = "rack"\nx = 0.6\ny = 0\nw = 0.6\nh = 1\n')
    assert main(["serve", "--config", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["streamrec: error: camera 'gym': zone 'rack': expected the zone inside the frame "
                   "(x + w <= 1, y + h <= 1), got x + w = 1.2, y + h = 1"]


def test_the_installed_command_exits_2_with_the_line_for_duplicate_zone_names(tmp_path):
    zone = '[[cameras.zones]]\nname = "rack"\nx = 0\ny = 0\nw = 0.5\nh = 0.5\n'
    proc = run_cli("serve", "--config", gym_toml(tmp_path, zone + zone))
    assert error_line(proc) == "streamrec: error: camera 'gym': zones: expected unique names, got 'rack' more than once"


def test_a_toml_config_with_zones_loads_through_serve_config(tmp_path):
    from streamrec.configfile import load_toml

    path = gym_toml(tmp_path, 'whole_frame = false\n[[cameras.zones]]\nname = "rack"\nx = 0\ny = 0\nw = 0.5\nh = 0.5\n'
                              '[[cameras.zones]]\nname = "mat"\npolygon = [[0.5, 0.5], [1, 0.5], [1, 1]]\n')
    cfg = ServeConfig.from_sources(load_toml(path), {})
    (cam,) = cfg.cameras
    assert cam.whole_frame is False and [z.name for z in cam.zones] == ["rack", "mat"]
    assert cam.zones[1].to_toml_dict() == {"name": "mat", "polygon": [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0]]}


def test_a_negative_zero_corner_is_zero():
    """-0.0 is inside the frame; the API's answer and the config written back say 0.0."""
    import math

    from streamrec.zones import ZoneConfig

    z = ZoneConfig.from_dict({"name": "r", "x": -0.0, "y": -0.0, "w": 0.5, "h": 0.5}, camera="c")
    p = ZoneConfig.from_dict({"name": "p", "polygon": [[-0.0, -0.0], [0.5, -0.0], [0.5, 0.5]]}, camera="c")
    assert [math.copysign(1.0, v) for v in (z.x, z.y, p.x, p.y, *p.polygon[0])] == [1.0] * 6
