"""Bad input: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, error_line, make_motion_dataset, run_cli, run_main, streamrec_cmd, write_video


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("streamrec: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_missing_file():
    one_line_error(run_main("serve", "--source", "/no/such/clip.mp4", "--weights", "none"), "file not found", "/no/such/clip.mp4")


def test_file_that_is_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("hello, I am not a video\n" * 100)
    one_line_error(run_main("serve", "--source", str(p), "--weights", "none"), "not a readable video file")


def test_a_clip_that_is_not_a_video_is_named_in_bench_before_anything_is_measured(tmp_path):
    (tmp_path / "notes.mp4").write_text("hello, I am not a video\n" * 100)
    for option, given in (("--clips", str(tmp_path)), ("--clip", str(tmp_path / "notes.mp4"))):
        line = one_line_error(run_main("bench", "--models", "tiny3d", option, given),
                              "not a readable video file", str(tmp_path / "notes.mp4"))
        assert line.startswith(f"streamrec: error: {option}: "), line


@pytest.mark.slow
def test_unreachable_rtsp_url_after_bounded_timeout():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("serve", "--source", f"rtsp://user:pw@127.0.0.1:{port}/stream", "--weights", "none",
                   "--open-timeout", "3", timeout=60)
    line = one_line_error(proc, "cannot connect to", f"127.0.0.1:{port}")
    assert "pw" not in line  # the password is hidden


def test_unknown_model():
    one_line_error(run_main("serve", "--source", "x.mp4", "--model", "resnet9000"), "--model", "resnet9000")


@pytest.mark.slow
def test_checkpoint_for_another_model(tmp_path, demo_clip):
    import torch

    from streamrec.models.registry import build_model

    p = tmp_path / "w.pth"
    torch.save(build_model("tiny3d", num_classes=400).state_dict(), p)
    one_line_error(run_main("serve", "--source", str(demo_clip), "--weights", str(p)),
                   "does not fit model r2plus1d_18")


def test_sports_only_with_a_model_without_kinetics_classes(demo_clip):
    one_line_error(run_main("serve", "--source", str(demo_clip), "--weights", "none",
                           "--model", "tiny3d", "--sports-only"), "--sports-only", "no Kinetics sport class")


def test_port_already_in_use(demo_clip):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(run_main("serve", "--source", str(demo_clip), "--weights", "none",
                               "--model", "tiny3d", "--port", str(port)), f"--port {port}", "cannot listen")


@pytest.mark.slow
def test_offline_default_weights(tmp_path, demo_clip):
    proc = run_main("serve", "--source", str(demo_clip),
                   env={"TORCH_HOME": str(tmp_path), "STREAMREC_OFFLINE": "1"})
    one_line_error(proc, "r2plus1d_18-", str(tmp_path / "hub" / "checkpoints"), "copy it to")


def test_public_bind_needs_a_token():
    one_line_error(run_main("serve", "--source", "x.mp4", "--host", "0.0.0.0"), "--token", "--insecure")


def test_bad_config_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("source = 'a.mp4'\nwibble = 3\n")
    one_line_error(run_main("serve", "--config", str(p)), "unknown option 'wibble'")
    p.write_text("source = [unclosed\n")
    one_line_error(run_main("serve", "--config", str(p)), "not valid TOML")
    p.write_bytes(b"\xff\xfe\x00binary")
    one_line_error(run_main("serve", "--config", str(p)), "not valid TOML: not UTF-8 text")
    one_line_error(run_main("serve", "--config", str(tmp_path)), f"--config: expected a TOML file, got a directory: {tmp_path}")


def test_unknown_argument():
    one_line_error(run_main("serve", "--frobnicate"), "unrecognized arguments")


def test_the_installed_command_exits_2_with_one_line_on_stderr():
    """The other tests here call ``main(argv)`` in-process; this one runs the console script pip
    installed (``entry``, which ends the process with ``os._exit``) and reads its real exit status."""
    script = Path(sys.executable).parent / "streamrec"
    assert script.is_file(), f"{script}: not installed (pip install -e .)"
    proc = subprocess.run([str(script), "serve", "--frobnicate"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr == "streamrec: error: streamrec serve: unrecognized arguments: --frobnicate (see streamrec serve --help)\n"
    assert proc.stdout == ""


def test_unknown_device_before_the_model_loads(demo_clip):
    for cmd in (["serve", "--source", str(demo_clip)], ["classify", str(demo_clip)]):
        proc = run_main(*cmd, "--weights", "none", "--device", "tpu")
        one_line_error(proc, "--device", "expected auto, cpu, cuda or cuda:N, got 'tpu'")
        assert "random weights" not in proc.stderr  # refused before loading anything


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_motion_dataset(root, per_class=2, valid=1, seconds=1.2)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from streamrec.models.registry import build_model, make_checkpoint, model_spec

    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    net = build_model("tiny3d", num_classes=3)
    torch.save(make_checkpoint(net, model="tiny3d", classes=["a", "b", "c"], spec=model_spec("tiny3d")), path)
    return path


# every option that writes a file, with the rest of a command that would otherwise run
OUTPUTS = [
    ("--out", ["classify", "{clip}", "--model", "tiny3d", "--weights", "none", "--format", "json"], "t.json"),
    ("--plot", ["classify", "{clip}", "--model", "tiny3d", "--weights", "none"], "t.png"),
    ("--csv", ["dataset", "{data}"], "c.csv"),
    ("--sheet", ["dataset", "{data}"], "s.png"),
    ("--out", ["train", "{data}", "--model", "tiny3d", "--weights", "none", "--epochs", "1"], "m.pt"),
    ("--plot", ["lr-find", "{data}", "--model", "tiny3d", "--weights", "none"], "lr.png"),
    ("--confusion", ["evaluate", "{data}/valid", "--weights", "{ckpt}"], "c.png"),
    ("--out", ["export", "{ckpt}"], "m.ts"),
]


@pytest.mark.parametrize("option, cmd, name", OUTPUTS, ids=[f"{c[0]} {o}" for o, c, _ in OUTPUTS])
def test_an_output_in_a_missing_folder_is_refused_before_the_work(option, cmd, name, tmp_path, demo_clip,
                                                                     small_dataset, checkpoint):
    values = {"clip": demo_clip, "data": small_dataset, "ckpt": checkpoint}
    missing = tmp_path / "no-such-folder"
    proc = run_main(*[a.format(**values) for a in cmd], option, str(missing / name))
    one_line_error(proc, f"{option} {missing / name}: the folder {missing} does not exist")
    assert proc.stdout == ""  # no table, catalog or "wrote": nothing ran
    assert "random weights" not in proc.stderr and "epoch" not in proc.stderr  # no model was loaded


@pytest.mark.slow
def test_a_write_that_fails_gives_one_line_and_leaves_no_file(tmp_path, checkpoint):
    """A disk that fills up, as the file-size limit makes it: torch.jit.save's own writer used to
    abort the process (SIGABRT) and leave half a file."""
    out = tmp_path / "m.ts"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: writes fail with EFBIG

    proc = subprocess.run(streamrec_cmd("export", str(checkpoint), "--out", str(out)), capture_output=True,
                          text=True, timeout=120, cwd=ROOT, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"streamrec: error: {out}: File too large"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needle", [
    (["bench", "--models", "tiny3d,foo"], "--models: expected names from r3d_18, "),
    (["bench", "--models", "tiny3d", "--batches", "4,0"], "--batches: expected comma-separated batch sizes 1..4096, got '4,0'"),
    (["bench", "--models", "tiny3d", "--batches", "x"], "got 'x'"),
])
def test_bench_options_are_checked_before_any_measurement(args, needle):
    proc = run_main(*args)
    one_line_error(proc, needle)
    assert proc.stdout == ""  # no table: nothing was measured


def test_evaluate_batch_size(small_dataset, checkpoint):
    one_line_error(run_main("evaluate", str(small_dataset / "valid"), "--weights", str(checkpoint), "--batch-size", "0"),
                   "--batch-size: expected >= 1, got 0")


def test_cluster_address_that_nobody_answers_fails_at_once(tmp_path, demo_clip):
    """ray.init retries such an address for minutes; the probe before it takes one connect."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[cameras]]\nname = "a"\nsource = "{demo_clip}"\n')
    one_line_error(run_main("cluster", "--config", str(cfg), "--address", f"127.0.0.1:{port}"),
                   f"--address 127.0.0.1:{port}: no Ray cluster answers there within 5 s (Connection refused)")


