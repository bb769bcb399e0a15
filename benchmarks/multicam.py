"""Many cameras on one model: labels per second per camera, latency and batching.

    python benchmarks/multicam.py [--cameras 32] [--seconds 30] [--warmup 10] [--device auto]
                                  [--model r2plus1d_18] [--clip PATH] [--json OUT]

Runs the real server (``LiveApp``: one capture thread per camera, one batching inference
thread, the asyncio websocket server with one dashboard client reading every message and
preview frame) with ``--cameras`` cameras, each replaying ``--clip`` in a loop at its own
frame rate as if live. After ``--warmup`` seconds it counts, for ``--seconds``, every
camera's predictions, and reads capture rates, latency, batch sizes and drops.

Weights are random (``--weights none``): timings do not depend on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.serve.app import LiveApp  # noqa: E402
from streamrec.config import CameraConfig, ServeConfig  # noqa: E402

from streamrec.fsutil import DEMO_CLIP  # noqa: E402

# a 30 fps clip of the real clips beside the repository ($STREAMREC_CLIPS, else ../shared/clips);
# without them, the 28 fps clip shipped in demo/clips
CLIPS = Path(os.environ.get("STREAMREC_CLIPS") or ROOT.parent / "shared" / "clips")
CLIP = CLIPS / "cleaning_pool.mp4" if (CLIPS / "cleaning_pool.mp4").is_file() else DEMO_CLIP


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


async def dashboard(port: int, stop: asyncio.Event, counts: dict) -> None:
    """One browser-like client: reads every prediction, status and preview frame."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22) as ws:
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=0.2)
            except asyncio.TimeoutError:
                continue
            kind = "frame" if isinstance(msg, bytes) else json.loads(msg)["type"]
            counts[kind] = counts.get(kind, 0) + 1


