import re
from pathlib import Path

import pytest

from streamrec.config import ServeConfig
from streamrec.configfile import load_toml
from streamrec.errors import StreamrecError

ROOT = Path(__file__).resolve().parents[1]


def test_command_line_overrides_file_and_defaults_fill_the_rest():
    cfg = ServeConfig.from_sources({"source": "a.mp4", "port": 9000, "smoothing": {"hold": 4}},
                                   {"port": 9100, "loop": None, "model": "s3d"})
    assert (cfg.source, cfg.port, cfg.model, cfg.loop, cfg.host) == ("a.mp4", 9100, "s3d", False, "127.0.0.1")
    assert (cfg.smoothing.hold, cfg.smoothing.alpha) == (4, 0.4)


@pytest.mark.parametrize("name", ["default.toml", "rtsp-camera.toml", "gym.toml", "events.toml"])
def test_shipped_configs_are_valid(name, monkeypatch):
    monkeypatch.setenv("STREAMREC_TOKEN", "t")
    cfg = ServeConfig.from_sources(load_toml(ROOT / "configs" / name), {})
    assert all(cam.source for cam in cfg.all_cameras()) and cfg.all_cameras()


def test_sports_only_from_file_or_command_line_and_per_camera(tmp_path):
    assert ServeConfig.from_sources({"source": "a.mp4"}, {}).sports_only is False
    assert ServeConfig.from_sources({"source": "a.mp4", "sports_only": True}, {}).sports_only is True
    cfg = ServeConfig.from_sources({"cameras": [{"name": "court", "source": "a.mp4"},
                                                {"name": "lobby", "source": "b.mp4", "sports_only": False}]},
                                   {"sports_only": True})
    court, lobby = (cfg.resolve(c) for c in cfg.all_cameras())
    assert (court.sports_only, lobby.sports_only) == (True, False)


def test_token_from_environment_allows_a_public_bind(monkeypatch):
    monkeypatch.setenv("STREAMREC_TOKEN", "abc")
    assert ServeConfig.from_sources({}, {"source": "0", "host": "0.0.0.0"}).token == "abc"
    monkeypatch.delenv("STREAMREC_TOKEN")
    with pytest.raises(StreamrecError, match="needs a token"):
        ServeConfig.from_sources({}, {"source": "0", "host": "0.0.0.0"})
    assert ServeConfig.from_sources({}, {"source": "0", "host": "0.0.0.0", "insecure": True}).insecure


@pytest.mark.parametrize("values,match", [
    ({"port": 70000}, "config file: port: "), ({"stride_ms": -1}, "config file: stride_ms: "),
    ({"smoothing": {"alpha": 2}}, "alpha"), ({"smoothing": {"nope": 1}}, "nope"),
    ({"threads": 10**20}, "threads: expected a number of at most 1e9 in size .*, got 1000"),
    ({"threads": 0}, "config file: threads: expected 1..4096, got 0"),  # torch takes a C int: 10**20 was a traceback
])
def test_bad_values_name_the_option(values, match):
    with pytest.raises(StreamrecError, match=match):
        ServeConfig.from_sources({"source": "a.mp4", **values}, {})


@pytest.mark.parametrize("values, message", [
    ({"loop": "no"}, "loop: expected true or false, got 'no'"),  # a non-empty string would have been true
    ({"threads": 2.5}, "threads: expected an integer, got 2.5"),
    ({"port": True}, "port: expected an integer, got True"),
    ({"open_timeout": "x"}, "open_timeout: expected a number, got 'x'"),
    ({"host": 1}, "host: expected a string, got 1"),
    ({"token": 5}, "token: expected a string, got an int"),
    ({"smoothing": {"hold": True}}, "smoothing.hold: expected an integer, got True"),
    ({"cameras": [{"name": "a", "source": "a.mp4", "stall_timeout": "x"}]},
     "camera 'a': stall_timeout: expected a number, got 'x'"),
    ({"cameras": [{"name": 1, "source": "a.mp4"}]}, "[[cameras]] name: expected a string, got 1"),
])
def test_a_value_of_the_wrong_type_is_refused_with_its_name(values, message):
    with pytest.raises(StreamrecError) as info:
        ServeConfig.from_sources({"source": "a.mp4", **values}, {})
    assert str(info.value) == message


