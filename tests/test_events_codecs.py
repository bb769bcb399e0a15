"""Which clips a browser plays: a camera whose codec browsers do not play is named at start, and
its events' clips say so in the API (the page offers them as downloads). Real files of each
codec (the shared MPEG-4 Part 2 .avi, HEVC and MJPEG made by ffmpeg) through a real Recorder."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from streamrec.serve.routes import events_api

from test_events_delete import Rig
from test_recording import h264


def ffmpeg_clip(path, codec: str) -> object:
    if shutil.which("ffmpeg") is None:
        pytest.skip(f"ffmpeg is not installed: it makes the {codec} file this test records")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "12",
                    "-c:v", codec, "-g", "30", "-pix_fmt", "yuvj420p" if codec == "mjpeg" else "yuv420p", str(path)],
                   check=True, timeout=300)
    return path


@pytest.fixture(params=["h264", "mpeg4-avi", "hevc-mkv", "mjpeg-avi"])
def source(request, tmp_path):
    if request.param == "h264":
        return "h264", h264(tmp_path / "cam.mp4", 12.0)
    if request.param == "mpeg4-avi":  # a real clip: MPEG-4 Part 2 in AVI
        return "mpeg4", request.getfixturevalue("clips") / "applying_makeup.avi"
    if request.param == "hevc-mkv":
        return "hevc", ffmpeg_clip(tmp_path / "cam.mkv", "libx265")
    return "mjpeg", ffmpeg_clip(tmp_path / "cam.avi", "mjpeg")


@pytest.mark.slow
def test_clips_browsers_cannot_play_are_named_at_start_and_in_the_api(tmp_path, source, caplog):
    codec, src = source
    caplog.set_level(logging.WARNING, logger="streamrec.live.packets")
    rig = Rig(tmp_path, src)
    rig.labels("walking", 0.25)  # the source opens
    warnings = [r.getMessage() for r in caplog.records if "browsers do not play" in r.getMessage()]
    plays = codec == "h264"
    assert warnings == ([] if plays else [
        f"camera cam: its video is {codec}: event clips are recorded as they come, but browsers do not play {codec} "
        "(they play h264, vp9, av1); the page offers its clips as downloads (VLC and mpv play them)"])
    rig.labels("pouring", 2.25)
    rig.labels("walking", 4.0)
    [eid] = rig.opened()
    rig.labels("walking", 6.0)
    rig.manager.flush()
    reply = events_api(rig.manager).handler("GET", f"/api/events/{eid}", {})
    assert reply.status == 200
    assert (reply.body["clip_codec"], reply.body["clip_plays_in_browser"]) == (codec, plays)
    listed = events_api(rig.manager).handler("GET", "/api/events", {}).body["events"]
    assert [(e["id"], e["clip_plays_in_browser"]) for e in listed] == [(eid, plays)]
    rig.manager.close()
    rig.play.source.close()


def test_a_camera_no_rule_watches_keeps_no_packets(tmp_path):
    from streamrec.event_config import RuleConfig

    rig = Rig(tmp_path, h264(tmp_path / "cam.mp4", 2.0), RuleConfig(name="pour", labels=("pouring",),
                                                                     cameras=("cam",)))
    assert rig.manager.packet_ring("cam") is not None and rig.manager.packet_ring("door") is None
    rig.manager.close()
