"""Shared fixtures: the real clips, free ports, synthetic videos, and a serve process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT.parent / "shared" / "clips"
ARTIFACTS = ROOT / "artifacts"


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
    """A synthetic video with PyAV: a bright square moving over a gradient, frame index in the red channel."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        base = np.tile(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, 1, 3))
        for i in range(int(seconds * fps)):
            img = base.copy()
            if moving:
                x = (i * 4) % max(1, w - 40)
                img[h // 3 : h // 3 + 40, x : x + 40] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def streamrec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamrec", *args]


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(streamrec_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bytes:
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