def test_numbers_that_are_whole_are_accepted_where_a_number_is_expected():
    cfg = ServeConfig.from_sources({"source": 0, "open_timeout": 3, "stride_ms": 250, "smoothing": {"alpha": 1}}, {})
    assert (cfg.source, cfg.open_timeout, cfg.stride_ms, cfg.smoothing.alpha) == ("0", 3, 250, 1)


def test_query_text_is_converted_to_the_camera_fields():
    from streamrec.config import CameraConfig
    from streamrec.validate import from_text

    fields = from_text(CameraConfig, {"name": "a", "source": "0", "loop": "Yes", "open_timeout": "2.5",
                                      "sports_only": "off"})
    assert CameraConfig.from_dict(fields) == CameraConfig("a", "0", loop=True, open_timeout=2.5, sports_only=False)
    for text in ("nan", "inf", "", "2s", "1_000", "\u0663", "0x10", "Infinity", "1e99999"):
        with pytest.raises(StreamrecError, match=f"open_timeout: expected a number, got {re.escape(repr(text))}"):
            from_text(CameraConfig, {"open_timeout": text})


@pytest.mark.parametrize("option", ["open_timeout", "stall_timeout"])
@pytest.mark.parametrize("text", ["0", "-0", "-1", "1e-400", "86401", "1e308", "9" * 5000, "-" + "9" * 5000])
def test_absurd_camera_timeouts_are_one_short_line_naming_them(option, text):
    from streamrec.config import CameraConfig
    from streamrec.validate import from_text

    with pytest.raises(StreamrecError) as info:
        CameraConfig.from_dict(from_text(CameraConfig, {"name": "n" * 5000, "source": "0", option: text}))
    message = str(info.value)
    assert len(message) < 200 and "\n" not in message and ("name" in message or option in message)
    with pytest.raises(StreamrecError, match=f"^(camera 'a': )?{option}: expected ") as info:
        CameraConfig.from_dict(from_text(CameraConfig, {"name": "a", "source": "0", option: text}))
    assert len(str(info.value)) < 200
    assert getattr(CameraConfig.from_dict(from_text(CameraConfig, {"name": "a", "source": "0", option: "86400"})),
                   option) == 86400


def test_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "gym.toml").write_text(
        'source = "clips/lobby.mp4"\nweights = "models/gym.pt"\ndb = "history.db"\n'
        '[[cameras]]\nname = "court"\nsource = "../court.mp4"\nweights = "none"\n'
        '[[cameras]]\nname = "door"\nsource = "rtsp://10.0.0.5/s1"\n'
        '[[cameras]]\nname = "desk"\nsource = "0"\n'
        '[[cameras]]\nname = "home"\nsource = "~/clips/x.mp4"\n')
    monkeypatch.chdir(tmp_path / "..")  # started anywhere else
    d = load_toml(site / "gym.toml")
    assert (d["source"], d["weights"], d["db"]) == (str(site / "clips/lobby.mp4"), str(site / "models/gym.pt"),
                                                    str(site / "history.db"))
    assert [c["source"] for c in d["cameras"]] == [str(tmp_path / "court.mp4"), "rtsp://10.0.0.5/s1", "0",
                                                   str(Path.home() / "clips/x.mp4")]
    assert d["cameras"][0]["weights"] == "none"
    (site / "pg.toml").write_text('source = "/dev/video2"\nweights = "DEFAULT"\ndb = "postgresql://u@db/streamrec"\n')
    assert load_toml(site / "pg.toml") == {"source": "/dev/video2", "weights": "DEFAULT", "db": "postgresql://u@db/streamrec"}


