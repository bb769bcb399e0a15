"""Capture throughput with many cameras: FFmpeg's own decoder threads vs one per small stream.

    python benchmarks/decode_threads.py [--cameras 1,16,64] [--seconds 4] [--clip PATH]

Each camera is a thread running streamrec's capture work as fast as it can (no pacing):
decode a frame with PyAV, convert it to RGB, resize and crop it for r2plus1d_18. Prints the
frames per second of all cameras together and the CPU cores the process kept busy, with
small frames decoded in the capture thread alone (``single``: streamrec's choice, see
``streamrec.live.sources.decoder_threading``) and with FFmpeg's own threading (``ffmpeg``: frame +
slice threads, one per core plus one, per decoder). OpenCV runs on one thread, as in the server.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from streamrec.live import sources  # noqa: E402
from streamrec.models.registry import model_spec  # noqa: E402
from streamrec.models.preprocess import FramePreprocessor  # noqa: E402

from streamrec.fsutil import DEMO_CLIP  # noqa: E402

# a 30 fps clip of the real clips beside the repository ($STREAMREC_CLIPS, else ../shared/clips);
# without them, the 28 fps clip shipped in demo/clips
CLIPS = Path(os.environ.get("STREAMREC_CLIPS") or ROOT.parent / "shared" / "clips")
CLIP = CLIPS / "cleaning_pool.mp4" if (CLIPS / "cleaning_pool.mp4").is_file() else DEMO_CLIP


def camera(spec: sources.SourceSpec, pre: FramePreprocessor, stop: threading.Event, counts: list[int], i: int) -> None:
    while not stop.is_set():
        with sources.open_source(spec) as src:
            for rgb, _ in src.frames():
                pre.resize_crop(rgb)
                counts[i] += 1
                if stop.is_set():
                    break


def measure(clip: Path, cameras: int, seconds: float, *, single: bool) -> tuple[float, float]:
    """(frames per second of all cameras, CPU cores busy)."""
    sources.SINGLE_THREAD_MAX_PIXELS = 640 * 480 if single else 0
    spec = sources.SourceSpec.parse(str(clip))
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    stop, counts = threading.Event(), [0] * cameras
    threads = [threading.Thread(target=camera, args=(spec, pre, stop, counts, i), name=f"cam{i}") for i in range(cameras)]
    t0, c0 = time.perf_counter(), os.times()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(10)
    dt, c1 = time.perf_counter() - t0, os.times()
    return sum(counts) / dt, (c1.user + c1.system - c0.user - c0.system) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clip", default=str(CLIP))
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as the server does (streamrec.serve.app): each resize in its capture thread
    clip = Path(args.clip)
    if not clip.is_file():
        sys.exit(f"benchmark: clip not found: {clip}")
    try:
        counts = [int(n) for n in args.cameras.split(",")]
    except ValueError:
        sys.exit(f"benchmark: --cameras: expected numbers separated by commas, got {args.cameras!r}")
    if min(counts) < 1:
        sys.exit(f"benchmark: --cameras: expected numbers >= 1, got {args.cameras!r}")
    print(f"# capture as fast as it goes, {clip.name}, {os.cpu_count()} CPUs, {args.seconds:.0f} s per row")
    print("| cameras | decoder threads | frames/s, all cameras | CPU cores busy |")
    print("|---|---|---|---|")
    for n in counts:
        for single in (False, True):
            fps, cores = measure(clip, n, args.seconds, single=single)
            label = "one per small stream (streamrec)" if single else "FFmpeg's own (cores + 1 per decoder)"
            print(f"| {n} | {label} | {fps:.0f} | {cores:.1f} |", flush=True)


if __name__ == "__main__":
    main()
