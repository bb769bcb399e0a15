"""`streamrec classify` on the shipped clip and on real clips of every format, its outputs, short clips, bad input and memory."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import av
import numpy as np
import pytest

import streamrec
from streamrec.runtime import openvino
from streamrec.offline.classify import Timeline, classify_file
from streamrec.errors import StreamrecError
from streamrec.models.registry import load_model

from conftest import ROOT, error_line, format_clips, run_main, streamrec_cmd, write_video


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.manual_seed(0)
    return load_model("tiny3d", weights="none")


def pyav_times(path) -> list[float]:
    """PyAV's own frame times, in presentation order (AVI labels frames in decode order)."""
    with av.open(str(path)) as c:
        return sorted(float(f.time) for f in c.decode(video=0))


@pytest.mark.parametrize("clip", format_clips())
@pytest.mark.slow
def test_timeline_covers_the_clip_on_pyav_timestamps(clip, tiny):
    times = pyav_times(clip)
    tl = classify_file(clip, loaded=tiny, stride=0.5, batch_size=3, device="cpu")
    assert tl.windows, "no windows"
    assert tl.windows[0].start == pytest.approx(times[0])
    assert tl.windows[-1].end == pytest.approx(times[-1])
    assert (tl.first_ts, tl.last_ts) == (pytest.approx(times[0]), pytest.approx(times[-1]))
    known = np.array(times)
    for w in tl.windows:
        # every boundary is a real frame time of the file
        assert np.min(np.abs(known - w.start)) < 1e-6 and np.min(np.abs(known - w.end)) < 1e-6
        assert w.end - w.start == pytest.approx(1.0, abs=1.0 / 24)  # 16 frames at 15 fps
    ends = [w.end for w in tl.windows]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    # consecutive window ends are `stride` apart (the tail window may be closer)
    assert all(b - a <= 0.5 + 1 / 24 for a, b in zip(ends, ends[1:]))
    assert [w.index for w in tl.windows] == list(range(len(tl.windows)))
    assert tl.meaningless and not tl.padded


def test_verdict_is_the_mean_of_window_scores(demo_clip, tiny):
    tl = classify_file(demo_clip, loaded=tiny, stride=1.0, top=10, device="cpu")
    assert len(tl.verdict) == 10
    assert sum(t["score"] for t in tl.verdict) == pytest.approx(1.0, abs=1e-3)  # 10 classes: all of them
    assert tl.verdict[0]["score"] >= tl.verdict[-1]["score"]


def test_batch_size_does_not_change_results(demo_clip, tiny):
    a = classify_file(demo_clip, loaded=tiny, batch_size=1, device="cpu")
    b = classify_file(demo_clip, loaded=tiny, batch_size=8, device="cpu")
    assert len(a.windows) >= 9  # a 10 s clip, a window every second: batches of 8 and a rest
    assert [(w.start, w.end, w.label) for w in a.windows] == [(w.start, w.end, w.label) for w in b.windows]
    assert [w.score for w in a.windows] == pytest.approx([w.score for w in b.windows], abs=1e-5)


def test_short_clip_is_padded_and_says_so(tmp_path, tiny):
    path = write_video(tmp_path / "short.mp4", seconds=0.4, fps=25)
    tl = classify_file(path, loaded=tiny, device="cpu")
    assert tl.padded and len(tl.windows) == 1 and tl.windows[0].padded
    assert "shorter than one window" in tl.to_table()