def test_notification_ca_files_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from streamrec.errors import StreamrecError
    from streamrec.event_config import NotifyConfig

    site = tmp_path / "site"
    (site / "certs").mkdir(parents=True)
    (site / "gym.toml").write_text('[notify.webhook]\nurl = "https://ha.local/hook"\nca_file = "certs/home-ca.pem"\n'
                                   '[notify.mqtt]\nurl = "mqtts://ha.local"\nca_file = "/etc/ssl/certs/ca-certificates.crt"\n')
    monkeypatch.chdir(tmp_path)
    d = load_toml(site / "gym.toml")
    assert d["notify"]["webhook"]["ca_file"] == str(site / "certs/home-ca.pem")
    assert d["notify"]["mqtt"]["ca_file"] == "/etc/ssl/certs/ca-certificates.crt"  # an absolute path stays itself
    with pytest.raises(StreamrecError) as err:  # not there (yet): one line naming the key, the file and why
        NotifyConfig.from_dict(d["notify"])
    assert str(err.value) == (f"[notify.webhook] ca_file: expected a PEM file of CA certificates, got "
                              f"{str(site / 'certs/home-ca.pem')!r} (No such file or directory)")


@pytest.mark.parametrize("name", ["default.toml", "gym.toml", "events.toml"])
def test_shipped_configs_find_their_clips_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = ServeConfig.from_sources(load_toml(ROOT / "configs" / name), {})
    files = [cam.source for cam in cfg.all_cameras() if "://" not in cam.source]
    assert files and all(Path(f).is_file() for f in files), files


@pytest.mark.parametrize("threads", [0, 4097, 10**20])
def test_classify_threads_beyond_a_c_int_are_refused_first(threads):
    from streamrec.offline.classify import check_options

    with pytest.raises(StreamrecError, match=f"--threads: expected 1..4096, got {threads}"):
        check_options(stride=1.0, batch_size=None, top=5, threads=threads)


@pytest.mark.parametrize("key, text", [
    ("[recording] dir", '[recording]\ndir = "~nosuchuser-streamrec/clips"\n'),
    ("db", 'db = "~nosuchuser-streamrec/h.db"\n'),
    ("source", '[[cameras]]\nname = "a"\nsource = "~nosuchuser-streamrec/a.mp4"\n'),
    ("[notify.webhook] ca_file", '[notify.webhook]\nurl = "https://h/x"\nca_file = "~nosuchuser-streamrec/ca.pem"\n'),
])
def test_a_home_of_no_such_user_is_refused_not_joined_to_the_config_folder(key, text, tmp_path):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(StreamrecError) as err:
        load_toml(tmp_path / "c.toml")
    path = re.search(r'"(~[^"]+)"', text)[1]
    assert str(err.value) == f"{key}: expected a path, got {path!r} (no such user: ~nosuchuser-streamrec)"


@pytest.mark.parametrize("blank", ["", " "])
def test_an_empty_clips_folder_is_refused_not_read_as_the_working_folder(blank, tmp_path):
    from streamrec.event_config import RecordingConfig

    (tmp_path / "c.toml").write_text(f'[recording]\ndir = "{blank}"\n')
    with pytest.raises(StreamrecError) as err:
        RecordingConfig.from_dict(load_toml(tmp_path / "c.toml")["recording"])
    assert str(err.value) == f"[recording] dir: expected a folder's path, got {blank!r}"


def refusal_of(text: str, tmp_path) -> str:
    """The one-line error of a config file holding ``text`` beside a source."""
    (tmp_path / "c.toml").write_text(text + "\n")
    with pytest.raises(StreamrecError) as err:
        ServeConfig.from_sources({"source": "a.mp4", **load_toml(tmp_path / "c.toml")}, {})
    return str(err.value)


