"""What recording event clips costs the live pipeline: the same cameras served with and without a
rule that keeps an event (and its clip) open all the time.

    python benchmarks/events_live.py [--cameras 1,8] [--seconds 30] [--warmup 15] [--out FILE.json]

Each camera plays the shipped demo clip (H.264, 340x256, 28 fps), looped into one long file so
that a clip is never cut by a reopened source, through a real ``streamrec serve`` process.
The model is tiny3d with a head that always answers one class (a stand-in: the timings do not
depend on the weights, and a rule on that class opens an event at once and keeps it open).
After ``--warmup`` seconds, for ``--seconds``: the server's CPU time (all its threads, as a
share of one core), its resident memory, each camera's ``latency_ms_p95`` from ``/healthz``
and the bytes in its packet ring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.fsutil import DEMO_CLIP  # noqa: E402


def long_clip(folder: Path, loops: int) -> Path:
    """The demo clip played ``loops`` times, copied packet for packet (no re-encode)."""
    out = folder / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", str(loops - 1), "-i", str(DEMO_CLIP), "-c", "copy",
                    "-y", str(out)], check=True)
    return out


def stand_in_model(folder: Path) -> Path:
    import torch

    from streamrec.models.registry import build_model, make_checkpoint, model_spec

    module = build_model("tiny3d", num_classes=3)
    with torch.no_grad():
        module.fc.weight.zero_()
        module.fc.bias.copy_(torch.tensor([0.0, 12.0, 0.0]))
    path = folder / "stand_in.pt"
    torch.save(make_checkpoint(module, model="tiny3d", classes=["a", "b", "c"], spec=model_spec("tiny3d")), path)
    return path


def config(folder: Path, clip: Path, weights: Path, cameras: int, port: int, record: bool, span_s: float) -> Path:
    lines = [f'weights = "{weights}"', 'device = "cpu"', 'backend = "torch"', f"port = {port}",
             f'db = "{folder / ("rec.db" if record else "plain.db")}"']
    for i in range(cameras):
        lines += ["[[cameras]]", f'name = "cam{i}"', f'source = "{clip}"']
    if record:
        lines += ["[[rules]]", 'name = "always"', 'labels = ["b"]', "min_seconds = 0", "end_seconds = 3600",
                  "[recording]", f'dir = "{folder / "clips"}"', f"max_seconds = {span_s + 120}"]
    path = folder / f"{'rec' if record else 'plain'}-{cameras}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        return json.loads(r.read())


def run_one(cfg: Path, port: int, warmup: float, seconds: float) -> dict:
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "streamrec", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                health(port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the server did not start: {cfg}")
                time.sleep(0.5)
        time.sleep(warmup)
        p = psutil.Process(proc.pid)
        c0, t0 = p.cpu_times(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = p.cpu_times(), time.monotonic()
        h = health(port)
        rss = p.memory_info().rss
    finally:
        proc.terminate()
        proc.wait(30)
    cams = h["cameras"].values()
    rings = (h.get("events") or {}).get("recording", {}).get("rings", {})
    return {"cpu_share": (c1.user + c1.system - c0.user - c0.system) / (t1 - t0),
            "latency_ms_p95": statistics.median(c["latency_ms_p95"] for c in cams if c["latency_ms_p95"] is not None),
            "rss_mb": rss / 2**20, "ring_mb_per_camera": (statistics.mean(r["bytes"] for r in rings.values()) / 2**20
                                                          if rings else 0.0),
            "events_open": (h.get("events") or {}).get("open", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", default="1,8", help="comma-separated camera counts")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        span = args.warmup + args.seconds
        clip = long_clip(folder, loops=int(span / 10) + 6)
        weights = stand_in_model(folder)
        for n in (int(x) for x in args.cameras.split(",")):
            for record in (False, True):
                r = run_one(config(folder, clip, weights, n, args.port, record, span), args.port, args.warmup,
                            args.seconds)
                rows.append({"cameras": n, "recording": record, **r})
    print("| cameras | rule and clips | CPU, % of a core | per camera | latency p95 (ms) | RSS (MiB) | "
          "ring per camera (MiB) | events open |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cameras']} | {'on' if r['recording'] else 'off'} | {100 * r['cpu_share']:.1f} | "
              f"{100 * r['cpu_share'] / r['cameras']:.1f} | {r['latency_ms_p95']:.0f} | {r['rss_mb']:.0f} | "
              f"{r['ring_mb_per_camera']:.2f} | {r['events_open']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
