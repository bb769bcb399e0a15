"""``streamrec classify`` against the naive per-window loop: windows per second and peak RSS.

    python benchmarks/classify.py [--video PATH | --seconds 120] [--model r2plus1d_18] [--stride 1]

The naive loop reads the whole file into memory (``torchvision.io.read_video``; torchvision 0.29
has removed it, so this does the same with PyAV: every frame decoded into one array), then
cuts 16-frame windows from it and runs them one by one, eager fp32. streamrec is the real
command (``python -m streamrec classify FILE --format json``): it decodes once, streaming,
and runs windows in batches on its chosen backend. Each side runs as its own command; its
peak RSS is the sum over the command's processes (streamrec's first start has a child
prepare the model), sampled every 20 ms, and windows per second count the whole command's
wall time, start-up included. Both end without the C-level teardown of torch's libraries
(``os._exit``, as streamrec's CLI does), which pages in ~130 MB of library code after the
work is done. Random weights (timings do not depend on them), saved where torchvision's
Kinetics-400 file goes in a temporary torch hub cache, so that both sides load
``--weights DEFAULT`` the real way; streamrec runs twice, as a first start (it fills its
prepared-model cache) and as a later start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest: write_video, run_measuring_rss

NAIVE = r"""
import os, sys, time, json
t0 = time.perf_counter()
import av, numpy as np, torch
from torchvision.transforms._presets import VideoClassification
from streamrec.models.registry import load_model
from streamrec.runtime.classifier import default_threads
torch.set_num_threads(default_threads())
path, model, stride = sys.argv[1], sys.argv[2], float(sys.argv[3])
loaded = load_model(model, weights="DEFAULT")
sp = loaded.spec
with av.open(path) as c:
    fps = float(c.streams.video[0].average_rate)
    video = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # the whole file in memory
transform = VideoClassification(crop_size=sp.crop, resize_size=sp.resize, mean=sp.mean, std=sp.std)
step = max(1, round(fps / sp.fps))
span = (sp.frames - 1) * step + 1
n = 0
with torch.no_grad():
    for end in range(span, len(video) + 1, max(1, round(stride * fps))):
        clip = torch.from_numpy(video[end - span:end:step]).permute(0, 3, 1, 2)  # (T,H,W,C)->(T,C,H,W)
        loaded.module.eval()(transform(clip).unsqueeze(0))
        n += 1
print(json.dumps({"windows": n}))
sys.stdout.flush()
os._exit(0)
"""


def measure(cmd: list[str]) -> dict:
    from conftest import run_measuring_rss

    t0 = time.perf_counter()
    out, peak = run_measuring_rss(cmd, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"benchmark run failed: {out.stderr[-2000:]}")
    doc = json.loads(out.stdout)
    windows = doc["windows"] if isinstance(doc["windows"], int) else len(doc["windows"])
    return {"windows": windows, "seconds": seconds, "peak_rss_mb": peak / 2**20, "windows_per_s": windows / seconds}


def synthetic(seconds: float, path: Path) -> Path:
    from conftest import write_video

    return write_video(path, seconds=seconds, fps=30, size=(1280, 720))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=None, help="default: a synthetic 720p file of --seconds")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--stride", type=float, default=1.0)
    ap.add_argument("--backend", default="default", help="classify's default (torch on CPU), or a backend name")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    video = Path(args.video) if args.video else synthetic(args.seconds, work / "bench720p.mp4")
    os.environ.update(TORCH_HOME=str(work / "torch"), STREAMREC_CACHE=str(work / "cache"), STREAMREC_OFFLINE="1")
    sys.path.insert(0, str(ROOT))
    from conftest import save_default_weights

    save_default_weights(args.model, work / "torch")
    naive = measure([sys.executable, "-c", NAIVE, str(video), args.model, str(args.stride)])
    cmd = [sys.executable, "-m", "streamrec", "classify", str(video), "--model", args.model, "--weights", "DEFAULT",
           "--stride", str(args.stride), "--device", "cpu", "--format", "json"]
    cmd += [] if args.backend == "default" else ["--backend", args.backend]
    first = measure(cmd)
    later = measure(cmd)
    print(f"# classify {video.name} ({args.seconds:.0f} s 720p unless --video), {args.model}, stride {args.stride} s")
    print("| approach | windows | windows/s (wall, start-up included) | peak RSS (all processes) |")
    print("|---|---|---|---|")
    print(f"| book: whole file in memory, eager, one window at a time | {naive['windows']} | {naive['windows_per_s']:.2f} | {naive['peak_rss_mb']:.0f} MiB |")
    for what, r in (("first start", first), ("later start", later)):
        print(f"| streamrec classify (streaming, backend {args.backend}), {what} | {r['windows']} | {r['windows_per_s']:.2f} | {r['peak_rss_mb']:.0f} MiB |")


if __name__ == "__main__":
    main()
