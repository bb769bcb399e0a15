"""Shared fixtures: the shipped clip, the real clips of every format, free ports, synthetic
videos, a serve process, and the strict mode CI runs in.

Strict mode: with ``STREAMREC_REQUIRE=all`` (``.ci/run`` sets it) a skipped test fails the run,
naming why it skipped, unless it is marked ``gpu`` or ``hardware`` (it needs a GPU or a CPU or
runtime feature this machine lacks); those are listed at the end with their reasons. Without it,
``pytest`` skips what this machine cannot run, as usual.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPS = Path(os.environ.get("STREAMREC_CLIPS") or ROOT.parent / "shared" / "clips")  # override: where ../shared is absent
DEMO_CLIP = ROOT / "demo" / "clips" / "arm_wrestling.mp4"  # shipped: H.264 .mp4, 340x256, 28 fps, 280 frames
NO_CLIPS = (f"the real clips of every format (.mp4, .mkv, .avi, .gif; H.264, MPEG-4, GIF) are not at {CLIPS}: "
            "put ../shared/clips beside the repo or set STREAMREC_CLIPS; this test is about reading each of them")
ARTIFACTS = ROOT / "artifacts"
# backend choices measured by `--backend auto` are cached per test run, not in the user's home
os.environ.setdefault("STREAMREC_CACHE", str(ARTIFACTS / "cache"))
os.environ.setdefault("XDG_DATA_HOME", str(ARTIFACTS / "data"))  # serve's default history database
# The two test workers, and the processes their tests start, share the machine's cores: an OpenMP
# thread with no work sleeps at once instead of spinning for its next task, which would take a core
# from the other worker (two lr-find runs side by side on 2 cores: 207 s spinning, 61 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- strict mode: a skip is a failure in CI, unless the machine lacks the hardware ------------------
REQUIRE = os.environ.get("STREAMREC_REQUIRE", "")
HARDWARE_MARKS = ("gpu", "hardware")
_hardware_skips: list[tuple[str, str]] = []
_collection_skips: list[tuple[str, str]] = []


def pytest_configure(config) -> None:
    if REQUIRE not in ("", "all"):
        raise pytest.UsageError(f"STREAMREC_REQUIRE: expected 'all' or nothing, got {REQUIRE!r}")


SLOW_MARKS = ("browser", "rtsp", "gpu", "soak", "load")  # always too slow for the fast lane
# the files of a minute or more of the default run on 2 cores (its --durations), the longest first
LONGEST_FIRST = ("test_examples.py", "test_cluster.py", "test_train.py", "test_firststart.py", "test_train_chance.py",
                 "test_backends.py", "test_classify.py", "test_browser.py")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items) -> None:
    """Tests of a browser, an RTSP server or a GPU, and soak and load tests, are ``slow`` too:
    ``pytest -m "not slow"`` (the fast lane, whose ``-m`` replaces the default one) leaves them
    out with the tests marked ``slow`` one by one."""
    for item in items:
        if any(item.get_closest_marker(m) for m in SLOW_MARKS):
            item.add_marker(pytest.mark.slow)
    # the longest files first (the order in a file kept): pytest-xdist's two workers take a file each
    # as they finish one, so the last files to start are short ones and both end together
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip of any phase (a ``skipif`` mark, ``pytest.skip`` in the test or in a fixture):
    listed if the item needs hardware this machine lacks, a failure in strict mode otherwise."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if REQUIRE == "all" and not any(item.get_closest_marker(m) for m in HARDWARE_MARKS):
        report.outcome = "failed"
        report.longrepr = ("skipped under STREAMREC_REQUIRE=all, which allows no skip but for missing hardware: "
                           f"{_skip_reason(report)}")


def pytest_runtest_logreport(report) -> None:
    """A skip for hardware, listed at the end (this hook runs where the summary is written: in the
    one process, or in pytest-xdist's controller with the workers' reports)."""
    if report.skipped and not hasattr(report, "wasxfail") and any(m in report.keywords for m in HARDWARE_MARKS):
        _hardware_skips.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report) -> None:
    """A whole module skipped at import (``pytest.importorskip`` at its top)."""
    if report.skipped:
        _collection_skips.append((report.nodeid, _skip_reason(report)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tr = terminalreporter
    if _hardware_skips:
        tr.section(f"{len(_hardware_skips)} skipped: hardware this machine lacks", sep="-")
        for nodeid, reason in _hardware_skips:
            tr.write_line(f"{nodeid}: {reason}")
    if _collection_skips and REQUIRE == "all":
        tr.section(f"STREAMREC_REQUIRE=all: {len(_collection_skips)} module(s) skipped, a failure", sep="-", red=True)
        for nodeid, reason in _collection_skips:
            tr.write_line(f"{nodeid}: {reason}", red=True)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _collection_skips and REQUIRE == "all" and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- clips ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_clip() -> Path:
    """The real clip that ships with the repository: any test that needs *a* real video uses it."""
    assert DEMO_CLIP.is_file(), f"{DEMO_CLIP} is missing: it ships with the repository"
    return DEMO_CLIP


@pytest.fixture(scope="session")
def clips() -> Path:
    """The folder of the real clips of every format (``../shared/clips`` or ``STREAMREC_CLIPS``):
    only for tests whose point is those formats; they skip, saying so, where it is absent."""
    if not (CLIPS / "clips.csv").is_file():
        pytest.skip(NO_CLIPS)
    return CLIPS


def all_clips() -> list[str]:
    """The real clips' file names, from ``clips.csv``; none where the folder is absent."""
    import csv

    if not (CLIPS / "clips.csv").is_file():
        return []
    with open(CLIPS / "clips.csv") as fh:
        return [row["file"] for row in csv.DictReader(fh)]


