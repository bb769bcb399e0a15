"""Config and command-line values checked in the units that limit them.

* every float field of every config dataclass refuses ``nan`` and ``inf`` (TOML has both, and
  ``float("inf")`` parses), with one line naming the field;
* the number options of the command line refuse them too;
* a camera name is limited in UTF-8 bytes where bytes are limited (the preview frame's one-byte
  name length), not only in characters;
* a ``cameras`` list of anything but tables is a one-line error.
"""

from __future__ import annotations

import dataclasses
import os
import inspect
import tomllib
import typing

import pytest

import streamrec.config as config_module
from streamrec.config import CameraConfig, ServeConfig
from streamrec.errors import StreamrecError

from conftest import error_line, run_main

BAD_NUMBERS = (float("nan"), float("inf"), float("-inf"))


def config_classes() -> list[type]:
    """Every dataclass defined in streamrec.config (a new one is covered without editing this test)."""
    return [c for _, c in inspect.getmembers(config_module, inspect.isclass)
            if dataclasses.is_dataclass(c) and c.__module__ == config_module.__name__]


def float_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls)
            if float in (typing.get_args(hints[f.name]) or (hints[f.name],))]


def build(cls: type, **kw):
    required = {ServeConfig: {"source": "clip.mp4"}, CameraConfig: {"name": "cam", "source": "clip.mp4"}}.get(cls, {})
    return cls(**{**required, **kw})


def test_the_config_classes_and_their_float_fields_are_found():
    found = {c.__name__: float_fields(c) for c in config_classes()}
    assert found["SmoothingConfig"] == ["alpha", "margin", "threshold"]
    assert found["CameraConfig"] == ["open_timeout", "stall_timeout"]
    assert {"open_timeout", "stall_timeout", "stride_ms", "display_fps", "batch_wait_ms", "history_days",
            "header_timeout"} <= set(found["ServeConfig"])


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_float_field_refuses_nan_and_inf(cls):
    fields = float_fields(cls)
    for name in fields:
        build(cls)  # the defaults are valid
        for bad in BAD_NUMBERS:
            with pytest.raises(StreamrecError) as info:
                build(cls, **{name: bad})
            message = str(info.value)
            assert "\n" not in message and name in message and "finite" in message and repr(bad) in message, message


@pytest.mark.parametrize("text, field", [
    ("display_fps = inf", "display_fps"), ("batch_wait_ms = nan", "batch_wait_ms"), ("open_timeout = nan", "open_timeout"),
    ("stride_ms = -inf", "stride_ms"), ("history_days = inf", "history_days"), ("smoothing = {alpha = nan}", "alpha"),
    ("[[cameras]]\nname = 'c'\nsource = 'x.mp4'\nstall_timeout = inf", "stall_timeout"),
])
def test_toml_nan_and_inf_are_one_line_errors(text, field):
    with pytest.raises(StreamrecError) as info:
        ServeConfig.from_sources({"source": "clip.mp4", **tomllib.loads(text)}, {})
    assert field in str(info.value) and "finite" in str(info.value)


def test_a_cameras_list_of_numbers_is_a_one_line_error(tmp_path):
    with pytest.raises(StreamrecError, match=r"^\[\[cameras\]\]: expected a table with a name and a source, got 1$"):
        ServeConfig.from_sources(tomllib.loads("cameras = [1, 2]"), {})
    cfg = tmp_path / "c.toml"
    cfg.write_text("cameras = [1, 2]\n")
    assert error_line(run_main("serve", "--config", str(cfg))) == \
        "streamrec: error: [[cameras]]: expected a table with a name and a source, got 1"


@pytest.mark.parametrize("args, expected", [
    (("serve", "--source", "x.mp4", "--stride-ms", "inf"), "--stride-ms: expected a finite number, got 'inf'"),
    (("serve", "--source", "x.mp4", "--open-timeout", "nan"), "--open-timeout: expected a finite number, got 'nan'"),
    (("serve", "--source", "x.mp4", "--history-days", "inf"), "--history-days: expected a finite number, got 'inf'"),
    (("classify", "x.mp4", "--stride", "inf"), "--stride: expected a finite number, got 'inf'"),
    (("train", "data", "--lr", "nan"), "--lr: expected a finite number, got 'nan'"),
])
def test_command_line_numbers_must_be_finite(args, expected):
    line = error_line(run_main(*args))
    assert line.endswith(expected), line


def test_toml_nan_through_the_command_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("source = 'x.mp4'\nbatch_wait_ms = nan\n")
    assert error_line(run_main("serve", "--config", str(cfg))) == \
        "streamrec: error: batch_wait_ms: expected a finite number, got nan"


