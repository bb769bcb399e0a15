"""Media whose metadata is not UTF-8 (as in HMDB51): every command reads it; so are file and
folder names that are not UTF-8.

PyAV decodes container and stream tags strictly by default, so one bad byte in a title made
``av.open`` raise ``UnicodeDecodeError`` and classify, serve, dataset and train end with a
traceback. The files here are real AVIs whose tags are patched to invalid UTF-8 after writing.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, free_port, motion_frames, run_main, sigterm, wait_http
from test_serve import collect, start_serve

TITLE, STREAM_TITLE = b"TITLEXXXXX", b"STREAMYYYY"
BAD_TITLE, BAD_STREAM_TITLE = b"TI\xff\xfe\xc3(XXXX", b"ST\xff\x80AMYYYY"  # invalid UTF-8, same lengths


def write_bad_metadata_avi(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    """An MPEG-4 AVI of ``frames`` whose container and stream titles hold invalid UTF-8."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format="avi") as out:
        out.metadata["title"] = TITLE.decode()
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.metadata["title"] = STREAM_TITLE.decode()
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    data = path.read_bytes()
    assert data.count(TITLE) == 1 and data.count(STREAM_TITLE) == 1, "the tags were not written as expected"
    path.write_bytes(data.replace(TITLE, BAD_TITLE).replace(STREAM_TITLE, BAD_STREAM_TITLE))
    return path


@pytest.fixture(scope="module")
def bad_avi(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return write_bad_metadata_avi(tmp_path_factory.mktemp("badmeta") / "bad.avi",
                                  motion_frames("left_to_right", 45, (160, 120), rng))


def test_the_file_really_has_invalid_utf8_metadata(bad_avi):
    import av

    with pytest.raises(UnicodeDecodeError):  # PyAV's default: what every command hit
        av.open(str(bad_avi))
    from streamrec.live.sources import open_container

    with open_container(str(bad_avi)) as c:
        assert c.metadata["title"] == "TI\ufffd\ufffd\ufffd(XXXX"
        assert c.streams.video[0].metadata["title"] == "ST\ufffd\ufffdAMYYYY"
        assert sum(1 for _ in c.decode(video=0)) == 45


def test_every_av_open_in_the_package_goes_through_open_container():
    """A new ``av.open`` would bring the strict metadata decoding back."""
    calls = []
    for path in sorted((ROOT / "streamrec").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bav\.open\(", line):
                calls.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert len(calls) == 1 and "metadata_errors=" in calls[0] and calls[0].startswith("streamrec/live/sources.py"), calls


@pytest.mark.slow
def test_classify_reads_it(bad_avi):
    proc = run_main("classify", str(bad_avi), "--model", "tiny3d", "--weights", "none", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert out["decode_errors"] == 0 and len(out["windows"]) == 3  # 3 s at 15 fps, a 1 s window every 1 s


@pytest.mark.slow
def test_dataset_catalogs_it(bad_avi, tmp_path):
    weird = os.fsdecode(b"caf\xe9")  # a folder and a file whose names are not UTF-8 either
    for cls in ("a", weird):
        (tmp_path / "data" / cls).mkdir(parents=True)
        (tmp_path / "data" / cls / f"{weird}.avi").write_bytes(bad_avi.read_bytes())
    csv_path = tmp_path / "cat.csv"
    proc = run_main("dataset", str(tmp_path / "data"), "--csv", str(csv_path), "--sheet", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "skipping" not in proc.stderr
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [(r["class"], r["clips"], r["frames"], r["unreadable"], r["resolutions"]) for r in rows] == [
        ("a", "1", "45", "0", "160x120"), ("caf\ufffd", "1", "45", "0", "160x120")]
    assert "caf\ufffd" in proc.stdout
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_train_on_a_folder_of_them(tmp_path):
    rng = np.random.default_rng(1)
    weird = os.fsdecode(b"top_\xff")  # a class folder whose name is not UTF-8
    for split, d in [(s, d) for s in ("train", "valid") for d in ("left_to_right", "top_to_bottom")]:
        folder = tmp_path / "data" / split / (weird if d == "top_to_bottom" else d)
        folder.mkdir(parents=True)
        for i in range(2 if split == "train" else 1):
            write_bad_metadata_avi(folder / f"{i}.avi", motion_frames(d, 30, (96, 72), rng))
    out = tmp_path / "m.pt"
    proc = run_main("train", str(tmp_path / "data"), "--model", "tiny3d", "--weights", "none", "--epochs", "1",
                    "--batch-size", "2", "--workers", "0", "--out", str(out), "--allow-chance")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "unreadable" not in proc.stderr
    import torch

    assert torch.load(out, weights_only=False)["classes"] == ["left_to_right", "top_\ufffd"]


@pytest.mark.slow
def test_serve_streams_it(bad_avi):
    port = free_port()
    proc = start_serve("--source", str(bad_avi), "--loop", "--model", "tiny3d", "--weights", "none",
                       "--port", str(port), "--device", "cpu")
    try:
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc))
        assert health["model"] == "tiny3d"
        preds, _, _ = asyncio.run(collect(f"ws://127.0.0.1:{port}/ws", 1))
        assert preds[0]["type"] == "prediction" and preds[0]["camera"] == "default"
    finally:
        assert sigterm(proc) == 0
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.slow
def test_classify_plots_a_file_whose_name_is_not_utf8(bad_avi, tmp_path):
    clip = tmp_path / os.fsdecode(b"clip_\xff.avi")
    clip.write_bytes(bad_avi.read_bytes())
    png = tmp_path / "t.png"
    proc = run_main("classify", str(clip), "--model", "tiny3d", "--weights", "none", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and png.read_bytes()[:4] == b"\x89PNG"
