"""``PUT /api/cameras/NAME/zones`` on a real ``streamrec serve --config``: the camera restarts with
the new zones, their labels arrive, the config file is rewritten keeping its comments (and still
loads), bad zones are a 400 with one line, and a camera the file does not hold keeps its zones in
memory only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.parse

import pytest

from streamrec.config import ServeConfig
from streamrec.configfile import load_toml
from streamrec.zones import ZoneConfig

from conftest import ROOT, free_port, json_request, streamrec_cmd, wait_http

TOKEN = "z0nes"
pytestmark = pytest.mark.slow

CONFIG = """# the gym's server
model = "tiny3d"   # small and fast
weights = "none"
device = "cpu"

[[cameras]]
name = "gym"  # the back room
source = "{clip}"
loop = true

# the rack by the wall
[[cameras.zones]]
name = "rack"
x = 0
y = 0
w = 0.5
h = 0.5

# answers settle faster
[smoothing]
hold = 1
"""

REWRITTEN = """# the gym's server
model = "tiny3d"   # small and fast
weights = "none"
device = "cpu"

[[cameras]]
name = "gym"  # the back room
source = "{clip}"
loop = true
whole_frame = false

# the rack by the wall
[[cameras.zones]]
name = "door"
x = 0.25
y = 0.25
w = 0.5
h = 0.5

[[cameras.zones]]
name = "mat"
polygon = [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]]