def test_camera_names_are_limited_in_bytes():
    four_byte = "\U0001d400"  # MATHEMATICAL BOLD CAPITAL A: a letter, 4 bytes in UTF-8
    assert four_byte.isalnum() and len(four_byte.encode()) == 4
    with pytest.raises(StreamrecError) as info:
        CameraConfig(four_byte * 64, "x.mp4")  # 64 characters, 256 bytes: overflowed the frame header
    assert str(info.value) == f"camera name: expected at most 255 bytes as UTF-8, got 256 bytes: {four_byte * 64!r}"
    ok = CameraConfig(four_byte * 63, "x.mp4")  # 252 bytes
    assert len(ok.name.encode()) == 252
    assert CameraConfig("é" * 64, "x.mp4").name == "é" * 64  # 128 bytes
    with pytest.raises(StreamrecError, match="expected 1-64 letters"):
        CameraConfig("a" * 65, "x.mp4")


def test_allowed_hosts_from_toml_and_command_line():
    assert ServeConfig.from_sources(tomllib.loads("source = 'x.mp4'\nallowed_hosts = ['cam.lan', 'proxy:443']"),
                                    {}).allowed_hosts == ("cam.lan", "proxy:443")
    assert ServeConfig.from_sources({"source": "x.mp4"}, {"allowed_hosts": ["a.example"]}).allowed_hosts == ("a.example",)
    for bad in ("cam.lan", ["a b"], [1], ["host:port"]):
        with pytest.raises(StreamrecError, match="^allowed_hosts: expected"):
            ServeConfig.from_sources({"source": "x.mp4", "allowed_hosts": bad}, {})


LONG = "a" * 300  # a file name longer than any file system holds (255 bytes)


def test_a_source_that_is_a_fifo_is_refused_before_anything_opens_it(tmp_path, demo_clip):
    os.mkfifo(tmp_path / "cam.mp4")  # opened, it would be read forever
    line = error_line(run_main("serve", "--source", str(tmp_path / "cam.mp4"), "--model", "tiny3d", "--weights", "none"))
    assert line == f"streamrec: error: --source: expected a video file, got {tmp_path / 'cam.mp4'} (not a regular file: a FIFO)"


def test_paths_too_long_are_named_by_their_option_before_the_model_loads(tmp_path, demo_clip):
    weights = f"{tmp_path}/{LONG}.pt"
    line = error_line(run_main("serve", "--source", str(demo_clip), "--model", "tiny3d", "--weights", weights))
    assert line == (f"streamrec: error: --weights: expected DEFAULT, none or a file, got {weights!r} "
                    "(a name too long for the file system)")
    cfg = tmp_path / "gym.toml"
    cfg.write_text(f'model = "tiny3d"\nweights = "none"\ndb = "{tmp_path}/h.db"\n[[cameras]]\nname = "rack"\n'
                   f'source = "{demo_clip}"\nweights = "{weights}"\n')
    assert error_line(run_main("serve", "--config", str(cfg))).startswith(
        "streamrec: error: camera 'rack': weights: expected DEFAULT, none or a file")
    cfg.write_text(f'model = "tiny3d"\nweights = "none"\ndb = "{tmp_path}/h.db"\nsource = "{demo_clip}"\n'
                   f'[[rules]]\nname = "any"\nlabels = ["class_0"]\n[recording]\ndir = "{tmp_path}/{LONG}"\n')
    proc = run_main("serve", "--config", str(cfg))
    assert error_line(proc) == (f"streamrec: error: [recording] dir: expected a folder streamrec can write clips into, "
                                f"got '{tmp_path}/{LONG}' (a name the file system refuses: File name too long)")
    assert "preparing the model" not in proc.stderr  # refused before the address answers


@pytest.mark.slow
def test_a_camera_added_at_run_time_with_no_weights_file_or_a_fifo_is_refused_and_not_left_adding(tmp_path, demo_clip):
    from streamrec.errors import SourceError, WeightsError
    from streamrec.serve.app import LiveApp

    config = ServeConfig(model="tiny3d", weights="none", device="cpu", port=0, db=str(tmp_path / "h.db"),
                         cameras=(CameraConfig("gym", str(demo_clip)),))
    app = LiveApp(config)
    try:
        os.mkfifo(tmp_path / "fifo.mp4")
        refused = [(CameraConfig("w1", str(demo_clip), weights=f"/tmp/{LONG}.pt"), WeightsError,
                    "(a name too long for the file system)"),
                   (CameraConfig("w2", str(demo_clip), weights="/tmp/\udcff.pt"), WeightsError, "(no such file)"),
                   (CameraConfig("w3", str(tmp_path / "fifo.mp4")), SourceError, "(not a regular file: a FIFO)")]
        for cam, kind, why in refused:
            with pytest.raises(kind) as err:
                app.add_camera(cam)
            assert str(err.value).endswith(why), err.value
        assert app.adding() == [] and app.camera_names() == ["gym"]
        assert app.health()["status"] != "degraded"
        (tmp_path / "h.db").unlink()  # the history database, deleted while serving
        health = app.health()
        assert health["status"] == "degraded" and any("was deleted while in use" in r for r in health["reasons"])
    finally:
        app.close()


