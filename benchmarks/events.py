"""The cost of event clips for one 1080p H.264 camera: the packet tap in the capture thread, the
ring's memory, and the clip writer's remux, next to what decoding the same stream costs.

    python benchmarks/events.py [--seconds 20] [--mbps 4] [--gop 30] [--ring-mb 16]

A synthetic 1920x1080 30 fps stream (a gradient with moving squares and sensor noise) is
encoded with libx264 at ``--mbps`` (constant bit rate, a keyframe every ``--gop`` frames), then:

* demux: reading the packets alone (what the capture does before decoding, either way);
* tap: :meth:`PacketRing.push` of each packet (one copy of the payload, the lock, the trim);
* decode: decoding each packet to a frame (the capture's own work, for scale; no RGB conversion);
* remux: a clip writer's work, copying every packet into a fragmented MP4 (``Recorder``);
* webcam encode: a source without compressed packets (OpenCV) has its frames encoded for the
  ring (``FrameEncoder``: libx264 ultrafast, zerolatency), at 640x480, 1280x720 and 1920x1080.

CPU is process time (the decoder's threads included; the writer's own thread's time for the
remux) per second of video (``% of a core`` for one camera in real time); the ring's
memory is measured with tracemalloc (payload and the per-packet Python objects) for a ring of
``--ring-mb`` MiB, with the seconds of history it holds at this bit rate.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamrec.event_config import RecordingConfig
from streamrec.events.recording import Recorder
from streamrec.live.encoder import H264Stream
from streamrec.live.packets import PacketRing
from streamrec.supervision import Supervisor

FPS = 30


def encode(path: Path, seconds: float, mbps: float, gop: int) -> Path:
    rng = np.random.default_rng(0)
    h, w = 1080, 1920
    base = np.tile(np.linspace(0, 200, w, dtype=np.uint8)[None, :, None], (h, 1, 3))
    noise = rng.integers(0, 24, (8, h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = int(mbps * 1e6)
        s.codec_context.gop_size = gop
        s.options = {"preset": "ultrafast", "keyint_min": str(gop), "sc_threshold": "0", "tune": "zerolatency"}
        for i in range(int(seconds * FPS)):
            img = base + noise[i % 8]
            for k in range(4):
                x = (i * (8 + 4 * k)) % (w - 200)
                img[200 + 200 * k: 360 + 200 * k, x: x + 160] = 255 - 40 * k
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            out.mux(s.encode(f))
        out.mux(s.encode())
    return path


def demux_only(path: Path) -> float:
    """Thread CPU seconds of reading every packet of ``path``."""
    t0 = time.thread_time()
    with av.open(str(path)) as c:
        for _ in c.demux(video=0):
            pass
    return time.thread_time() - t0


def timed(path: Path, work) -> tuple[float, int, int]:
    """Thread CPU seconds of ``work(packet, stream)`` over every packet of ``path`` (not the
    demuxing; process time, so a decoder's threads count); packets, bytes."""
    n = size = 0
    spent = 0.0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for p in c.demux(stream):
            if not p.size:
                continue
            t0 = time.process_time()  # the decoder's own threads count too
            work(p, stream)
            spent += time.process_time() - t0
            n, size = n + 1, size + p.size
    return spent, n, size


def measure(path: Path, ring_mb: float, tmp: Path) -> dict:
    seconds = float(av.open(str(path)).streams.video[0].frames) / FPS
    out = {"seconds": seconds}
    out["demux"] = demux_only(path)
    ring = PacketRing(int(ring_mb * 2**20), 5.0)
    started = []

    def tap(p, s):
        if not started:
            started.append(ring.new_stream(s))
        ring.push(p)

    out["tap"], out["packets"], out["bytes"] = timed(path, tap)
    out["decode"] = timed(path, lambda p, s: p.decode())[0]
    tracemalloc.start()
    ring2 = PacketRing(int(ring_mb * 2**20), 5.0)
    with av.open(str(path)) as c:
        for i, p in enumerate(c.demux(video=0)):
            if p.size:
                ring2.push(p, ts=i / FPS)
        held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["ring"] = ring2.stats()
    out["ring_memory"] = held
    out["remux"] = remux(path, tmp)
    return out


def remux(path: Path, tmp: Path) -> float:
    """CPU seconds of a clip writer copying the whole stream (its thread's time)."""
    now = [0.0]
    rec = Recorder(RecordingConfig(dir=str(tmp), pre_seconds=0.0, post_seconds=0.0, max_seconds=3600.0),
                   supervisor=Supervisor(), clock=lambda: now[0])
    ring = rec.ring("cam")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        ring.new_stream(stream)
        for i, p in enumerate(c.demux(stream)):
            if p.size:
                ring.push(p, ts=i / FPS)
    spent = []
    finished = threading.Event()

    def done(*_):  # in the writer's thread, made for this clip: its CPU time is the clip's
        spent.append(time.thread_time())
        finished.set()

    rec.on_done = done
    now[0] = 1e9  # every packet is in the past: the writer copies them all, then finishes
    rec.begin("bench", "cam", 0.0)
    rec.end("bench", "cam", 1e9)
    finished.wait(600)
    rec.close()
    return spent[0] if spent else float("nan")


def webcam_encode(width: int, height: int, frames: int = 90) -> float:
    """CPU seconds (process time: x264's threads count) a frame of the webcam encoder."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    enc = H264Stream(width, height, FPS)
    t0 = time.process_time()
    for i in range(frames):
        img = base.copy()
        img[height // 3: height // 3 + 80, (i * 8) % (width - 80):][:, :80] = 255
        enc.encode(img, i / FPS)
    return (time.process_time() - t0) / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--mbps", type=float, default=4.0)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--ring-mb", type=float, default=16.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = encode(Path(tmp) / "cam.mp4", args.seconds, args.mbps, args.gop)
        r = measure(src, args.ring_mb, Path(tmp) / "events")
    secs = r["seconds"]
    mbps = r["bytes"] * 8 / secs / 1e6
    print(f"1920x1080 H.264, {FPS} fps, {secs:.0f} s, {mbps:.2f} Mbit/s, {r['packets']} packets, keyframe every {args.gop}")
    print(f"{'work':<28}{'CPU ms/s of video':>20}{'% of a core':>14}{'us/packet':>12}")
    for name, key in (("demux (baseline)", "demux"), ("packet tap (ring.push)", "tap"),
                      ("decode (for scale)", "decode"), ("clip remux (writer)", "remux")):
        cpu = r[key]
        print(f"{name:<28}{cpu / secs * 1e3:>20.2f}{cpu / secs * 100:>14.2f}{cpu / r['packets'] * 1e6:>12.1f}")
    for w, h in ((640, 480), (1280, 720), (1920, 1080)):
        cpu = webcam_encode(w, h)
        print(f"{f'webcam encode {w}x{h}':<28}{cpu * FPS * 1e3:>20.2f}{cpu * FPS * 100:>14.2f}{cpu * 1e6:>12.1f}")
    ring = r["ring"]
    overhead = (r["ring_memory"] - ring["bytes"]) / max(1, ring["packets"])
    print(f"ring of {args.ring_mb:g} MiB: {args.ring_mb * 2**20 / (r['bytes'] / secs):.0f} s of this stream; "
          f"held {ring['seconds']:.1f} s ({ring['packets']} packets, {ring['bytes'] / 2**20:.1f} MiB of payload, "
          f"{r['ring_memory'] / 2**20:.1f} MiB in Python: {overhead:.0f} bytes per packet besides its payload), "
          f"dropped {ring['dropped_packets']} packets")


if __name__ == "__main__":
    main()