# answers settle faster
[smoothing]
hold = 1
"""


@pytest.fixture(scope="module")
def served(demo_clip, tmp_path_factory):
    """A real ``streamrec serve --config`` with one camera of one zone: ``(port, config path)``."""
    folder = tmp_path_factory.mktemp("zones-api")
    cfg = folder / "serve.toml"
    cfg.write_text(CONFIG.format(clip=os.path.relpath(demo_clip, folder)))  # relative to the file, as configs/ have it
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--config", str(cfg), "--port", str(port), "--db",
                                          str(folder / "h.db"), "--token", TOKEN),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz?token={TOKEN}", proc=proc)
        yield port, cfg
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read()
    assert rc == 0 and "Traceback" not in err, err


def put_zones(port: int, camera: str, zones, whole_frame="true", token: str | None = TOKEN, raw: str | None = None):
    text = raw if raw is not None else json.dumps(zones)
    q = urllib.parse.urlencode({"zones": text, "whole_frame": whole_frame})
    return json_request("PUT", f"http://127.0.0.1:{port}/api/cameras/{camera}/zones?{q}", token)


async def zone_labels(port: int, zone: str, timeout: float = 90.0) -> list[dict]:
    """The websocket's predictions until two of ``zone`` came (each restart's first ones included)."""
    import websockets

    got: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", max_size=2**22) as ws:
        deadline = time.monotonic() + timeout
        while sum(m.get("zone") == zone for m in got) < 2:
            m = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            if isinstance(m, str) and (d := json.loads(m))["type"] == "prediction":
                got.append(d)
    return got


def test_good_zones_are_labelled_and_written_to_the_config_keeping_its_comments(served, demo_clip):
    port, cfg = served
    status, listing = json_request("GET", f"http://127.0.0.1:{port}/api/cameras", TOKEN)
    assert status == 200
    assert listing["zones"] == {"gym": {"zones": [{"name": "rack", "x": 0.0, "y": 0.0, "w": 0.5, "h": 0.5}],
                                        "whole_frame": True}}
    zones = [{"name": "door", "x": 0.25, "y": 0.25, "w": 0.5, "h": 0.5},
             {"name": "mat", "polygon": [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]]}]
    status, body = put_zones(port, "gym", zones, "false")
    mat = {"name": "mat", "x": 0.5, "y": 0.5, "w": 0.30000000000000004, "h": 0.4,
           "polygon": [[0.5, 0.5], [0.8, 0.5], [0.65, 0.9]]}
    assert (status, body) == (200, {"camera": "gym", "zones": [zones[0], mat], "whole_frame": False,
                                    "saved_to": str(cfg)})
    msgs = asyncio.run(zone_labels(port, "door"))
    door = [m for m in msgs if m["zone"] == "door"]
    assert {m["camera"] for m in door} == {"gym"} and len(door) >= 2
    assert cfg.read_text() == REWRITTEN.format(clip=os.path.relpath(demo_clip, cfg.parent))
    config = ServeConfig.from_sources(load_toml(str(cfg)), {})  # what serve --config validates at start
    (cam,) = config.cameras
    assert (cam.zones, cam.whole_frame) == ((ZoneConfig("door", 0.25, 0.25, 0.5, 0.5),
                                             ZoneConfig.from_polygon("mat", zones[1]["polygon"], camera="gym")), False)
    status, listing = json_request("GET", f"http://127.0.0.1:{port}/api/cameras", TOKEN)
    assert listing["zones"]["gym"] == {"zones": [zones[0], mat], "whole_frame": False}


NAN = '[{"name": "a", "x": 0, "y": 0, "w": NaN, "h": 0.5}]'
BAD = [
    ([{"name": "out", "x": 0.75, "y": 0, "w": 0.5, "h": 0.5}], "true",
     "camera 'gym': zone 'out': expected the zone inside the frame (x + w <= 1, y + h <= 1), got x + w = 1.25, y + h = 0.5"),
    ([{"name": "a", "x": 0, "y": 0, "w": 0.5, "h": 0.5}, {"name": "a", "x": 0.5, "y": 0.5, "w": 0.5, "h": 0.5}], "true",
     "camera 'gym': zones: expected unique names, got 'a' more than once"),
    ([{"name": "flat", "x": 0, "y": 0, "w": 0, "h": 0.5}], "true",
     "camera 'gym': zone 'flat': w, h: expected a size of at least 0.01 (of the frame), got w=0, h=0.5"),
    ([{"name": f"z{i}", "x": 0, "y": 0, "w": 0.5, "h": 0.5} for i in range(17)], "true",
     "camera 'gym': zones: expected at most 16, got 17"),
    (NAN, "true", f"zones: expected a JSON array, got {NAN[:40] + '...'!r} (NaN is not a number JSON allows)"),
    ('[{"name": "a",', "true", "zones: expected a JSON array, got '[{\"name\": \"a\",' (Expecting property name enclosed "
                               "in double quotes: line 1 column 15 (char 14))"),
    ('{"name": "a"}', "true", "zones: expected a JSON array, got '{\"name\": \"a\"}'"),
    ([{"name": "a", "x": 0, "y": 0, "w": 0.5, "h": 0.5}], "maybe", "whole_frame: expected true or false (1/0, yes/no, on/off), "
                                                                  "got 'maybe'"),
    ([], "false", "camera 'gym': whole_frame: expected true for a camera without zones (it would label nothing), got false"),
]


@pytest.mark.parametrize("zones, whole_frame, error", BAD, ids=["outside", "duplicate", "zero-size", "17-zones", "nan",
                                                                "bad-json", "not-an-array", "whole-frame", "nothing"])
def test_bad_zones_are_a_400_with_one_line_and_change_nothing(served, zones, whole_frame, error):
    port, cfg = served
    before = cfg.read_text()
    raw = zones if isinstance(zones, str) else None
    assert put_zones(port, "gym", zones, whole_frame, raw=raw) == (400, {"error": error})
    assert cfg.read_text() == before


def test_the_zones_route_needs_the_token_and_a_camera(served):
    port, cfg = served
    good = [{"name": "a", "x": 0, "y": 0, "w": 0.5, "h": 0.5}]
    assert put_zones(port, "gym", good, token=None) == (401, {"error": "missing or wrong token"})
    assert put_zones(port, "nope", good) == (404, {"error": "no camera 'nope'"})
    base = f"http://127.0.0.1:{port}/api/cameras"
    assert json_request("GET", f"{base}/gym/zones", TOKEN) == (405, {"error": "PUT /api/cameras/NAME/zones"})
    assert json_request("PUT", base, TOKEN) == (405, {"error": "GET, POST or DELETE (or PUT /api/cameras/NAME/zones)"})


def test_a_camera_added_through_the_api_keeps_its_zones_in_memory_only(served, demo_clip):
    port, cfg = served
    before = cfg.read_text()
    q = urllib.parse.urlencode({"name": "porch", "source": str(demo_clip), "loop": "true"})
    assert json_request("POST", f"http://127.0.0.1:{port}/api/cameras?{q}", TOKEN) == (201, {"added": "porch"})
    try:
        deadline = time.monotonic() + 60  # added in the background: listed once it runs
        while "porch" not in json_request("GET", f"http://127.0.0.1:{port}/api/cameras", TOKEN)[1]["cameras"]:
            assert time.monotonic() < deadline, "porch not listed after 60 s"
            time.sleep(0.2)
        zone = {"name": "step", "x": 0.0, "y": 0.5, "w": 1.0, "h": 0.5}
        status, body = put_zones(port, "porch", [zone])
        assert (status, body) == (200, {"camera": "porch", "zones": [zone], "whole_frame": True, "saved_to": None})
        assert cfg.read_text() == before
    finally:
        assert json_request("DELETE", f"http://127.0.0.1:{port}/api/cameras/porch", TOKEN) == (200, {"removed": "porch"})


@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf"], ids=["plain", "a byte order mark (Notepad's)"])
def test_zones_written_back_are_utf8_whatever_the_locale(tmp_path, prefix):
    """The config is read as UTF-8 (a byte order mark left out) and written back as UTF-8, also
    where the locale's encoding is ASCII, keeping its comments in any script."""
    import subprocess
    import sys

    from streamrec.configfile import load_toml

    cfg = tmp_path / "gym.toml"
    cfg.write_bytes(prefix + '# Küche 台所\n[[cameras]]\nname = "küche"  # the kitchen\nsource = "0"\n'.encode())
    script = ("import sys; from streamrec.configfile import write_zones; from streamrec.zones import ZoneConfig; "
              "print(write_zones(sys.argv[1], 'k\\u00fcche', (ZoneConfig('herd', 0.0, 0.0, 0.5, 0.5),), True))")
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-c", script, str(cfg)], capture_output=True, text=True, env=env, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "True"), proc.stderr
    text = cfg.read_bytes().decode("utf-8")
    assert text.startswith("# Küche 台所\n") and 'name = "küche"  # the kitchen' in text
    [camera] = load_toml(cfg)["cameras"]
    assert [z["name"] for z in camera["zones"]] == ["herd"] and camera["whole_frame"] is True


