"""Stand-in weights for timing int8 where the Kinetics-400 weights cannot be downloaded.

    python benchmarks/stand_in_weights.py OUT.pt [--model r2plus1d_18] [--clips DIR]

``streamrec quantize`` refuses random weights (``--weights none``): their agreement with fp32
says nothing about a trained model's. For timings, which do not depend on the values, this
writes a torchvision state_dict (a Kinetics-400 head, so the file loads as ``--weights OUT.pt``)
of random convolutions whose batch-norm statistics are measured on windows of real clips: the
outputs then depend on the input as a trained model's do (with random batch norms every window
gets the same label), and the quantizer meets activations of a realistic spread. The labels
are still meaningless: never show them as a recognition result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the real clips beside the repository, else the clip shipped in demo/clips
CLIPS = ROOT.parent / "shared" / "clips" if (ROOT.parent / "shared" / "clips").is_dir() else ROOT / "demo" / "clips"
sys.path.insert(0, str(ROOT))


def batchnorm_from_clips(net: torch.nn.Module, windows: list[torch.Tensor]) -> torch.nn.Module:
    """Set every batch norm's running mean and variance to their averages over ``windows``
    (each ``(1, C, T, H, W)``); ``net`` comes back in eval mode."""
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average, not an exponential one
    with torch.no_grad():
        for w in windows:
            net(w)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--clips", default=str(CLIPS))
    ap.add_argument("--stride", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from streamrec.offline.bench import clip_windows
    from streamrec.offline.dataset import video_files
    from streamrec.models.registry import load_model

    torch.manual_seed(args.seed)
    loaded = load_model(args.model, weights="none")
    windows = clip_windows(video_files([args.clips]), loaded, stride=args.stride)
    torch.save(batchnorm_from_clips(loaded.module, windows).state_dict(), args.out)
    print(f"wrote {args.out}: {args.model}, batch norms measured on {len(windows)} windows (labels meaningless)")


if __name__ == "__main__":
    main()