@pytest.mark.parametrize("text, message", [
    ('model = ""', "model: expected a value, got ''"),
    ('source = ""\n[[cameras]]\nname = "a"\nsource = "b.mp4"', "source: expected a value, got ''"),
    ('weights = " "', "weights: expected a value, got ' '"),
    ('db = ""', "db: expected a value, got ''"),
    ('backend = ""', "backend: expected a value, got ''"),
    ('token = ""', "config file: token: expected visible characters without spaces (a blank or invisible token would let anyone "
                   "in), got an empty token"),
    ('rtsp_transport = "tpc"', "rtsp_transport: expected tcp or udp, got 'tpc'"),
    ('host = " 127.0.0.1"', "host: expected a name without blanks around it, got ' 127.0.0.1'"),
    ('backend = "openvino "', "backend: expected a name without blanks around it, got 'openvino '"),
    ('[[cameras]]\nname = "a"\nsource = "b.mp4"\nweights = ""', "camera 'a': weights: expected a value, got ''"),
    ('[[cameras]]\nname = "a"\nsource = "b.mp4"\nrtsp_transport = "http"',
     "camera 'a': rtsp_transport: expected tcp or udp, got 'http'"),
    ('[smoothing]\nalpah = 0.3', "[smoothing]: unknown option 'alpah'; expected one of alpha, hold, margin, threshold"),
    ('smoothing = 3', "[smoothing]: expected a table, got int"),
])
def test_a_blank_or_unknown_text_option_is_refused_not_read_as_the_default(text, message, tmp_path):
    assert refusal_of(text, tmp_path) == message


@pytest.mark.parametrize("file_values, cli_values, message", [
    ({"port": 70000}, {}, "gym.toml: port: expected 0..65535, got 70000"),
    ({"port": 8000}, {"port": 70000}, "--port: expected 0..65535, got 70000"),  # the command line's value is the bad one
    ({"stall_timeout": -1}, {}, "gym.toml: stall_timeout: expected 0.1 to 86400 seconds, got -1"),
    ({}, {"open_timeout": 0.0}, "--open-timeout: expected 0.1 to 86400 seconds, got 0.0"),
    ({}, {"stall_timeout": 0.01}, "--stall-timeout: expected 0.1 to 86400 seconds, got 0.01"),  # not "camera 'default'"
    ({"open_timeout": 100000}, {}, "gym.toml: open_timeout: expected 0.1 to 86400 seconds, got 100000"),
    ({"header_timeout": 1e-300}, {}, "gym.toml: header_timeout: expected 0.5 to 86400 seconds (shorter cuts off every "
                                     "browser), got 1e-300"),
    ({"device": "tpu"}, {}, "gym.toml: device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ({"history_days": 0.5}, {"history_days": 0}, "--history-days: expected > 0 and at most 36500, got 0"),
    ({"host": "0.0.0.0"}, {}, "gym.toml: host: binding 0.0.0.0 (not a loopback address) needs a token (--token or "
                              "STREAMREC_TOKEN), or --insecure to serve without one"),
    ({}, {}, "--source: expected a webcam index, an rtsp:// URL or a video file (or [[cameras]] in --config), got nothing"),
])
def test_a_bad_value_is_named_where_the_user_wrote_it(file_values, cli_values, message, monkeypatch):
    monkeypatch.delenv("STREAMREC_TOKEN", raising=False)
    with pytest.raises(StreamrecError) as err:
        ServeConfig.from_sources({"source": "a.mp4", **file_values} if file_values or cli_values else {}, cli_values,
                                 file_label="gym.toml")
    assert str(err.value) == message


def test_a_config_that_is_no_regular_file_or_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(StreamrecError) as err:
        load_toml(fifo)
    assert str(err.value) == f"--config: expected a TOML file, got {fifo} (not a regular file: a FIFO)"
    locked = tmp_path / "locked.toml"
    locked.write_text('port = 8000\n')
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads any file: the refusal the kernel gives another user, given here
        real_open = Path.open

        def refused(self, *args, **kwargs):
            if self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(StreamrecError) as err:
        load_toml(locked)
    assert str(err.value) == f"--config: cannot read {locked} (permission denied)"


@pytest.mark.parametrize("values", [{"display_width": 10**9}, {"display_width": 16}, {"display_fps": 1e6},
                                    {"display_fps": 0.0}])
def test_a_display_size_or_rate_beyond_use_is_refused(values):
    with pytest.raises(StreamrecError) as err:
        ServeConfig.from_sources({"source": "a.mp4", **values}, {})
    assert str(err.value) == ("display_fps, display_width: expected 0 < fps <= 60.0 and width 32..3840 pixels, got "
                              f"{values.get('display_fps', 10.0)}, {values.get('display_width', 480)}")


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "c.toml").write_bytes(b"\xef\xbb\xbfport = 9000\n")
    assert load_toml(tmp_path / "c.toml") == {"port": 9000}