def test_zones_written_and_cleared_again_and_again_leave_the_file_as_it_was(tmp_path):
    """Each round of one zone, then none, used to leave one more blank line before the next camera."""
    from streamrec.configfile import write_zones

    cfg = tmp_path / "gym.toml"
    cfg.write_text('[[cameras]]\nname = "gym"\nsource = "0"\n\n[[cameras]]\nname = "b"\nsource = "1"\n')
    zone = (ZoneConfig("rack", 0.0, 0.0, 0.5, 0.5),)
    texts = []
    for _ in range(3):
        assert write_zones(cfg, "gym", zone, True)
        with_zone = cfg.read_text()
        assert write_zones(cfg, "gym", (), True)
        texts.append((with_zone, cfg.read_text()))
    assert len(set(texts)) == 1, texts  # the same two files each round
    assert texts[0][1] == '[[cameras]]\nname = "gym"\nsource = "0"\nwhole_frame = true\n\n[[cameras]]\nname = "b"\nsource = "1"\n'


@pytest.mark.parametrize("flag, whole_frame", [("true", True), ("True", True), ("1", True), ("on", True),
                                               ("false", False), ("FALSE", False), ("0", False), ("no", False)])
def test_whole_frame_in_the_query_is_read_as_post_api_cameras_reads_a_flag(flag, whole_frame):
    from streamrec.serve.routes import zones_query

    zones = json.dumps([{"name": "rack", "x": 0, "y": 0, "w": 0.5, "h": 0.5}])
    assert zones_query({"zones": [zones], "whole_frame": [flag]}, "gym") == \
        ((ZoneConfig("rack", 0, 0, 0.5, 0.5),), whole_frame)


GYM_WITH_A_RULE = """model = "tiny3d"
weights = "none"
{extra}
[[cameras]]
name = "gym"
source = "{source}"

[[cameras.zones]]
name = "rack"
x = 0.0
y = 0.0
w = 0.5
h = 0.5

[[rules]]
name = "lift"
labels = ["class_0"]
zones = ["rack"]
"""


@pytest.mark.parametrize("extra", ["", 'host = "0.0.0.0"\n'])  # the second needs --token or --insecure to start
def test_zones_that_would_leave_the_files_rule_without_its_zone_are_not_written(tmp_path, demo_clip, extra):
    """A rule edited into the file by hand after the start (the running server does not have it)
    names the zone the editor removes: written, the file would no longer start serve."""
    from streamrec.configfile import write_zones
    from streamrec.errors import StreamrecError

    path = tmp_path / "gym.toml"
    path.write_text(GYM_WITH_A_RULE.format(extra=extra, source=demo_clip))
    before = path.read_text()
    bench = (ZoneConfig("bench", 0.5, 0.5, 0.5, 0.5),)
    if extra:  # a file that does not start serve alone is not judged by it: written as asked
        assert write_zones(path, "gym", bench, True) is True
        assert 'name = "bench"' in path.read_text()
        return
    with pytest.raises(StreamrecError) as err:
        write_zones(path, "gym", bench, True)
    assert str(err.value) == (f"--config {path}: not written: serve would not start from it with these zones: "
                              "[[rules]] 'lift': zones: no zone 'rack' on any camera; expected one of bench")
    assert path.read_text() == before
    assert write_zones(path, "gym", (ZoneConfig("rack", 0.0, 0.0, 0.4, 0.4),) + bench, True) is True
