"""How much of a window's computation could the next, overlapping window reuse, exactly?

    python benchmarks/window_reuse.py [--model r2plus1d_18] [--shifts 1,2,4,8]

Live windows overlap: at 15 fps sampling, a window that starts one sampled frame later
shares 15 of its 16 frames with the one before. A stage's output at a time step can be
reused when it is the same in both windows. This measures it, it does not assume it: for
two windows of real frames, shifted by ``s`` sampled frames, it runs each stage of the
network (stem, layer1..4) and counts the output time steps that are identical (within
1e-5) at the aligned position. With each stage's FLOPs (torch's FLOP counter) that gives
the most an exact cache of earlier windows' features could save.

Random weights with non-trivial batch-norm statistics: which positions match depends on the
architecture (temporal kernels, padding, strides), not on the weight values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.models.registry import load_model  # noqa: E402
from streamrec.models.preprocess import FramePreprocessor  # noqa: E402
from streamrec.live.sources import PyAVSource, SourceSpec  # noqa: E402

from streamrec.fsutil import DEMO_CLIP  # noqa: E402


def stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, getattr(net, n)) for n in ("stem", "layer1", "layer2", "layer3", "layer4")]


def stage_flops(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    with torch.no_grad():
        for name, mod in stages(net):
            counter = FlopCounterMode(display=False)
            with counter:
                y = mod(x)
            out[name] = counter.get_total_flops() / 1e9
            x = y
        counter = FlopCounterMode(display=False)
        with counter:
            net.fc(net.avgpool(x).flatten(1))
        out["head"] = counter.get_total_flops() / 1e9
    return out


def reusable_steps(net: nn.Module, a: torch.Tensor, b: torch.Tensor, shift: int) -> dict[str, tuple[int, int]]:
    """Per stage: (time steps of window b equal to window a's at the aligned step, all steps)."""
    out = {}
    with torch.no_grad():
        for name, mod in stages(net):
            a, b = mod(a), mod(b)
            t = a.shape[2]
            ratio = 16 // t  # input frames per output step at this stage
            if shift % ratio:
                out[name] = (0, t)  # the shift does not land on this stage's time grid
                continue
            s = shift // ratio
            same = 0
            for j in range(t - s):  # b's step j sees the frames of a's step j + s
                if torch.allclose(b[:, :, j], a[:, :, j + s], atol=1e-5, rtol=0):
                    same += 1
            out[name] = (same, t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="r2plus1d_18", choices=("r2plus1d_18", "r3d_18", "mc3_18"))
    ap.add_argument("--shifts", default="1,2,4,8")
    ap.add_argument("--clip", default=str(DEMO_CLIP))
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model, weights="none")
    net = loaded.module.eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    pre = FramePreprocessor(loaded.spec)
    with PyAVSource(SourceSpec.parse(args.clip)) as src:
        frames = [pre.resize_crop(rgb) for (rgb, _), _ in zip(src.frames(), range(80))][::2]  # 15 fps of a 30 fps clip
    shifts = [int(s) for s in args.shifts.split(",")]
    base = pre.window(np.stack(frames[:16]))
    flops = stage_flops(net, base)
    total = sum(flops.values())
    print(f"# exact reuse between overlapping windows, {args.model}, {total:.1f} GFLOP per window")
    print("\nFLOPs per stage: " + ", ".join(f"{k} {v:.1f} ({v / total * 100:.0f} %)" for k, v in flops.items()))
    print("\n| shift (sampled frames) | " + " | ".join(f"{n}: equal steps" for n, _ in stages(net)) + " | most FLOPs an exact cache could save |")
    print("|---|" + "---|" * (len(stages(net)) + 1))
    for s in shifts:
        if s >= 16 or s + 16 > len(frames):
            continue
        nxt = pre.window(np.stack(frames[s : s + 16]))
        r = reusable_steps(net, base, nxt, s)
        saved = sum(flops[n] * same / t for n, (same, t) in r.items())
        cells = " | ".join(f"{same}/{t}" for same, t in r.values())
        print(f"| {s} | {cells} | {saved:.2f} GFLOP ({saved / total * 100:.1f} %) |")


if __name__ == "__main__":
    main()