def run(*, cameras: int, seconds: float, warmup: float, device: str, model: str, clip: Path,
        backend: str = "auto", batch_wait_ms: float = 10.0) -> dict:
    db = Path(tempfile.mkdtemp()) / "history.db"
    cams = tuple(CameraConfig(name=f"cam{i:02d}", source=str(clip), loop=True) for i in range(cameras))
    cfg = ServeConfig(cameras=cams, weights="none", model=model, device=device, port=0, db=str(db),
                      backend=backend, batch_wait_ms=batch_wait_ms)
    t_load = time.perf_counter()
    app = LiveApp(cfg)
    load_s = time.perf_counter() - t_load
    counts: dict[str, int] = {}
    marks: dict[str, dict] = {}

    def snapshot() -> dict:
        w = next(iter(app.workers.values()))
        return {"t": time.monotonic(), "seq": {n: c.seq for n, c in app.cameras.items()},
                "frames": {n: c.capture.frames for n, c in app.cameras.items()},
                "batches": w.batches, "sizes": len(w.batch_sizes), "cpu": os.times()}

    async def main() -> None:
        runner = asyncio.create_task(app.run())
        while app.server.port == 0:
            await asyncio.sleep(0.05)
        stop = asyncio.Event()
        client = asyncio.create_task(dashboard(app.server.port, stop, counts))
        await asyncio.sleep(warmup)
        marks["a"] = snapshot()
        await asyncio.sleep(seconds)
        marks["b"] = snapshot()
        stop.set()
        await client
        app.request_stop()
        await runner

    asyncio.run(main())
    a, b = marks["a"], marks["b"]
    dt = b["t"] - a["t"]
    worker = next(iter(app.workers.values()))
    clf = worker.classifier
    rates = [(b["seq"][n] - a["seq"][n]) / dt for n in a["seq"]]
    fps = [(b["frames"][n] - a["frames"][n]) / dt for n in a["frames"]]
    lat = [list(c.latency_ms) for c in app.cameras.values()]
    infer = [v for c in app.cameras.values() for v in c.infer_ms]
    sizes = list(worker.batch_sizes)[-max(1, b["batches"] - a["batches"]):]
    cpu_s = (b["cpu"].user + b["cpu"].system) - (a["cpu"].user + a["cpu"].system)
    out = {
        "cameras": cameras, "clip": clip.name, "model": model, "device": str(clf.device), "backend": clf.backend,
        "threads_alive": threading.active_count(), "load_s": load_s, "seconds": dt,
        "labels_per_s_per_camera": {"min": min(rates), "median": float(np.median(rates)), "max": max(rates)},
        "labels_per_s_total": sum(rates),
        "capture_fps_per_camera": {"min": min(fps), "median": float(np.median(fps))},
        "latency_ms_p50": float(np.median([pct(v, 50) for v in lat if v])),
        "latency_ms_p95": float(np.median([pct(v, 95) for v in lat if v])),
        "latency_ms_p95_worst_camera": max(pct(v, 95) for v in lat if v),
        "infer_ms_per_batch_p50": pct(infer, 50),
        "batch_mean": float(np.mean(sizes)) if sizes else 0.0, "batch_max": max(sizes, default=0),
        "assemble_ms_p50": pct(worker.assemble_ms, 50),
        "wait_ms_p50": pct(worker.wait_ms, 50),  # from one batch's end to the next one's start
        "emit_ms_per_batch_p50": pct(worker.post_ms, 50) * (float(np.mean(sizes)) if sizes else 0.0),
        "frames_dropped": sum(c.ring.dropped for c in app.cameras.values()),
        "windows_skipped": sum(c.skipped for c in app.cameras.values()),
        "process_cpu_cores_busy": cpu_s / dt, "client_messages": counts, "timings": clf.timings,
    }
    if clf.cuda:
        import torch

        out["gpu"] = torch.cuda.get_device_name(clf.device)
        out["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(clf.device) / 2**20
    return out


def table(r: dict) -> str:
    lr, cf = r["labels_per_s_per_camera"], r["capture_fps_per_camera"]
    rows = [
        ("cameras", f"{r['cameras']} × {r['clip']} (looped, paced at its frame rate)"),
        ("model / device / backend", f"{r['model']} / {r.get('gpu') or r['device']} / {r['backend']}"),
        ("labels per second per camera", f"min {lr['min']:.2f}, median {lr['median']:.2f}, max {lr['max']:.2f} "
                                         f"({r['labels_per_s_total']:.1f} in all)"),
        ("capture fps per camera", f"min {cf['min']:.1f}, median {cf['median']:.1f}"),
        ("latency_ms p50 / p95 (median camera)", f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f} "
                                                 f"(worst camera p95 {r['latency_ms_p95_worst_camera']:.0f})"),
        ("inference per batch p50", f"{r['infer_ms_per_batch_p50']:.1f} ms, batch mean {r['batch_mean']:.1f}, "
                                    f"max {r['batch_max']}"),
        ("window assembly per batch p50", f"{r['assemble_ms_p50']:.1f} ms"),
        ("per batch p50: waiting for windows / smoothing and messages", f"{r['wait_ms_p50']:.1f} / "
                                                                         f"{r['emit_ms_per_batch_p50']:.1f} ms"),
        ("frames dropped / window ends skipped", f"{r['frames_dropped']} / {r['windows_skipped']}"),
        ("process CPU", f"{r['process_cpu_cores_busy']:.1f} cores busy"),
    ]
    if "gpu_peak_mem_mb" in r:
        rows.append(("GPU memory peak", f"{r['gpu_peak_mem_mb']:.0f} MB"))
    return "\n".join(["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--clip", default=str(CLIP), help="a 30 fps clip by default")
    ap.add_argument("--switch-interval-ms", type=float, default=None,
                    help="Python's thread switch interval for this run (default: what the server sets)")
    ap.add_argument("--ffmpeg-decoder-threads", action="store_true",
                    help="FFmpeg's own decoder threading for every stream (before 2026-11-26: small ones too)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # backend choice, to stderr
    clip = Path(args.clip)
    if not clip.is_file():
        sys.exit(f"benchmark: clip not found: {clip}")
    if args.cameras < 1:
        sys.exit(f"benchmark: --cameras: expected >= 1, got {args.cameras}")
    if args.ffmpeg_decoder_threads:
        from streamrec.live import sources

        sources.SINGLE_THREAD_MAX_PIXELS = 0
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    r = run(cameras=args.cameras, seconds=args.seconds, warmup=args.warmup, device=args.device, model=args.model,
            clip=clip, backend=args.backend, batch_wait_ms=args.batch_wait_ms)
    print(f"# many cameras, {r['model']}, {r['seconds']:.0f} s after {args.warmup:.0f} s warm-up")
    print(table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
