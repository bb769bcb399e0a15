"""``streamrec classify`` against the book's approach: windows per second and peak RSS.

    python benchmarks/classify.py [--video PATH | --seconds 120] [--model r2plus1d_18] [--stride 1]

The book reads the whole file into memory (``torchvision.io.read_video``; torchvision 0.29
has removed it, so this does the same with PyAV: every frame decoded into one array), then
cuts 16-frame windows from it and runs them one by one, eager fp32. streamrec decodes once,
streaming, and runs windows in batches on its chosen backend. Each side runs in its own
process, so the peak RSS is its own. Random weights (timings do not depend on them), saved
where torchvision's Kinetics-400 file goes in a temporary torch hub cache, so that both
sides load ``--weights DEFAULT`` the real way; streamrec runs twice, as a first start (it
fills its prepared-model cache) and as a later start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NAIVE = r"""
import sys, time, json
import av, numpy as np, torch
from torchvision.transforms._presets import VideoClassification
from streamrec.models import load_model
from streamrec.engine import default_threads
torch.set_num_threads(default_threads())
path, model, stride = sys.argv[1], sys.argv[2], float(sys.argv[3])
loaded = load_model(model, weights="DEFAULT")
sp = loaded.spec
t0 = time.perf_counter()
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
print(json.dumps({"windows": n, "seconds": time.perf_counter() - t0}))
"""

STREAMREC = r"""
import sys, time, json
from streamrec.classify import classify_file
path, model, stride, backend = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
tl = classify_file(path, model=model, weights="DEFAULT", stride=stride, device="cpu",
                   backend=None if backend == "default" else backend)
print(json.dumps({"windows": len(tl.windows), "seconds": time.perf_counter() - t0}))
"""

PEAK = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); " \
       "print(r.stdout.strip()); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr[-2000:])"


def measure(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-c", code, *args], capture_output=True,
                         text=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    if len(lines) < 2 or not lines[-2].startswith("{"):
        sys.exit(f"benchmark run failed: {out.stderr[-2000:]}")
    result = json.loads(lines[-2])
    result["peak_rss_mb"] = int(lines[-1]) / 1024
    result["windows_per_s"] = result["windows"] / result["seconds"]
    return result


def synthetic(seconds: float, path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
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
    import torch

    from streamrec.models import build_model, hub_checkpoint_path

    hub = hub_checkpoint_path(args.model)
    hub.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_model(args.model, num_classes=400).state_dict(), hub)
    naive = measure(NAIVE, str(video), args.model, str(args.stride))
    first = measure(STREAMREC, str(video), args.model, str(args.stride), args.backend)
    later = measure(STREAMREC, str(video), args.model, str(args.stride), args.backend)
    print(f"# classify {video.name} ({args.seconds:.0f} s 720p unless --video), {args.model}, stride {args.stride} s")
    print("| approach | windows | windows/s | peak RSS |")
    print("|---|---|---|---|")
    print(f"| book: whole file in memory, eager, one window at a time | {naive['windows']} | {naive['windows_per_s']:.2f} | {naive['peak_rss_mb']:.0f} MiB |")
    for what, r in (("first start", first), ("later start", later)):
        print(f"| streamrec classify (streaming, backend {args.backend}), {what} | {r['windows']} | {r['windows_per_s']:.2f} | {r['peak_rss_mb']:.0f} MiB |")


if __name__ == "__main__":
    main()
