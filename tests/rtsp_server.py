"""A real RTSP server for tests and demos: GStreamer's gst-rtsp-server streaming a clip as H.264.

Run with the system interpreter (it needs python3-gi from Debian, not the venv):

    /usr/bin/python3 tests/rtsp_server.py CLIP [--port 8554] [--path /cam] [--fps 25]

Each client session plays the clip from its start, re-encoded to H.264 at ``--fps``
(``x264enc tune=zerolatency``) and packed into RTP. Prints ``READY rtsp://...`` once
listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--fps", type=int, default=25)
    args = ap.parse_args()
    if not os.path.isfile(args.clip):
        ap.error(f"clip: file not found: {args.clip}")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    clip = args.clip.replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{clip}" ! decodebin ! videoconvert ! videorate ! '
        f"video/x-raw,format=I420,framerate={args.fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 2
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://{args.host}:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