def test_smoothing_hold_is_bounded(tmp_path):
    from streamrec.config import HOLD_MAX, SmoothingConfig

    assert SmoothingConfig(hold=HOLD_MAX).hold == HOLD_MAX
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'source = "0"\n[smoothing]\nhold = {HOLD_MAX + 1}\n')
    assert error_line(run_main("serve", "--config", str(cfg))) == (
        f"streamrec: error: smoothing.hold: expected 1 <= hold <= {HOLD_MAX}, got {HOLD_MAX + 1}")
    cfg.write_text('source = "0"\n[smoothing]\nhold = 99999999999999999999\n')  # beyond any number an option holds
    assert error_line(run_main("serve", "--config", str(cfg))) == (
        "streamrec: error: smoothing.hold: expected a number of at most 1e9 in size (no option needs more; timers and "
        "clocks overflow beyond), got 99999999999999999999")


def test_a_backend_or_rule_group_the_command_line_would_refuse_is_refused_in_the_file_too(tmp_path):
    """Checked when the config is read, before the page is up (both failed only after the model
    loaded: the page said "preparing", then the server went)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('source = "clip.mp4"\nbackend = "nosuch"\n')
    line = error_line(run_main("serve", "--config", str(cfg)))
    assert line.startswith(f"streamrec: error: {cfg}: backend: expected one of auto, torch") and line.endswith(
        ", got 'nosuch'")
    with pytest.raises(StreamrecError, match=r"^\[\[rules\]\] 'r': groups: no group 'nosuchgroup'; expected one of "
                                             r"air and extreme sports, animals, "):
        ServeConfig.from_sources(tomllib.loads('source = "x.mp4"\n[[rules]]\nname = "r"\ngroups = ["nosuchgroup"]'), {})


@pytest.mark.parametrize("text, where", [
    ('source = "x.mp4"\nmodel = "tiny3d"', ""),
    ('[[cameras]]\nname = "a"\nsource = "x.mp4"\nmodel = "tiny3d"\nweights = "DEFAULT"', "camera 'a': "),
])
def test_a_model_without_pretrained_weights_asked_for_them_is_refused_before_loading(text, where):
    with pytest.raises(StreamrecError) as info:
        ServeConfig.from_sources(tomllib.loads(text), {})
    assert str(info.value).endswith(f"weights: {where}expected a checkpoint PATH or 'none' for tiny3d (it has no "
                                    "pretrained weights), got 'DEFAULT'")
    if not where:  # with weights of its own it starts
        assert ServeConfig.from_sources(tomllib.loads(text), {"weights": "none"}).weights == "none"


def test_an_option_spelled_with_a_dash_and_an_underscore_is_refused():
    with pytest.raises(StreamrecError, match=r"^config file: 'stall-timeout' and 'stall_timeout' are one option; "
                                             r"expected it once$"):
        ServeConfig.from_sources(tomllib.loads('source = "x.mp4"\nstall_timeout = 5\nstall-timeout = 7'), {})


@pytest.mark.parametrize("text", [
    'source = "{big}"', 'device = "{big}"', 'source = "x.mp4"\nrtsp_transport = "{big}"',
    'source = "x.mp4"\n[[rules]]\nname = ["{big}"]\nlabels = ["a"]', 'source = "x.mp4"\n[[rules]]\nname = "r"\nlabels = [5, "{big}"]',
    'source = "x.mp4"\n[[rules]]\nname = "r"\nlabels = ["a"]\nnotify = ["mqtt"]\n[notify.mqtt]\nurl = "mqtt://h"\ntopic_prefix = "+{big}"',
])
def test_an_error_about_a_huge_value_is_one_short_line(tmp_path, text):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text.replace("{big}", "b" * 1_000_000) + "\n")
    proc = run_main("serve", "--config", str(cfg), "--weights", "none")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and len(proc.stderr) < 1000, proc.stderr[:300]


@pytest.mark.parametrize("file_values, cli_values", [
    ({"camera": "gym", "cameras": [{"name": "a", "source": "x.mp4"}]}, {}),
    ({"cameras": [{"name": "a", "source": "x.mp4"}]}, {"camera": "gym"}),
])
def test_a_camera_name_without_a_source_is_refused(file_values, cli_values):
    """``camera`` names the camera of ``source``: beside [[cameras]] alone it named nothing and was
    dropped without a word."""
    with pytest.raises(StreamrecError, match=r"camera: expected it only with a source \(each \[\[cameras\]\] table has "
                                             r"its own name\), got 'gym' and no source$"):
        ServeConfig.from_sources(file_values, cli_values)