@pytest.mark.parametrize("value", ["[" * 500 + "1" + "]" * 500, "{x=" * 400 + "1" + "}" * 400, "[" * 33 + "]" * 33,
                                   "[" * 20 + "{x=" * 13 + "1" + "}" * 13 + "]" * 20])
def test_a_config_nested_deeper_than_any_option_is_one_line_at_every_command(value, tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text(f"a = {value}\n")
    with pytest.raises(StreamrecError) as err:
        load_toml(path)
    assert str(err.value) == f"--config {path}: not valid TOML: arrays or tables nested too deep"
    path.write_text("a = " + "[" * 31 + "1" + "]" * 31 + "\n")
    assert load_toml(path)["a"] == [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]


def test_a_table_that_lacks_what_a_camera_needs_is_shown_by_its_keys_alone():
    for cameras, shown in (([{"name": "gym", "url": "rtsp://cam/x", "token": "SECRET1"}], "a table of 'name', 'url', 'token'"),
                           ([[[[[[1]]]]]], "a list of 1 item"), (["[" * 300], "'" + "[" * 79 + "...")):
        with pytest.raises(StreamrecError) as err:
            ServeConfig.from_sources({"cameras": cameras}, {})
        assert str(err.value).endswith(f", got {shown}") and "SECRET1" not in str(err.value)


def test_rule_names_differing_only_in_blanks_around_them_are_refused():
    from streamrec.event_config import RuleConfig

    for name in (" lift", "lift ", "lift\u00a0"):
        with pytest.raises(StreamrecError) as err:
            RuleConfig(name=name, labels=("x",))
        assert str(err.value) == f"[[rules]] name: expected 1-64 bytes of text without blanks around it, got {name!r}"


@pytest.mark.parametrize("text, key", [('[recording]\ndir = "ev\\u0000ents"', "[recording] dir"),
                                       ('db = "h\\u0000.db"', "db"), ('source = "a\\u0000.mp4"', "source"),
                                       ('source = "rtsp://admin:hunter2@cam/live\\u0000"', "source"),
                                       ('db = "postgresql://u:hunter2@db/x\\u0000"', "db"),
                                       ('[[cameras]]\nname = "c"\nsource = "rtsp://admin:hunter2@cam/\\u0000"', "source")])
def test_a_path_with_a_nul_is_refused_when_the_config_is_read(text, key, tmp_path):
    (tmp_path / "c.toml").write_text(text + "\n")
    with pytest.raises(StreamrecError) as err:
        load_toml(tmp_path / "c.toml")
    assert str(err.value).startswith(f"{key}: expected a path or URL, got ") and str(err.value).endswith("(a NUL character)")
    assert "hunter2" not in str(err.value)  # a URL's password stays hidden
    from streamrec.event_config import RecordingConfig

    with pytest.raises(StreamrecError, match=r"^\[recording\] dir: expected a folder's path"):
        RecordingConfig(dir="ev\0ents")


@pytest.mark.parametrize("toml, line", [
    ('source = "nope.mp4"', "{cfg}: source: file not found: {dir}/nope.mp4"),
    ('source = "{clip}"\ndb = "missing/h.db"', "{cfg}: db {dir}/missing/h.db: cannot open the history database: "
                                                "unable to open database file"),
    ('source = "{clip}"\nbackend = "tensorrt"', "{cfg}: backend: expected one of auto, torch, torchscript, onnxruntime, "
                                                "openvino, openvino-bf16, openvino-int8, compile, got 'tensorrt'"),
    ('[[cameras]]\nname = "a"\nsource = "{clip}"\nmodel = "resnet"', "{cfg}: camera 'a': model: expected one of r3d_18, "
                                                                     "mc3_18, r2plus1d_18, s3d, mvit_v1_b, mvit_v2_s, "
                                                                     "swin3d_t, swin3d_s, swin3d_b, tiny3d, got 'resnet'"),
])
def test_what_serve_finds_wrong_after_reading_the_config_names_the_files_key(tmp_path, demo_clip, toml, line):
    from conftest import error_line, run_main

    cfg = tmp_path / "gym.toml"
    cfg.write_text('weights = "none"\nmodel = "tiny3d"\n' + toml.format(clip=demo_clip) + "\n")
    got = error_line(run_main("serve", "--config", str(cfg), "--port", "0"))
    assert got == "streamrec: error: " + line.format(cfg=cfg, dir=tmp_path)


def test_a_value_the_command_line_set_keeps_its_flag(tmp_path):
    from conftest import error_line, run_main

    cfg = tmp_path / "gym.toml"
    cfg.write_text('source = "nope.mp4"\nweights = "none"\nmodel = "tiny3d"\n')
    got = error_line(run_main("serve", "--config", str(cfg), "--source", str(tmp_path / "other.mp4"), "--port", "0"))
    assert got == f"streamrec: error: --source: file not found: {tmp_path}/other.mp4"


@pytest.mark.parametrize("file_values, message, renamed", [
    ({"cameras": [{"name": "a", "source": "/c/clip.mp4"}, {"name": "b", "source": "/c/clip.mp4.bak"}]},
     "--source: file not found: /c/clip.mp4.bak", "gym.toml: camera 'b': source: file not found: /c/clip.mp4.bak"),
    ({"source": "/c/clip.mp4", "cameras": [{"name": "door", "source": "rtsp://admin:hunter2@10.0.0.9/s"}]},
     "--source: cannot connect to rtsp://admin:***@10.0.0.9/s: Connection refused",
     "gym.toml: camera 'door': source: cannot connect to rtsp://admin:***@10.0.0.9/s: Connection refused"),
    ({"model": "tiny3d", "cameras": [{"name": "a", "model": "tiny3d"}]}, "--model: loading failed",
     "--model: loading failed"),  # set in two places, the message does not say which: left as it is
    ({"device": "cuda:9"}, "--device: cuda:9 is not available", "gym.toml: device: cuda:9 is not available"),
])
def test_a_later_error_names_the_place_in_the_file_whose_value_it_shows(file_values, message, renamed):
    from streamrec.config import where_written
    from streamrec.errors import OptionError

    assert str(where_written(StreamrecError(message), file_values, {}, "gym.toml")) == renamed
    option = OptionError(("device",), "cuda:9 is not available")  # rebuilt as a plain error, not with OptionError's arguments
    assert str(where_written(option, {"device": "cuda:9"}, {}, "gym.toml")) == "gym.toml: device: cuda:9 is not available"


@pytest.mark.parametrize("text, message", [
    ('[notify.webhook]\nurl = "http://h/x"\nsecret = ["sekritXYZ"]', "[notify.webhook] secret: expected a string, got a list"),
    ('[notify.webhook]\nurl = "http://h/x"\nsecret = 12345678', "[notify.webhook] secret: expected a string, got an int"),
    ('token = 12345678', "token: expected a string, got an int"),
])
def test_a_secret_of_the_wrong_type_is_named_not_shown(text, message, tmp_path):
    assert refusal_of(text, tmp_path) == message
