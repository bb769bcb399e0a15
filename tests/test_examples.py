"""Every ``streamrec`` command shown in README.md and in each command's ``--help`` runs as written.

The examples run in a folder that holds what they name: the shipped ``demo/`` and ``configs/``,
``match.mp4`` (a synthetic clip), ``data/`` and ``clips/`` (a small dataset of labelled
synthetic clips), ``model.pt`` (a tiny3d checkpoint trained here; ``start.pt`` a copy), ``gym.toml`` and
``cameras.toml``, a history with events (``unsplit/`` holds the same with ``data/train`` only,
for the examples with ``--val-split``), and the Kinetics-400 weights file (random weights,
saved where the torch hub cache keeps it: no download); ``bench`` checks its backends on the
shipped clip (``STREAMREC_CLIPS``), as on a fresh clone. Each example gets the few options of
``QUICKER`` appended (the last value of an option wins): shorter runs and a free port. Commands
that serve until stopped run as a process until their page answers, then get SIGTERM.

Examples that need something outside this machine (a camera, a Ray cluster, a PostgreSQL
server, a GPU) are listed in ``OUTSIDE`` with what they need; those are parsed, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (ROOT, make_motion_dataset, save_default_weights, sigterm, streamrec_cmd, wait_http,
                      write_video)
from streamrec.cli.main import build_parser, main

README = ROOT / "README.md"
EVENT_ID = "1764770000-1a2b3c4d"  # the event the examples copy a clip of

# needs something outside this machine: parsed only (the reason says what it needs)
OUTSIDE = {
    "streamrec serve --source 0": "a webcam (device 0)",
    "streamrec serve --source rtsp://user:pass@10.0.0.5/stream1 --backend auto": "a network camera at 10.0.0.5",
    "streamrec serve --source rtsp://cam.local/stream --host 0.0.0.0 --token s3cret --weights model.pt":
        "a network camera at cam.local",
    "streamrec cluster --config configs/gym.toml --address auto": "a running Ray cluster (ray start --head)",
    "streamrec cluster --config cameras.toml --address ray://head:10001 --replicas 4": "a Ray cluster at head:10001",
    "streamrec history --db postgresql://user@db/streamrec --format csv --limit 100": "a PostgreSQL server at db",
    "streamrec bench --models r2plus1d_18,s3d --device cuda --out gpu.json": "a CUDA GPU",
}
# appended to an example of the command (argparse: the last value wins)
QUICKER = {
    "serve": ["--port", "0", "--backend", "torch"],
    "cluster": ["--seconds", "5", "--port", "0"],
    "train": ["--epochs", "1", "--allow-chance"],  # one epoch on a few synthetic clips learns little: saved anyway
    "lr-find": ["--model", "tiny3d", "--weights", "none", "--batch-size", "4", "--steps", "10"],
    "bench": ["--models", "tiny3d", "--no-int8", "--batches", "1"],
    "quantize": ["--weights", "model.pt"],  # the tiny3d checkpoint: r2plus1d_18 in int8 takes minutes
}
# r2plus1d_18 trains at minutes per epoch on a CPU: training examples train tiny3d, from a checkpoint
QUICKER["train"] += ["--model", "tiny3d", "--weights", "start.pt", "--overwrite"]  # model.pt is the site's checkpoint
SERVES = ("serve", "cluster")  # run as a process: they serve until stopped


def readme_examples() -> list[str]:
    """The ``streamrec`` commands of README.md's code blocks (``.venv/bin/streamrec`` as ``streamrec``),
    and those a TOML block names in a comment (``# streamrec serve --config ...``)."""
    found = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", README.read_text(), re.S):
        for line in body.splitlines():
            if lang == "toml":
                m = re.match(r"#\s*(streamrec\s.*)", line)
                found += [m.group(1).strip()] if m else []
                continue
            if lang not in ("bash", "sh", ""):
                continue
            for part in re.sub(r"\s#\s.*$", "", line).split("&&"):
                part = part.strip()
                part = "streamrec " + part[len(".venv/bin/streamrec "):] if part.startswith(".venv/bin/streamrec ") else part
                if part.startswith("streamrec "):
                    found.append(part)
    return found


def help_examples() -> list[str]:
    """The commands of each command's ``--help`` examples (the text after two spaces describes them)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    found = []
    for parser in sub.choices.values():
        for line in (parser.epilog or "").split("examples:", 1)[-1].splitlines():
            if line.strip().startswith("streamrec "):
                found.append(re.split(r"\s{2,}", line.strip())[0])
    return found


EXAMPLES = list(dict.fromkeys(readme_examples() + help_examples()))


def test_the_examples_are_found():
    assert len(readme_examples()) >= 13 and len(help_examples()) >= 2 * 12
    assert "streamrec events --camera court-1 --since -1d" in EXAMPLES
    stale = set(OUTSIDE) - set(EXAMPLES)
    assert not stale, f"OUTSIDE names commands no longer shown: {stale}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder with everything the examples name (see the module's docstring)."""
    root = tmp_path_factory.mktemp("site")
    for name in ("demo", "configs"):
        (root / name).symlink_to(ROOT / name)
    write_video(root / "match.mp4", seconds=3.0)
    make_motion_dataset(root / "data", per_class=7, valid=2, seconds=1.6)  # 5 training clips: --val-split splits them
    (root / "clips").symlink_to(root / "data")
    save_default_weights("r2plus1d_18", root / "torch")
    env = site_env(root)
    train = subprocess.run(streamrec_cmd("train", "data", "--model", "tiny3d", "--weights", "none", "--epochs", "1",
                                         "--allow-chance", "--out", "model.pt"), cwd=root, env=env, capture_output=True, text=True,
                           timeout=600)
    assert train.returncode == 0, train.stderr
    shutil.copyfile(root / "model.pt", root / "start.pt")  # what the training examples start from
    (root / "gym.toml").write_text('db = "gym.db"\n\n[recording]\ndir = "events"\n')
    (root / "events" / "court-1").mkdir(parents=True)
    shutil.copyfile(root / "match.mp4", root / "events" / "court-1" / "lift.mp4")
    seed_history(root / "gym.db", clip="court-1/lift.mp4")
    (root / "share" / "streamrec").mkdir(parents=True)
    seed_history(root / "share" / "streamrec" / "history.db", clip=None)
    unsplit = root / "unsplit"  # DATA/train only: what --val-split splits
    unsplit.mkdir()
    for name in ("demo", "configs", "model.pt", "start.pt"):
        (unsplit / name).symlink_to(root / name)
    (unsplit / "data").mkdir()
    (unsplit / "data" / "train").symlink_to(root / "data" / "train")
    (unsplit / "clips").symlink_to(unsplit / "data")
    (root / "cameras.toml").write_text('model = "tiny3d"\nweights = "none"\n\n[[cameras]]\nname = "court-1"\n'
                                       'source = "demo/clips/arm_wrestling.mp4"\nloop = true\n')
    return root


def site_env(root: Path) -> dict[str, str]:
    return {**os.environ, "TORCH_HOME": str(root / "torch"), "XDG_DATA_HOME": str(root / "share"),
            "STREAMREC_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
            "STREAMREC_CLIPS": str(ROOT / "demo" / "clips")}  # bench's backend agreement on the shipped clip


def seed_history(db: Path, *, clip: str | None) -> None:
    """Segments of cameras court-1, door and rack-1 and one closed event each, in the last hour."""
    from streamrec.events.store import Event, EventStore
    from streamrec.live.history import HistoryStore, Segment

    now = time.time()
    store = HistoryStore(str(db))
    for camera in ("court-1", "door", "rack-1"):
        store.add(Segment(camera, "arm wrestling", now - 1800, now - 1790, 0.7, 0.9, 12))
    store.close()
    events = EventStore(str(db))
    for i, camera in enumerate(("court-1", "rack-1")):
        ev = Event(EVENT_ID if i == 0 else f"{EVENT_ID[:-1]}e", "lifting", camera, "deadlifting", now - 1800, 0.9, 0.8)
        events.opened(ev, clip=clip if i == 0 else None, now=now - 1800)
        ev.end_ts = now - 1790
        events.closed(ev, now=now - 1790)
    events.close()


def argv_of(example: str) -> tuple[list[str], str | None]:
    """The example's arguments after ``streamrec``, and the file its stdout goes to (``> FILE``)."""
    words = shlex.split(example)
    out = None
    if ">" in words:
        i = words.index(">")
        words, out = words[:i], words[i + 1]
    return words[1:], out


@pytest.mark.slow
@pytest.mark.timeout(900)  # lr-find and bench take minutes on a small shared CPU
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_as_written(example, site, monkeypatch, capsys):
    argv, out = argv_of(example)
    args = build_parser().parse_args(argv)  # an option's value is read as the example means it
    if example in OUTSIDE:
        return  # needs OUTSIDE[example]: parsed only
    command = argv[0]
    full = argv + QUICKER.get(command, [])
    if "--resume" in argv:  # goes on with the site's run: its model and weights are the state's, not QUICKER's
        full = argv + ["--epochs", "2", "--allow-chance"]
    if command in SERVES:
        return run_server(full, out, site)
    monkeypatch.chdir(site / "unsplit" if "--val-split" in argv else site)  # the layout --val-split expects
    for key, value in site_env(site).items():
        monkeypatch.setenv(key, value)
    rc = main(full)
    captured = capsys.readouterr()
    assert rc == 0, f"{example}: exit {rc}\n{captured.err}"
    assert "Traceback" not in captured.err
    if out:
        (site / out).write_text(captured.out)
    assert args.command == command


def run_server(argv: list[str], out: str | None, site: Path) -> None:
    """A command that serves until stopped: it must serve (its page answers), then stop cleanly on
    SIGTERM; one with ``--seconds`` must end by itself with exit 0, having served its page unless
    ``--no-dashboard``."""
    stdout = open(site / out, "w") if out else subprocess.DEVNULL
    proc = subprocess.Popen(streamrec_cmd(*argv), cwd=site, env=site_env(site), stdout=stdout,
                            stderr=subprocess.PIPE, text=True)
    try:
        if "--seconds" in argv:  # ends by itself, having served its page unless --no-dashboard
            err = proc.communicate(timeout=600)[1]
            assert proc.returncode == 0, err
            assert ("--no-dashboard" in argv) != bool(re.search(r" at http://127\.0\.0\.1:\d+/", err)), err
            return
        for line in proc.stderr:
            hit = re.search(r" at (http://127\.0\.0\.1:\d+/)", line)
            if hit:
                wait_http(hit.group(1) + "healthz", proc=proc)
                break
        else:
            raise AssertionError(f"{argv}: exited {proc.wait()} without serving")
    finally:
        if proc.poll() is None:
            assert sigterm(proc, timeout=60) == 0
        if out:
            stdout.close()
