"""Shared fixtures: the real clips, free ports, synthetic videos, and a serve process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPS = Path(os.environ.get("STREAMREC_CLIPS") or ROOT.parent / "shared" / "clips")  # override: where ../shared is absent
ARTIFACTS = ROOT / "artifacts"
# backend choices measured by `--backend auto` are cached per test run, not in the user's home
os.environ.setdefault("STREAMREC_CACHE", str(ARTIFACTS / "cache"))
os.environ.setdefault("XDG_DATA_HOME", str(ARTIFACTS / "data"))  # serve's default history database


@pytest.fixture(scope="session")
def clips() -> Path:
    if not (CLIPS / "clips.csv").is_file():
        pytest.skip(f"real clips not found at {CLIPS} (they live beside the repo in ../shared/clips)")
    return CLIPS


def all_clips() -> list[str]:
    import csv

    if not (CLIPS / "clips.csv").is_file():
        return []
    with open(CLIPS / "clips.csv") as fh:
        return [row["file"] for row in csv.DictReader(fh)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                return r.read()
        except OSError as exc:
            last = exc
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
                 pix_fmt: str = "yuv420p", fmt: str | None = None) -> Path:
    """Encode RGB (H, W, 3) or grey (H, W) uint8 frames (any iterable) with PyAV at ``fps``."""
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