@pytest.mark.slow
def test_json_and_csv_schemas(demo_clip):
    proc = run_main("classify", str(demo_clip), "--weights", "none", "--model", "tiny3d",
                    "--format", "json", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert set(d) >= {"file", "model", "weights", "meaningless", "windows", "verdict", "duration", "warning", "padded"}
    assert d["meaningless"] is True and "meaningless" in d["warning"]
    assert (d["device"], d["backend"]) == ("cpu", "torch")  # what computed the scores: torch by default on CPU
    assert d["windows"]
    for w in d["windows"]:
        assert set(w) == {"index", "start", "end", "label", "score", "top", "padded"}
        assert len(w["top"]) == 3 and w["top"][0]["label"] == w["label"]
    assert len(d["verdict"]) == 3
    out = ROOT / "artifacts" / "classify.csv"
    out.parent.mkdir(exist_ok=True)
    proc = run_main("classify", str(demo_clip), "--weights", "none", "--model", "tiny3d",
                    "--format", "csv", "--out", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == list(Timeline.CSV_FIELDS)
    assert len(rows) == len(d["windows"])
    assert [float(r["start"]) for r in rows] == pytest.approx([w["start"] for w in d["windows"]], abs=1e-3)


@pytest.mark.hardware
@pytest.mark.skipif(not openvino.bf16_supported(), reason="this CPU has no bfloat16 instructions")
@pytest.mark.slow
def test_a_lower_precision_backend_is_named_in_the_result(demo_clip):
    file = str(demo_clip)
    runs = {b: run_main("classify", file, "--weights", "none", "--model", "tiny3d", "--format", "json",
                        "--backend", b) for b in ("openvino", "openvino-bf16")}
    d = {b: json.loads(p.stdout) for b, p in runs.items() if p.returncode == 0}
    assert set(d) == set(runs), [p.stderr for p in runs.values()]
    assert [d[b]["backend"] for b in runs] == ["openvino", "openvino-bf16"]
    assert d["openvino"]["windows"]
    assert [w["index"] for w in d["openvino-bf16"]["windows"]] == [w["index"] for w in d["openvino"]["windows"]]


@pytest.mark.slow
def test_plot_is_written(demo_clip, tmp_path):
    png = tmp_path / "t.png"
    proc = run_main("classify", str(demo_clip), "--weights", "none", "--model", "tiny3d",
                    "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sports_only_renormalizes_over_sport_classes(demo_clip):
    from streamrec.models import kinetics

    tl = classify_file(demo_clip, model="r3d_18", weights="none", sports_only=True,
                       stride=5.0, top=134, device="cpu")
    sports = set(kinetics.sport_classes())
    assert len(sports) == 134 and tl.windows
    for w in tl.windows:
        assert {t["label"] for t in w.top} == sports
        assert sum(t["score"] for t in w.top) == pytest.approx(1.0, abs=1e-3)


def test_api_mirrors_the_book(demo_clip, tiny):
    tl = streamrec.classify_file(demo_clip, model="tiny3d", weights="none", device="cpu")
    assert json.loads(tl.to_json())["model"] == "tiny3d"
    pd = pytest.importorskip("pandas")
    df = tl.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == len(tl.windows)


# -- bad input ---------------------------------------------------------------------

@pytest.mark.slow
def test_corrupt_file(tmp_path, demo_clip):
    data = demo_clip.read_bytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 64 + data[4096:20000])
    assert "not a readable video file" in error_line(run_main("classify", str(bad), "--weights", "none"))


@pytest.mark.slow
def test_file_without_a_video_stream(tmp_path):
    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
    assert "has no video stream" in error_line(run_main("classify", str(path), "--weights", "none"))


@pytest.mark.parametrize("stride", ["0", "-1"])
@pytest.mark.slow
def test_stride_must_be_positive(demo_clip, stride):
    line = error_line(run_main("classify", str(demo_clip), "--stride", stride, "--weights", "none"))
    assert line == f"streamrec: error: --stride: expected 0.01 to 86400 seconds between windows, got {float(stride)}"


def test_api_raises_the_same_errors(tmp_path):
    with pytest.raises(StreamrecError, match="file not found"):
        classify_file(tmp_path / "nope.mp4", weights="none")


@pytest.mark.slow
def test_a_bad_file_is_named_as_classify_s_argument_not_serve_s_option(tmp_path):
    missing, text = tmp_path / "nope.mp4", tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    assert error_line(run_main("classify", str(missing), "--weights", "none")) == \
        f"streamrec: error: classify: file not found: {missing}"
    line = error_line(run_main("classify", str(text), "--weights", "none"))
    assert line.startswith("streamrec: error: classify: ") and str(text) in line and "--source" not in line


@pytest.mark.slow
def test_long_720p_video_stays_within_1gb(tmp_path):
    """A minute of 720p classifies within a 1 GB peak RSS (decode is streamed: its frames whole
    would be 4.9 GB)."""
    path = write_video(tmp_path / "long.mp4", seconds=60, fps=30, size=(1280, 720))
    probe = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.stdout.count(chr(10)))"
    )
    cmd = streamrec_cmd("classify", str(path), "--weights", "none", "--model", "tiny3d", "--stride", "2",
                        "--format", "csv", "--batch-size", "8")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, timeout=600, cwd=ROOT)
    rc, max_rss_kb, lines = (int(x) for x in out.stdout.split())
    print(f"peak RSS {max_rss_kb / 1024:.0f} MB for a 60 s 720p file, {lines - 1} windows")
    assert rc == 0
    assert lines - 1 == 31  # header + one window every 2 s (ends 1, 3, ..., 59 s) + the tail to 59.97 s
    assert max_rss_kb < 1024 * 1024