def test_a_network_source_that_answers_with_something_else(tmp_path):
    import functools
    import http.server
    import threading

    (tmp_path / "page.mp4").write_text("<html>not a video</html>\n" * 50)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        one_line_error(run_main("serve", "--source", f"{base}/page.mp4", "--weights", "none", "--model", "tiny3d"),
                       f"--source: not a video stream at {base}/page.mp4")
        one_line_error(run_main("serve", "--source", f"{base}/gone.mp4", "--weights", "none", "--model", "tiny3d"),
                       f"--source: cannot connect to {base}/gone.mp4: Server returned 404 Not Found")
    finally:
        server.shutdown()
        server.server_close()


def test_an_output_that_is_the_input_is_refused(tmp_path, demo_clip, checkpoint):
    import shutil

    clip = tmp_path / "clip.mp4"
    shutil.copy(demo_clip, clip)
    before = clip.read_bytes()
    one_line_error(run_main("classify", str(clip), "--model", "tiny3d", "--weights", "none", "--out", str(clip)),
                   f"--out {clip}: that is the input file {clip}")
    ckpt = tmp_path / "m.pt"
    shutil.copy(checkpoint, ckpt)
    one_line_error(run_main("export", str(ckpt), "--out", str(ckpt)), f"--out {ckpt}: that is the input file {ckpt}")
    assert clip.read_bytes() == before and ckpt.read_bytes() == checkpoint.read_bytes()


def test_cluster_dashboard_port_in_use_fails_before_the_cluster_starts(tmp_path, demo_clip):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[cameras]]\nname = "a"\nsource = "{demo_clip}"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # --address local would start a Ray instance: the port is checked before, so none starts
        proc = run_main("cluster", "--config", str(cfg), "--address", "local", "--port", str(port))
    one_line_error(proc, f"--port {port}: cannot listen on 127.0.0.1:")
    assert "ray" not in proc.stderr.lower().replace("streamrec", "")


