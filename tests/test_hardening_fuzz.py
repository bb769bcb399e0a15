"""Fuzzing the two ways a user hands streamrec arbitrary values: TOML configs and the camera
API's query strings. Never a traceback, never a 500: a StreamrecError (one line) or a 4xx."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import time
import tomllib
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from streamrec.config import CameraConfig, ServeConfig, SmoothingConfig
from streamrec.errors import StreamrecError

from conftest import ROOT, free_port, sigterm, streamrec_cmd, wait_http, write_video, json_request

TOKEN = "fuzz-token"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- TOML -------------------------------------------------------------------------------

def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string (a lone surrogate: TOML refuses, the example is skipped)


def toml_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(toml_float),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=20).map(toml_string),
    st.sampled_from(["'clip.mp4'", "'0'", "'rtsp://u:p@h/s'", "'127.0.0.1'", "'0.0.0.0'", "'localhost'", "1979-05-27",
                     "07:32:00", "'none'", "'DEFAULT'", "'cpu'", "'cuda:1'", "'tcp'", "'udp'"]),
)


def key_values(keys: list[str]) -> st.SearchStrategy[list[str]]:
    value = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(keys), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}")), max_leaves=6)
    return st.dictionaries(st.sampled_from(keys), value, max_size=6).map(lambda d: [f"{k} = {v}" for k, v in d.items()])


SERVE_KEYS = [f.name for f in dataclasses.fields(ServeConfig)] + ["bogus", "stall-timeout"]
CAMERA_KEYS = [f.name for f in dataclasses.fields(CameraConfig)] + ["bogus"]
SMOOTHING_KEYS = [f.name for f in dataclasses.fields(SmoothingConfig)] + ["bogus"]


@st.composite
def toml_documents(draw) -> str:
    lines = draw(key_values(SERVE_KEYS))
    if draw(st.booleans()):
        lines += ["[smoothing]", *draw(key_values(SMOOTHING_KEYS))]
    for _ in range(draw(st.integers(0, 2))):
        lines += ["[[cameras]]", *draw(key_values(CAMERA_KEYS))]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(toml_documents())
@pytest.mark.slow
def test_any_toml_config_works_or_is_one_line_error(text):
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError:  # not TOML at all (a repeated key, a lone surrogate): load_toml's own error
        return
    try:
        ServeConfig.from_sources(values, {})
    except StreamrecError as exc:
        assert str(exc) and "\n" not in str(exc)


@SETTINGS
@given(st.dictionaries(st.sampled_from(SERVE_KEYS),
                       st.one_of(st.floats(), st.integers(), st.text(max_size=10), st.none(), st.booleans()), max_size=5))
def test_any_command_line_values_work_or_are_one_line_error(cli):
    try:
        ServeConfig.from_sources({"source": "clip.mp4"}, cli)
    except StreamrecError as exc:
        assert str(exc) and "\n" not in str(exc)


# -- the camera API ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    clip = write_video(tmp_path_factory.mktemp("fuzz") / "c.mp4", seconds=2, size=(128, 96))
    port = free_port()
    proc = subprocess.Popen(
        streamrec_cmd("serve", "--source", str(clip), "--loop", "--model", "tiny3d", "--weights", "none",
                      "--device", "cpu", "--port", str(port), "--token", TOKEN),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 180
    while json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)).get("status") == "starting":
        assert time.monotonic() < deadline, "the server is still preparing its model after 180 s"
        time.sleep(0.2)  # the model is prepared: the API answers 503 until then
    yield port, str(clip)
    assert sigterm(proc) == 0
    log = proc.stderr.read()
    assert "Traceback" not in log and "internal error" not in log, log


def call(method: str, url: str) -> tuple[int, object]:
    return json_request(method, url, TOKEN)


camera_values = st.one_of(st.text(max_size=12), st.sampled_from(
    ["CLIP", "0", "99999999999999999999", "²", "rtsp://u:p@h/s", "ftp://x", "true", "no", "nan", "inf", "-1", "1e308",
     "tcp", "udp", "tiny3d", "none", "x" * 70, "\U0001d400" * 64]))


names = st.text(st.characters(categories=["L", "N"]) | st.sampled_from("-_. /%"), min_size=1, max_size=70)
OPTION_KEYS = [k for k in CAMERA_KEYS if k not in ("name", "source")]
queries = st.one_of(
    st.dictionaries(st.sampled_from(CAMERA_KEYS), camera_values, max_size=5),  # anything
    st.builds(lambda name, source, extra: {**extra, "name": name, "source": source},  # a name, mostly the clip
              names, st.one_of(st.just("CLIP"), st.just("CLIP"), camera_values),
              st.dictionaries(st.sampled_from(OPTION_KEYS), camera_values, max_size=2)),
)


@SETTINGS
@given(query=queries)
@example(query={"name": "w", "source": "99999999999999999999"})  # a webcam index OpenCV cannot take: was a 500
@example(query={"name": "w", "source": "²"})  # a digit to str.isdigit, not to int(): was a 500
@example(query={"name": "café", "source": "CLIP"})
@example(query={"name": "w", "source": "9" * 5000})  # more digits than int() converts: was a 500
@example(query={"name": "w", "source": "CLIP", "open_timeout": "9" * 5000})
@example(query={"name": "w", "source": "\U0001d400" * 64})  # a file name over NAME_MAX bytes (ENAMETOOLONG): was a 500
@pytest.mark.slow
def test_camera_api_posts_never_fail_inside(server, query):
    port, clip = server
    query = {k: clip if v == "CLIP" else v for k, v in query.items()}
    status, body = call("POST", f"http://127.0.0.1:{port}/api/cameras?{urlencode(query)}")
    event(f"status {status}")
    assert status in (201, 400, 409), (status, body)
    if status == 201:
        assert call("DELETE", f"http://127.0.0.1:{port}/api/cameras/{quote(body['added'], safe='')}") == \
            (200, {"removed": body["added"]})
    else:
        assert isinstance(body["error"], str) and "\n" not in body["error"]


@SETTINGS
@given(raw=st.text(max_size=40), method=st.sampled_from(["POST", "DELETE"]))
@pytest.mark.slow
def test_camera_api_raw_query_strings_and_paths(server, raw, method):
    port, _ = server
    encoded = quote(raw, safe="=&%+;/?")  # malformed escapes and separators pass through as written
    url = (f"http://127.0.0.1:{port}/api/cameras?{encoded}" if method == "POST"
           else f"http://127.0.0.1:{port}/api/cameras/{encoded}")
    status, body = call(method, url)
    assert status in (400, 401, 404, 405, 409), (status, body)  # 401: the query's own token= wins
