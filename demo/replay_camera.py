"""Replay a clip as a live camera, so the dashboard can be tried without a webcam.

Two ways, both real streams a camera would give:

* ``python demo/replay_camera.py CLIP`` serves the clip looped over RTSP at
  ``rtsp://127.0.0.1:8554/cam`` with GStreamer's RTSP server (Debian:
  ``gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{base,good,ugly}``; run it
  with the system ``/usr/bin/python3``), then:
  ``streamrec serve --source rtsp://127.0.0.1:8554/cam``.
* Without GStreamer, ``streamrec serve --source CLIP --loop`` already plays a file paced
  by its timestamps, exactly as a camera would deliver it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    try:
        import gi  # noqa: F401 - GStreamer's bindings: Debian's python3-gi, not on PyPI
    except ImportError:
        print("replay_camera.py: error: needs GStreamer's Python bindings (Debian: python3-gi "
              "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base/good/ugly); run it with /usr/bin/python3, "
              "or without GStreamer: streamrec serve --source CLIP --loop", file=sys.stderr)
        sys.exit(2)
    helper = Path(__file__).resolve().parents[1] / "tests" / "rtsp_server.py"
    sys.argv = [str(helper), *sys.argv[1:]]
    runpy.run_path(str(helper), run_name="__main__")
