"""Where the GPU time of one batch goes: CUDA kernels by total time, per model variant.

    python benchmarks/gpu_profile.py [--model r2plus1d_18] [--batch 32]

Runs each variant of :func:`streamrec.runtime.graphs.conv_variants` (TorchScript, fp16,
``channels_last_3d``) under ``torch.profiler`` for 5 batches and prints its top kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.runtime.graphs import conv_variants  # noqa: E402
from streamrec.models.registry import load_model  # noqa: E402


def kernels(fn, x: torch.Tensor, top: int, calls: int = 5) -> tuple[float, list[str]]:
    """CUDA kernel time of one ``fn(x)`` (ms, mean of ``calls`` after as many warm-up calls) and
    its ``top`` kernels by total time: share, launches per call, name."""
    with torch.no_grad():
        for _ in range(calls):
            fn(x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn(x)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    return total / calls / 1e3, [f"{e.self_device_time_total / total * 100:5.1f} %  {e.count // calls:4d}/call  {e.key[:110]}"
                                 for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_profile: needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    loaded = load_model(args.model, weights="none")
    net = loaded.module.eval().cuda().half().to(memory_format=torch.channels_last_3d)
    x = torch.randn(args.batch, 3, loaded.spec.frames, *loaded.spec.crop, device="cuda", dtype=torch.half)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    for name, variant in conv_variants(net).items():
        with torch.no_grad():
            m = torch.jit.freeze(torch.jit.trace(variant, x[:1], check_trace=False))
            total_ms, lines = kernels(m, x, args.top)
        print(f"\n## {args.model}{name or ' (as is)'}: {total_ms:.2f} ms of kernels per batch of {args.batch}")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