def format_clips() -> list:
    """Parameters for a test of every real clip: one per clip of ``clips.csv``. Where the folder
    is absent, the shipped clip (one of them) and one skipped item that says where the others go,
    so that no test disappears without a word."""
    names = all_clips()
    if names:
        return [pytest.param(CLIPS / name, id=name) for name in names]
    return [pytest.param(DEMO_CLIP, id=DEMO_CLIP.name),
            pytest.param(None, id="other-formats", marks=pytest.mark.skip(reason=NO_CLIPS))]


T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something true (returned) or ``timeout`` seconds pass
    (an AssertionError naming ``what`` and the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        time.sleep(interval)


class Clock:
    """A clock a test sets by hand: ``clock()`` reads ``clock.now``."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def network_capture_parts(frames: int):
    """What a capture thread of a network camera (``rtsp://127.0.0.1:1/cam``) for r2plus1d_18
    writes with: its source spec, its preprocessor and a ring of ``frames`` crops."""
    from streamrec.live.ring import FrameRing
    from streamrec.live.sources import SourceSpec
    from streamrec.models.preprocess import FramePreprocessor
    from streamrec.models.registry import model_spec

    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    return SourceSpec("rtsp://127.0.0.1:1/cam", "network"), pre, FrameRing(frames, pre.crop_shape, np.uint8)


def write_video(path: Path, *, seconds: float, fps: int = 30, size: tuple[int, int] = (320, 240),
                codec: str = "libx264", moving: bool = True) -> Path:
    """A synthetic video, generated frame by frame (any length): a bright square moving over a gradient."""
    w, h = size
    base = np.tile(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, 1, 3))

    def frames():
        for i in range(int(seconds * fps)):
            img = base.copy()
            if moving:
                x = (i * 4) % max(1, w - 40)
                img[h // 3 : h // 3 + 40, x : x + 40] = 255
            yield img

    return write_frames(path, frames(), fps, codec=codec)


def sigterm(proc: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM a server process and wait for it (killed if it outlives ``timeout``); its exit code."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    finally:
        proc.kill()


def streamrec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamrec", *args]


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(streamrec_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def run_main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``streamrec ARGS`` in this process, as ``run_cli`` runs it in another: ``main(argv)`` with
    ``env`` added to the environment and the repo as the working directory, its exit status, and
    what it wrote on stdout and stderr (the log lines at INFO and above included, as the command
    logs them). A second or so quicker per call than a new interpreter that imports torch; the
    real exit status of the installed command is checked by one subprocess test."""
    import contextlib
    import io
    import logging

    from streamrec.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # the command's log lines only: not those of a server or broker thread an earlier test left running
    others = {t.ident for t in threading.enumerate()} - {threading.get_ident()}
    handler.addFilter(lambda record: record.thread not in others)
    root = logging.getLogger()
    saved_env, saved_level, saved_cwd = dict(os.environ), root.level, os.getcwd()
    os.environ.update(env or {})
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:  # --help, --version
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        root.removeHandler(handler)
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["streamrec", *args], rc, out.getvalue(), err.getvalue())


def error_line(proc) -> str:
    """The one ``streamrec: error:`` line of a run that exited 2, with no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("streamrec: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def wait_http(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> bytes:
    import urllib.request

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read()
        except OSError as exc:
            last = exc
            time.sleep(0.2)
            continue
        if not body.startswith(b'{"status": "starting", "preparing"'):  # serve answers while it prepares its models
            return body
        last = body
        time.sleep(0.2)
    raise AssertionError(f"{url} not up after {timeout} s: {last}")


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


DIRECTIONS = ("left_to_right", "right_to_left", "top_to_bottom")


def motion_frames(direction: str, n: int, size: tuple[int, int], rng: np.random.Generator,
                  period: int = 48) -> list[np.ndarray]:
    """``n`` RGB frames of squares crossing the frame in ``direction`` one after another (one
    crossing every ``period`` frames, starting at a random phase), on a noisy background."""
    w, h = size
    side = int(rng.integers(h // 5, h // 3))
    color = rng.integers(150, 256, 3)
    bg = rng.integers(0, 80, 3)
    lane = int(rng.integers(0, max(1, (h if direction != "top_to_bottom" else w) - side)))
    phase = int(rng.integers(0, period))
    frames = []
    for i in range(n):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = bg
        img += rng.integers(0, 20, (h, w, 1), dtype=np.uint8)
        p = ((i + phase) % period) / (period - 1)  # the square enters fully outside the frame and leaves it the same way,
        # so clips played back to back never show it jumping backwards
        if direction == "left_to_right":
            x, y = int(-side + p * (w + side)), lane
        elif direction == "right_to_left":
            x, y = int(w - p * (w + side)), lane
        else:
            x, y = lane, int(-side + p * (h + side))
        img[max(0, y) : max(0, y + side), max(0, x) : max(0, x + side)] = color
        frames.append(img)
    return frames


def write_frames(path: Path, frames, fps: int, *, codec: str = "libx264",
                 pix_fmt: str = "yuv420p", fmt: str | None = None, gop: int | None = None) -> Path:
    """Encode RGB (H, W, 3) or grey (H, W) uint8 frames (any iterable) with PyAV at ``fps``;
    ``gop``: frames from one keyframe to the next (default: the encoder's)."""
    import itertools

    import av

    it = iter(frames)
    first = next(it)
    frames = itertools.chain([first], it)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": "23"}
        if gop is not None:
            s.codec_context.gop_size = gop
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="gray" if img.ndim == 2 else "rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def make_motion_dataset(root: Path, *, per_class: int = 20, valid: int = 6, fps: int = 30, seconds: float = 2.4,
                        size: tuple[int, int] = (128, 96), seed: int = 0) -> Path:
    """DATA/train/<direction>/*.mp4 and DATA/valid/<direction>/*.mp4 of moving squares."""
    rng = np.random.default_rng(seed)
    for d in DIRECTIONS:
        for i in range(per_class):
            split = "valid" if i < valid else "train"
            folder = root / split / d
            folder.mkdir(parents=True, exist_ok=True)
            write_frames(folder / f"{d}_{i:02d}.mp4", motion_frames(d, int(seconds * fps), size, rng), fps)
    return root


def save_default_weights(model: str, torch_home: Path, *, seed: int = 0) -> Path:
    """Random ``model`` weights (seeded) saved where torchvision's Kinetics-400 file goes in the
    torch hub cache under ``torch_home``, so that ``--weights DEFAULT`` loads them offline; the path."""
    import torch

    from streamrec.models.registry import build_model, hub_checkpoint_path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        path = hub_checkpoint_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_model(model, num_classes=400).state_dict(), path)
    return path