# -- reading the history: values that start with "-", the database a config names --------------

def seeded_history(db) -> None:
    """A history database with one segment and one closed event, both an hour old, of camera 'court-1'."""
    import time

    from streamrec.events.store import Event, EventStore
    from streamrec.live.history import HistoryStore, Segment

    now = time.time()
    store = HistoryStore(str(db))
    store.add(Segment("court-1", "arm wrestling", now - 3600, now - 3590, 0.8, 0.9, 20))
    store.close()  # writes what is queued
    events = EventStore(str(db))
    ev = Event("1764770000-1a2b3c4d", "wrestle", "court-1", "arm wrestling", now - 3600, 0.9, 0.8)
    events.opened(ev, now=now - 3600)
    ev.end_ts = now - 3590
    events.closed(ev, now=now - 3590)
    events.close()


@pytest.mark.parametrize("args", [
    ("history", "--since", "-2h"), ("history", "--since", "-1d", "--until", "-1m"), ("history", "--sin", "-2h"),
    ("events", "--since", "-1d"), ("events", "--until", "-10m"), ("history", "--since=-2h"),
])
def test_relative_times_are_read_as_values_with_or_without_equals(args, tmp_path):
    db = tmp_path / "h.db"
    seeded_history(db)
    proc = run_main(*args, "--db", str(db), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert "court-1" in proc.stdout and "arm wrestling" in proc.stdout, proc.stdout


def test_a_negative_value_of_another_option_reaches_its_own_check():
    one_line_error(run_main("history", "--limit", "-3", "--db", ":memory:"), "--limit")


def test_a_bad_relative_time_is_one_line():
    one_line_error(run_main("events", "--since", "-1x", "--db", ":memory:"), "--since", "'-1x'")


@pytest.mark.parametrize("command", ["events", "history"])
def test_reading_commands_take_the_database_of_the_config(command, tmp_path):
    (tmp_path / "var").mkdir()
    seeded_history(tmp_path / "var" / "gym.db")
    config = tmp_path / "gym.toml"
    config.write_text('db = "var/gym.db"\n')  # relative to the config file
    proc = run_main(command, "--config", str(config), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert '"court-1"' in proc.stdout, proc.stdout
    other = tmp_path / "other.db"  # an explicit --db wins over the config's
    seeded_history(other)
    import sqlite3

    with sqlite3.connect(other) as c:
        c.execute("UPDATE segments SET camera = 'door'") if command == "history" else \
            c.execute("UPDATE events SET camera = 'door'")
    proc = run_main(command, "--config", str(config), "--db", str(other), "--format", "json")
    assert proc.returncode == 0 and '"door"' in proc.stdout and '"court-1"' not in proc.stdout, proc.stdout


@pytest.mark.parametrize("command", ["events", "history"])
@pytest.mark.parametrize("lines", ['host = "0.0.0.0"\nport = 8000\n', 'camera = "court-1"\n'],
                         ids=["a LAN config whose token serve takes from the environment", "a camera with no source"])
def test_reading_commands_need_neither_a_token_nor_a_source_from_the_config(command, lines, tmp_path, monkeypatch):
    monkeypatch.delenv("STREAMREC_TOKEN", raising=False)
    seeded_history(tmp_path / "gym.db")
    config = tmp_path / "gym.toml"
    config.write_text(f'db = "gym.db"\n{lines}')
    proc = run_main(command, "--config", str(config), "--format", "json")
    assert proc.returncode == 0 and '"court-1"' in proc.stdout, proc.stderr


def test_an_event_of_the_configs_database_is_found_by_its_id(tmp_path):
    seeded_history(tmp_path / "gym.db")
    config = tmp_path / "gym.toml"
    config.write_text('db = "gym.db"\n')
    proc = run_main("events", "1764770000-1a2b3c4d", "--config", str(config), "--format", "csv")
    assert proc.returncode == 0 and "1764770000-1a2b3c4d,wrestle,court-1" in proc.stdout, proc.stderr
    one_line_error(run_main("events", "1764770000-1a2b3c4d", "--out", str(tmp_path / "c.mp4"), "--config", str(config)),
                   "has no clip")


@pytest.mark.parametrize("name, data, message", [
    ("e.mp4.part", b"\0" * 64, "the clip of '1764770000-1a2b3c4d' is still being recorded"),  # open, or in its post-roll
    ("e.mp4", b"", "the clip of '1764770000-1a2b3c4d' is an empty file"),
])
def test_a_clip_being_recorded_or_empty_is_not_copied(tmp_path, name, data, message):
    import sqlite3

    seeded_history(tmp_path / "gym.db")
    with sqlite3.connect(tmp_path / "gym.db") as c:
        c.execute("UPDATE events SET clip = 'court-1/e.mp4' WHERE id = '1764770000-1a2b3c4d'")
    (tmp_path / "rec" / "court-1").mkdir(parents=True)
    (tmp_path / "rec" / "court-1" / name).write_bytes(data)
    config = tmp_path / "gym.toml"
    config.write_text(f'db = "gym.db"\n[recording]\ndir = "{tmp_path / "rec"}"\n')
    one_line_error(run_main("events", "1764770000-1a2b3c4d", "--out", str(tmp_path / "c.mp4"), "--config", str(config)),
                   message)
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.parametrize("form", ["table", "csv", "json"])
@pytest.mark.parametrize("command, table, column, value, message", [
    ("events", "events", "peak_score", "abc", "an event of the events database (1764770000-1a2b3c4d): its peak_score is "
                                              "'abc'; expected a finite number"),
    ("events", "events", "start_ts", "noon", "its start_ts is 'noon'; expected a finite number"),
    ("history", "segments", "mean_score", "zz", "a segment of the history database: its mean_score is 'zz'; "
                                                "expected a finite number"),
    ("history", "segments", "windows", 2.5, "its windows is 2.5; expected an integer"),
])
def test_a_row_another_program_wrote_is_one_line_not_a_traceback(tmp_path, form, command, table, column, value,
                                                                 message):
    """SQLite keeps a text in a number column: the listing stops with what is wrong, never prints it as a number."""
    import sqlite3

    seeded_history(tmp_path / "h.db")
    with sqlite3.connect(tmp_path / "h.db") as c:
        c.execute(f"UPDATE {table} SET {column} = ?", (value,))
    proc = run_main(command, "--db", str(tmp_path / "h.db"), "--format", form)
    one_line_error(proc, message, "(a row not written by streamrec?)")


@pytest.mark.parametrize("clip", ["SECRET", "../secret.mp4", "court-1/../../secret.mp4", "court-1/link.mp4"])
def test_a_clip_named_outside_the_recording_folder_is_never_copied(tmp_path, clip):
    """A row written by hand or a database from elsewhere: ``--out`` copies clips, not any file."""
    import sqlite3

    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not a clip of ours")
    (tmp_path / "rec" / "court-1").mkdir(parents=True)
    (tmp_path / "rec" / "court-1" / "link.mp4").symlink_to(secret)
    clip = clip.replace("SECRET", str(secret))
    seeded_history(tmp_path / "gym.db")
    with sqlite3.connect(tmp_path / "gym.db") as c:
        c.execute("UPDATE events SET clip = ? WHERE id = '1764770000-1a2b3c4d'", (clip,))
    config = tmp_path / "gym.toml"
    config.write_text(f'db = "gym.db"\n[recording]\ndir = "{tmp_path / "rec"}"\n')
    one_line_error(run_main("events", "1764770000-1a2b3c4d", "--out", str(tmp_path / "c.mp4"), "--config", str(config)),
                   f"events: the clip of '1764770000-1a2b3c4d' is named {clip!r} in the database, which leads out of "
                   f"{tmp_path / 'rec'}; expected <camera>/<file> inside it")
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.parametrize("out", ["gym.db", "gym.toml", "rec/court-1/e.mp4", "rec/court-1/e.jpg", "link.db"])
def test_copying_a_clip_out_never_writes_over_the_database_the_config_or_the_clip(tmp_path, out):
    import sqlite3

    seeded_history(tmp_path / "gym.db")
    with sqlite3.connect(tmp_path / "gym.db") as c:
        c.execute("UPDATE events SET clip = 'court-1/e.mp4', thumbnail = 'court-1/e.jpg' "
                  "WHERE id = '1764770000-1a2b3c4d'")
    (tmp_path / "rec" / "court-1").mkdir(parents=True)
    (tmp_path / "rec" / "court-1" / "e.mp4").write_bytes(b"clip" * 16)
    (tmp_path / "rec" / "court-1" / "e.jpg").write_bytes(b"\xff\xd8thumb")
    (tmp_path / "link.db").symlink_to(tmp_path / "gym.db")  # another name of the same file
    config = tmp_path / "gym.toml"
    config.write_text(f'db = "gym.db"\n[recording]\ndir = "{tmp_path / "rec"}"\n')
    before = {p: p.read_bytes() for p in (tmp_path / "gym.db", config, tmp_path / "rec" / "court-1" / "e.mp4",
                                          tmp_path / "rec" / "court-1" / "e.jpg")}
    one_line_error(run_main("events", "1764770000-1a2b3c4d", "--out", str(tmp_path / out), "--config", str(config)),
                   f"--out {tmp_path / out}: that is the input file")
    assert {p: p.read_bytes() for p in before} == before
    proc = run_main("events", "1764770000-1a2b3c4d", "--out", str(tmp_path / "lift.mp4"), "--config", str(config))
    assert proc.returncode == 0 and (tmp_path / "lift.mp4").read_bytes() == b"clip" * 16, proc.stderr
    one_line_error(run_main("events", "1764770000-1a2b3c4d", "--out", "", "--config", str(config)),
                   "--out: expected a value, got ''")


@pytest.mark.parametrize("out", ["rec/court-1/other.mp4", "rec/court-1/other.jpg", "rec/new.mp4", "rec/../rec/x.mp4"])
def test_copying_a_clip_out_never_writes_into_the_recording_folder(tmp_path, out):
    """Another event's clip or thumbnail, or a new file among them, is refused as the event's own."""
    import sqlite3

    seeded_history(tmp_path / "gym.db")
    with sqlite3.connect(tmp_path / "gym.db") as c:
        c.execute("UPDATE events SET clip = 'court-1/e.mp4' WHERE id = '1764770000-1a2b3c4d'")
    (tmp_path / "rec" / "court-1").mkdir(parents=True)
    (tmp_path / "rec" / "court-1" / "e.mp4").write_bytes(b"clip" * 16)
    others = {tmp_path / "rec" / "court-1" / n: b"other " + n.encode() for n in ("other.mp4", "other.jpg")}
    for path, data in others.items():
        path.write_bytes(data)
    config = tmp_path / "gym.toml"
    config.write_text(f'db = "gym.db"\n[recording]\ndir = "{tmp_path / "rec"}"\n')
    line = one_line_error(run_main("events", "1764770000-1a2b3c4d", "--out", str(tmp_path / out), "--config", str(config)))
    assert line == (f"streamrec: error: --out {tmp_path / out}: inside the [recording] dir {tmp_path / 'rec'}; writing "
                    "there would change the events' clips (write it beside the folder)")
    assert {p: p.read_bytes() for p in others} == others and not (tmp_path / "rec" / "new.mp4").exists()


def test_an_explicit_db_that_does_not_exist_is_refused(tmp_path):
    one_line_error(run_main("events", "--db", str(tmp_path / "typo.db")), "--db", "typo.db", "no such file")


@pytest.mark.parametrize("command", ["events", "history"])
def test_nothing_recorded_yet_is_an_empty_answer(command, tmp_path):
    proc = run_main(command, "--format", "json", env={"XDG_DATA_HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.split() == ["[", "]"], proc.stderr
    assert "nothing recorded yet" in proc.stderr


# -- install hints: the command works from the clone (streamrec is on no package index) ---------

def test_a_missing_optional_package_names_the_command_that_installs_it(tmp_path):
    hidden = tmp_path / "hidden" / "psycopg"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    proc = run_cli("history", "--db", "postgresql://user@127.0.0.1:1/db", env={"PYTHONPATH": str(hidden.parent)})
    line = one_line_error(proc, "psycopg is not installed")
    assert line.endswith(f"pip install -e '{ROOT}[postgres]'"), line
    assert "streamrec[" not in line


@pytest.mark.parametrize("ray_address, needle", [
    (None, "--address auto: no running Ray cluster found (none started on this machine, and RAY_ADDRESS is not set); "
           "start one with `ray start --head` or use --address local"),
    ("127.0.0.1:{port}", "--address auto: RAY_ADDRESS 127.0.0.1:{port}: no Ray cluster answers there within 5 s"),
    ("head-node", "--address auto: RAY_ADDRESS: expected auto, local, HOST:PORT or ray://HOST:PORT, got 'head-node'"),
])
def test_cluster_address_auto_without_a_cluster_is_one_line(tmp_path, demo_clip, monkeypatch, capsys, ray_address,
                                                            needle):
    """In-process, with Ray's discovery of clusters on this machine made to find none (a cluster
    another test started must not be joined): ray.init fails at once, and says so in one line."""
    import functools

    from ray._private import services

    from streamrec.cli.main import main

    monkeypatch.setattr(services, "find_gcs_addresses", functools.lru_cache(lambda: []))  # Ray clears its cache
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ray_address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address.format(port=port))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[cameras]]\nname = "a"\nsource = "{demo_clip}"\n')
    started = time.monotonic()
    rc = main(["cluster", "--config", str(cfg), "--address", "auto", "--no-dashboard", "--db", str(tmp_path / "h.db")])
    err = capsys.readouterr().err
    assert time.monotonic() - started < 20
    assert rc == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("streamrec: error:")]
    assert len(lines) == 1 and lines[0].startswith(f"streamrec: error: {needle.format(port=port)}"), err


def test_cluster_address_local_starts_a_ray_of_its_own_whatever_ray_address_says(monkeypatch):
    """None would join RAY_ADDRESS's cluster, or one started on this machine, instead."""
    from streamrec.cli.cluster import connect

    seen = []
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    connect(type("Ray", (), {"init": staticmethod(lambda **kw: seen.append(kw["address"]))}), "local")
    assert seen == ["local"]


@pytest.mark.parametrize("error, needle", [
    (ConnectionError("refused\nmore lines"), "--address 10.0.0.1:6379: cannot connect to a Ray cluster there (refused)"),
    (RuntimeError("GCS timed out\nmore"), "--address 10.0.0.1:6379: Ray did not start or connect (RuntimeError: GCS timed out)"),
])
def test_cluster_ray_init_failures_are_one_line(error, needle):
    from streamrec.cli.cluster import connect
    from streamrec.errors import StreamrecError

    def fail(**kwargs):
        raise error

    with pytest.raises(StreamrecError) as info:
        connect(type("Ray", (), {"init": staticmethod(fail)}), "10.0.0.1:6379")
    assert str(info.value) == needle


@pytest.mark.parametrize("answer, ok", [(None, False), (b"HTTP/1.1 400 Bad Request\r\n\r\n", False),
                                        (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", True)])
def test_cluster_address_where_something_else_answers_fails_at_once(answer, ok):
    """Ray retries a HOST:PORT that accepts but speaks no gRPC for minutes: a server that says
    nothing, or HTTP/1, is one line; one that answers HTTP/2's preface with SETTINGS passes."""
    import threading

    from streamrec.cluster.runner import check_reachable
    from streamrec.errors import StreamrecError

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        conn.recv(64)
        if answer:
            conn.sendall(answer)
        time.sleep(1)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        if ok:
            check_reachable(f"127.0.0.1:{port}", timeout_s=0.5)
        else:
            with pytest.raises(StreamrecError) as info:
                check_reachable(f"127.0.0.1:{port}", timeout_s=0.5)
            assert str(info.value) == (f"--address 127.0.0.1:{port}: something answers there, but not a Ray "
                                       "cluster (no gRPC within 0.5 s)")
    finally:
        server.close()


@pytest.mark.parametrize("argv, message", [
    (("serve", "--weights", ""), "--weights: expected a value, got ''"),
    (("serve", "--db", " "), "--db: expected a value, got ' '"),
    (("serve", "--config", ""), "--config: expected a value, got ''"),
    (("events", ""), "ID: expected a value, got ''"),
    (("events", "--db", ""), "--db: expected a value, got ''"),
    (("classify", ""), "FILE: expected a value, got ''"),
    (("history", "--camera", ""), "--camera: expected a value, got ''"),
])
def test_an_option_given_as_empty_text_is_refused_not_read_as_the_default(argv, message):
    assert one_line_error(run_main(*argv)) == f"streamrec: error: {message}"


def test_an_empty_zone_still_means_the_whole_frame(tmp_path):
    seeded_history(tmp_path / "gym.db")
    proc = run_main("history", "--db", str(tmp_path / "gym.db"), "--zone", "", "--format", "json")
    assert proc.returncode == 0 and '"court-1"' in proc.stdout, proc.stderr


@pytest.mark.parametrize("argv, message", [
    (("classify", "x.mp4", "--stride", "1_0"), "--stride: expected a number, got '1_0'"),
    (("classify", "x.mp4", "--stride", "\u0663"), "--stride: expected a number, got '\u0663'"),
    (("classify", "x.mp4", "--threads", "\u0663"), "--threads: expected a whole number up to 1000000000, got '\u0663'"),
    (("classify", "x.mp4", "--threads", "1_0"), "--threads: expected a whole number up to 1000000000, got '1_0'"),
    (("classify", "x.mp4", "--zone", "0,0,0.5,0.\u0665"),
     "--zone: expected x,y,w,h as four fractions of the frame, got '0,0,0.5,0.\u0665'"),
    (("classify", "x.mp4", "--zone", "0,0,0.5,0_5"), "--zone: expected x,y,w,h as four fractions of the frame"),
    (("serve", "--source", "x.mp4", "--device", "cuda:\u0663"), "--device: expected auto, cpu, cuda or cuda:N, got 'cuda:\u0663'"),
    (("serve", "--source", "x.mp4", "--port", "\uff11\uff18_\uff17"), "--port: expected a whole number up to 65535"),
    (("cluster", "--port", "8_000"), "--port: expected a whole number up to 65535, got '8_000'"),
    (("train", "data", "--epochs", "\u0663"), "--epochs: expected a whole number up to 1000000, got '\u0663'"),
    (("train", "data", "--patience", "1_0"), "--patience: expected a whole number up to 1000000, got '1_0'"),
])
def test_a_number_written_in_other_digits_or_with_underscores_is_refused(argv, message):
    assert message in one_line_error(run_main(*argv))


LOOP = "a symbolic link that never reaches a file"


@pytest.mark.parametrize("args, line", [
    (["serve", "--config", "{loop}"], "--config: {loop} is " + LOOP),
    (["history", "--config", "{loop}"], "--config: {loop} is " + LOOP),
    (["events", "--config", "{loop}"], "--config: {loop} is " + LOOP),
    (["classify", "{loop}"], "classify: {loop} is " + LOOP),
    (["classify", "{clip}", "--weights", "{loop}"], "--weights: expected DEFAULT, none or a file, got '{loop}' (" + LOOP + ")"),
    (["classify", "{clip}", "--weights", "{dangling}"],
     "--weights: expected DEFAULT, none or a file, got '{dangling}' (" + LOOP + ")"),
], ids=["serve", "history", "events", "classify", "weights", "dangling-weights"])
def test_a_link_that_loops_or_names_nothing_is_one_line_saying_so(tmp_path, args, line):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "d").symlink_to(tmp_path / "nothing")
    names = {"loop": str(tmp_path / "a"), "dangling": str(tmp_path / "d"), "clip": str(ROOT / "demo/clips/arm_wrestling.mp4")}
    proc = run_main(*(a.format(**names) for a in args))
    assert error_line(proc) == "streamrec: error: " + line.format(**names)


@pytest.mark.parametrize("args, line", [
    (["classify", "{clip}", "--weights", "none", "--model", "tiny3d", "--out", "{t}/same.png", "--plot", "{t}/same.png"],
     "--plot {t}/same.png: the same file as --out {t}/same.png; each output needs its own name"),
    (["dataset", "{t}/data", "--csv", "{t}/c.png", "--sheet", "{t}/./c.png"],
     "--sheet {t}/./c.png: the same file as --csv {t}/c.png; each output needs its own name"),
], ids=["classify", "dataset"])
def test_two_outputs_that_name_one_file_are_refused_before_any_work(tmp_path, args, line):
    make_motion_dataset(tmp_path / "data", per_class=2, valid=1, seconds=0.4, size=(64, 48))
    names = {"t": str(tmp_path), "clip": str(ROOT / "demo/clips/arm_wrestling.mp4")}
    assert error_line(run_main(*(a.format(**names) for a in args))) == "streamrec: error: " + line.format(**names)
    assert not (tmp_path / "same.png").exists() and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("command", ["history", "events"])
@pytest.mark.parametrize("toml, line", [
    ('db = "gym.db"\n[recording]\ndb = "ev.db"\n', "[recording]: unknown option 'db'; expected one of dir, enabled, "
     "max_gb, max_seconds, packet_ring_mb, post_seconds, pre_seconds, retention_days"),
    ('db = "gym.db"\n[recording]\ndir = ""\n', "[recording] dir: expected a folder's path, got ''"),
    ("db = 5\n", "db: expected a string, got 5"),
], ids=["misplaced-db", "empty-dir", "db-type"])
def test_the_reading_commands_check_the_config_as_serve_does(tmp_path, command, toml, line):
    """A config serve refuses is not read for its db either: a misplaced db silently read the default history."""
    cfg = tmp_path / "gym.toml"
    cfg.write_text(toml)
    assert error_line(run_main(command, "--config", str(cfg))) == "streamrec: error: " + line
    assert error_line(run_main("serve", "--config", str(cfg), "--source", "0")) == "streamrec: error: " + line


@pytest.mark.slow
@pytest.mark.parametrize("toml, line", [
    ('model = "Tiny3d"\nsource = "{clip}"\n', "{cfg}: model: expected one of r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v1_b, "
     "mvit_v2_s, swin3d_t, swin3d_s, swin3d_b, tiny3d, got 'Tiny3d'"),
    ('source = "nope.mp4"\n', "{cfg}: source: file not found: {t}/nope.mp4"),
    ('source = "{clip}"\ndb = "nofolder/h.db"\n', "{cfg}: db {t}/nofolder/h.db: cannot open the history database: unable to open "
     "database file"),
    ('source = "{clip}"\ndb = "junk.db"\n', "{cfg}: db {t}/junk.db: cannot open the history database: file is not a database"),
], ids=["model-case", "source", "db-folder", "db-not-sqlite"])
def test_serve_refuses_a_config_it_cannot_run_before_its_address_answers(tmp_path, toml, line):
    cfg, clip = tmp_path / "gym.toml", ROOT / "demo/clips/arm_wrestling.mp4"
    (tmp_path / "junk.db").write_text("junk\n")
    cfg.write_text(toml.format(clip=clip))
    proc = run_cli("serve", "--config", str(cfg), "--port", "0", "--weights", "none", timeout=60)
    assert error_line(proc) == "streamrec: error: " + line.format(cfg=cfg, t=tmp_path)
    assert proc.stderr.count("\n") == 1  # nothing before it: no "preparing the model", no "stopped"


@pytest.mark.parametrize("option, cmd, name", OUTPUTS, ids=[f"{c[0]} {o}" for o, c, _ in OUTPUTS])
def test_an_output_path_ending_in_a_slash_is_a_folder_that_does_not_exist(option, cmd, name, tmp_path, demo_clip,
                                                                          small_dataset, checkpoint):
    values = {"clip": demo_clip, "data": small_dataset, "ckpt": checkpoint}
    given = str(tmp_path / "newdir") + "/"  # Path() drops the slash: it wrote a file named newdir
    proc = run_main(*[a.format(**values) for a in cmd], option, given)
    line = error_line(proc)  # that the folder does not exist, or (--confusion) that a name needs a suffix
    assert line.startswith(f"streamrec: error: {option} {given}: "), line
    assert list(tmp_path.iterdir()) == []


def test_bench_refuses_an_output_that_is_one_of_its_clips(tmp_path, demo_clip):
    import shutil

    clip = tmp_path / "clip.mp4"
    shutil.copy(demo_clip, clip)
    before = clip.read_bytes()
    for args in (("--clip", str(clip)), ("--clips", str(tmp_path))):
        proc = run_main("bench", "--models", "tiny3d", *args, "--out", str(clip))
        one_line_error(proc, f"--out {clip}: that is the input file {clip}")
        assert proc.stdout == ""  # refused before anything was measured
    assert clip.read_bytes() == before


def test_training_checks_the_files_it_writes_beside_the_model_before_it_trains(tmp_path, small_dataset):
    out = tmp_path / "m.pt"
    (tmp_path / "m.pt.log.csv").mkdir()
    proc = run_main("train", str(small_dataset), "--model", "tiny3d", "--weights", "none", "--out", str(out))
    one_line_error(proc, f"--out (.log.csv beside it): expected a file name, got the folder {tmp_path / 'm.pt.log.csv'}")
    (tmp_path / "m.pt.log.csv").rmdir()
    clip = next((small_dataset / "valid").rglob("*.mp4"))
    (tmp_path / "m.pt.state").symlink_to(clip)  # written through, the link would replace a clip of the dataset
    proc = run_main("train", str(small_dataset), "--model", "tiny3d", "--weights", "none", "--out", str(out))
    one_line_error(proc, f"--out (.state beside it) {tmp_path / 'm.pt.state'}: inside the dataset folder {small_dataset}")
    assert "epoch" not in proc.stderr and not out.exists()


def test_export_writes_beside_its_checkpoint_whatever_dots_the_folders_hold(tmp_path, checkpoint):
    import shutil

    (tmp_path / "run.v2").mkdir()
    shutil.copy(checkpoint, tmp_path / "run.v2" / "model")
    proc = run_main("export", str(tmp_path / "run.v2" / "model"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {tmp_path / 'run.v2' / 'model.ts'}"
    assert sorted(p.name for p in (tmp_path / "run.v2").iterdir()) == ["model", "model.ts"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.v2"]  # no run.ts beside the folder


@pytest.mark.parametrize("value", ["-1", "0", "999999999"])
def test_quantize_threads_are_checked_before_the_model_loads(value, tmp_path, demo_clip, checkpoint):
    proc = run_main("quantize", "--clips", str(demo_clip), "--weights", str(checkpoint), "--threads", value)
    one_line_error(proc, f"--threads: expected 1..4096, got {value}")


def test_an_empty_folder_option_of_several_values_is_refused(checkpoint, tmp_path):
    proc = run_main("quantize", "--clips", "", "--weights", str(checkpoint))
    one_line_error(proc, "--clips: expected a value, got ''")


def test_class_folders_whose_names_read_alike_are_refused_not_merged(tmp_path):
    import os

    root = tmp_path / "data"
    for split in ("train", "valid"):
        for name in (b"caf\xe9", b"caf\xe8", b"walk"):
            folder = os.path.join(bytes(root / split), name)
            os.makedirs(folder)
            write_video(Path(os.fsdecode(folder)) / "a.mp4", seconds=0.5, size=(64, 48))
    proc = run_main("dataset", str(root))
    one_line_error(proc, "two folders read as the class")


def test_a_cache_dir_that_is_a_file_is_refused_before_the_clips_are_read(tmp_path, small_dataset):
    (tmp_path / "cache").write_text("not a folder\n")
    proc = run_main("train", str(small_dataset), "--model", "tiny3d", "--weights", "none", "--out",
                    str(tmp_path / "m.pt"), "--cache-dir", str(tmp_path / "cache"))
    one_line_error(proc, f"--cache-dir {tmp_path / 'cache'}: expected a folder (or a new one's name), got a file")
    assert "skipping" not in proc.stderr


@pytest.mark.parametrize("command", ["history", "events"])
def test_a_history_database_that_is_a_fifo_is_refused_from_the_option_and_the_config(command, tmp_path):
    import os

    os.mkfifo(tmp_path / "h.db")
    one_line_error(run_main(command, "--db", str(tmp_path / "h.db")),
                   f"--db: expected a history database file, got '{tmp_path / 'h.db'}' (not a regular file: a FIFO)")
    (tmp_path / "gym.toml").write_text('db = "h.db"\n')
    one_line_error(run_main(command, "--config", str(tmp_path / "gym.toml")),
                   f"db: expected a history database file, got '{tmp_path / 'h.db'}' (not a regular file: a FIFO)")


def test_bench_names_what_a_clip_that_is_no_file_is(tmp_path):
    proc = run_main("bench", "--models", "tiny3d", "--clip", str(tmp_path))
    assert proc.returncode == 2 and error_line(proc) == (
        f"streamrec: error: --clip: expected a video file, got {tmp_path} (a folder)")


def test_a_dataset_root_given_where_a_split_was_meant_says_so(tmp_path):
    for split in ("train", "valid"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            write_video(tmp_path / "data" / split / cls / "c.mp4", seconds=0.4, size=(64, 48))
    proc = run_main("evaluate", str(tmp_path / "data"), "--weights", "none", "--model", "tiny3d")
    assert proc.returncode == 2 and error_line(proc) == (
        f"streamrec: error: dataset: {tmp_path / 'data'} holds the split folder train/, not class folders; expected a "
        f"folder of class folders ({tmp_path / 'data' / 'valid'}, say)")
    assert "sub-folders" not in proc.stderr  # the split's class folders are no stray sub-folders of a class


def test_a_gpu_this_machine_does_not_have_is_named_as_given(monkeypatch):
    import torch

    from streamrec.errors import StreamrecError
    from streamrec.runtime.classifier import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StreamrecError, match=r"^--device cuda:7: no CUDA GPU is available on this machine; use --device cpu$"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StreamrecError, match=r"^--device cuda:7: expected cuda:0 to cuda:0, got cuda:7 \(this machine "
                                             r"has 1 CUDA GPU\)$"):
        resolve_device("cuda:7")
