"""Bad and odd video, tried for real: each ends in labels or a clear error, never a hang or crash."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streamrec.offline.classify import classify_file
from streamrec.errors import SourceError, StreamrecError
from streamrec.models.registry import load_model
from streamrec.live.sources import SourceSpec, mask_credentials

from conftest import run_main, write_frames, write_video


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny3d", weights="none")


def noise(n: int, h: int, w: int, gray: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_zero_byte_file(tmp_path, tiny):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(SourceError, match="not a readable video file"):
        classify_file(p, loaded=tiny)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(min_size=1, max_size=4096))
def test_random_bytes_named_mp4_give_a_clear_error(tmp_path, tiny, blob):
    p = tmp_path / "random.mp4"
    p.write_bytes(blob)
    with pytest.raises(StreamrecError):
        classify_file(p, loaded=tiny)


@pytest.fixture(scope="module")
def demo_mkv(demo_clip, tmp_path_factory):
    """The shipped clip's H.264 packets copied into Matroska (no re-encode)."""
    path = tmp_path_factory.mktemp("mkv") / "demo.mkv"
    with av.open(str(demo_clip)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_files(tmp_path, tiny, keep, demo_mkv):
    data = demo_mkv.read_bytes()
    p = tmp_path / "cut.mkv"
    p.write_bytes(data[: int(len(data) * keep)])
    with av.open(str(demo_mkv)) as c:
        whole_last = max(float(f.time) for f in c.decode(video=0))
    assert whole_last > 9.5  # the whole clip: 280 frames at 28 fps
    tl = classify_file(p, loaded=tiny, stride=1.0)  # mkv streams: what is there is classified
    assert tl.windows and tl.last_ts < whole_last


def test_truncated_mp4_without_index_is_a_clear_error(tmp_path, tiny):
    src = write_video(tmp_path / "full.mp4", seconds=2)
    p = tmp_path / "cut.mp4"
    p.write_bytes(src.read_bytes()[:200])
    with pytest.raises(SourceError):
        classify_file(p, loaded=tiny)


@pytest.mark.slow
def test_resolution_change_in_the_middle(tmp_path, tiny):
    a = write_frames(tmp_path / "a.ts", noise(30, 240, 320), 30, fmt="mpegts")
    b = write_frames(tmp_path / "b.ts", noise(30, 480, 640), 30, fmt="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())  # MPEG-TS concatenates
    with av.open(str(joined)) as c:
        sizes = {(f.width, f.height) for f in c.decode(video=0)}
    assert sizes == {(320, 240), (640, 480)}
    tl = classify_file(joined, loaded=tiny, stride=0.5)
    assert len(tl.windows) >= 2


def test_one_by_one_pixel_video(tmp_path, tiny):
    p = write_frames(tmp_path / "tiny.mkv", noise(20, 1, 1), 10, codec="ffv1", pix_fmt="yuv444p")
    tl = classify_file(p, loaded=tiny)
    assert tl.windows


@pytest.mark.slow
def test_4k_frames_and_grayscale(tmp_path, tiny):
    p = write_frames(tmp_path / "4k.mp4", noise(4, 2160, 3840), 30, codec="mpeg4")
    assert classify_file(p, loaded=tiny).padded
    g = write_frames(tmp_path / "gray.mkv", noise(20, 120, 160, gray=True), 10, codec="ffv1", pix_fmt="gray")
    assert classify_file(g, loaded=tiny).windows


@pytest.mark.parametrize("fps", [10, 60])
def test_10_and_60_fps_give_the_same_window_span(tmp_path, tiny, fps):
    p = write_video(tmp_path / f"v{fps}.mp4", seconds=3, fps=fps, size=(160, 120))
    tl = classify_file(p, loaded=tiny, stride=1.0)
    assert len(tl.windows) >= 2  # 3 s: windows ending at 1, 2 and 3 s
    for w in tl.windows:
        assert abs((w.end - w.start) - 1.0) <= 0.5 / fps + 1e-6


def test_credentials_never_shown():
    assert mask_credentials("rtsp://u:p%40ss@h:554/x and http://a:b@c/") == "rtsp://u:***@h:554/x and http://a:***@c/"
    assert SourceSpec.parse("rtsp://admin:hunter2@10.0.0.5/s").display_name == "rtsp://admin:***@10.0.0.5/s"


@pytest.mark.slow
def test_classify_out_is_never_half_written(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("previous,complete,file\n")
    proc = run_main("classify", str(tmp_path / "missing.mp4"), "--out", str(out), "--weights", "none")
    assert proc.returncode == 2
    assert out.read_text() == "previous,complete,file\n"  # untouched on failure
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _packets(path) -> tuple[int, int]:
    """(data packets, packets that fail to decode) of the video stream, counted with PyAV."""
    with av.open(str(path)) as c:
        n = bad = 0
        for packet in c.demux(c.streams.video[0]):
            n += packet.size > 0
            try:
                packet.decode()
            except av.error.InvalidDataError:
                bad += 1
    return n, bad


@pytest.mark.slow
def test_a_damaged_file_is_classified_as_far_as_it_decodes_and_says_so(tmp_path, tiny, demo_clip):
    data = bytearray(demo_clip.read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.integers(len(data) // 4, len(data), 1000):  # the header stays whole
        data[i] = int(rng.integers(256))
    p = tmp_path / "damaged.mp4"
    p.write_bytes(bytes(data))
    packets, bad = _packets(p)
    assert bad > 0
    tl = classify_file(p, loaded=tiny, stride=1.0)
    # how many fail depends a little on the decoder's threads (streamrec decodes files with
    # frame + slice threads; the count above used one): the same damage, not the same number
    assert tl.packets == packets and 0 < tl.decode_errors < packets
    bad = tl.decode_errors
    assert tl.damage_note == (f"{bad} of {packets} video packets could not be decoded (a damaged file?); "
                              "the timeline covers the frames that could")
    assert f"note: {tl.damage_note}" in tl.to_table()
    proc = run_main("classify", str(p), "--model", "tiny3d", "--weights", "none", "--format", "csv")
    assert proc.returncode == 0
    notes = [re.fullmatch(rf"streamrec: (\d+) of {packets} video packets could not be decoded \(a damaged file\?\); "
                          r"the timeline covers the frames that could", line) for line in proc.stderr.splitlines()]
    assert [0 < int(m[1]) < packets for m in notes if m] == [True]  # one note, on stderr

    whole = classify_file(demo_clip, loaded=tiny, stride=1.0)
    assert (whole.packets, whole.decode_errors, whole.damage_note) == (_packets(demo_clip)[0], 0, None)