def run_measuring_rss(cmd: list[str], *, timeout: float = 900, interval: float = 0.02, **kw) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd``; return its result and the peak of the RSS summed over it and all its
    descendants, sampled every ``interval`` seconds (a child process's memory counts while
    the parent's does too, unlike ``getrusage``'s largest-single-process figure)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    root = psutil.Process(proc.pid)
    peak = 0
    out: list[str] = []
    err: list[str] = []

    def drain(stream, into):
        into.append(stream.read())

    readers = [threading.Thread(target=drain, args=(s, b), daemon=True) for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        if time.monotonic() > deadline:
            proc.kill()
            raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(interval)
    proc.wait()
    for r in readers:
        r.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "".join(err)), peak


def load_benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def directions_model(tmp_path_factory):
    """tiny3d trained on the synthetic direction classes (once per test run, shared by pytest-xdist's
    workers too: every module that needs a model whose labels mean something shares it): (dataset
    folder, checkpoint, the training run)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's folder, above every worker's own: trained once per run
    root, data = shared / "motion", shared / "motion" / "data"
    out = root / "model.pt"
    with FileLock(str(shared / "motion.lock")):
        if not (root / "trained.txt").is_file():
            root.mkdir(exist_ok=True)
            make_motion_dataset(data)
            proc = run_cli("train", str(data), "--model", "tiny3d", "--weights", "none", "--epochs", "12",
                           "--batch-size", "6", "--lr", "3e-3", "--no-flip", "--patience", "12", "--seed", "0",
                           "--out", str(out), timeout=900)
            assert proc.returncode == 0, proc.stderr
            (root / "train.stderr").write_text(proc.stderr)
            (root / "trained.txt").write_text(proc.stdout)
    return data, out, subprocess.CompletedProcess(["streamrec", "train"], 0, (root / "trained.txt").read_text(),
                                                  (root / "train.stderr").read_text())


def json_request(method: str, url: str, token: str | None = None, body: bytes | None = None,
                 timeout: float = 120, data: object = None) -> tuple[int, object]:
    """``method url`` (with the token as a Bearer header when given, ``body`` as given or ``data`` as
    a JSON body): the status and the JSON body of the answer, error statuses included."""
    import json
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        body, headers["Content-Type"] = json.dumps(data).encode(), "application/json"
    req = urllib.request.Request(url, method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
