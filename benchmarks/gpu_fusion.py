"""Convolution + bias + ReLU (+ shortcut) fused into one cuDNN call, against the unfused variants, on a GPU.

    python benchmarks/gpu_fusion.py [--model r2plus1d_18] [--batches 1,32] [--inductor] [--json out.json]

For each variant of :func:`streamrec.runtime.graphs.conv_variants` (fp16, ``channels_last_3d``,
eager and frozen TorchScript, each replayed through CUDA graphs), prints per batch size:
ms per batch, windows/s, and achieved TFLOP/s as a share of the measured fp16 matmul
peak; then the max |logit difference| against eager fp32, how many fused call sites cuDNN
refused, and the top kernels of the fastest fused variant at the largest batch.
``--inductor`` adds ``torch.compile`` of the padded model (the best before fusion) as the
baseline on the same card.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.runtime.autopick import best_seconds  # noqa: E402
from streamrec.offline.bench import matmul_peak, model_gflops  # noqa: E402
from streamrec.runtime.graphs import ConvReLU, conv_variants  # noqa: E402
from streamrec.runtime.classifier import CudaGraphRunner  # noqa: E402
from streamrec.models.registry import load_model  # noqa: E402

from gpu_profile import kernels  # noqa: E402 - benchmarks/, the script's own folder

CL3D = torch.channels_last_3d


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--inductor", action="store_true", help="also time torch.compile of the padded model")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_fusion: needs a CUDA GPU")
    batches = [int(b) for b in args.batches.split(",")]
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    peak = matmul_peak(dev)
    torch.manual_seed(0)
    loaded = load_model(args.model, weights="none")
    gflop = model_gflops(loaded)
    ref = copy.deepcopy(loaded.module).eval().float()
    net = loaded.module.eval().to(dev, torch.float16).to(memory_format=CL3D)
    shape = (3, loaded.spec.frames, *loaded.spec.crop)
    g = torch.Generator().manual_seed(1)
    probe = torch.randn(2, *shape, generator=g)
    want = ref(probe)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
          f"fp16 peak {peak / 1e3:.0f} TFLOP/s; {args.model} {gflop:.1f} GFLOP per window", flush=True)
    candidates: dict[str, object] = {}
    for suffix, m in conv_variants(net).items():
        if "conv2d" in suffix:
            continue
        candidates[f"eager{suffix}"] = m
        candidates[f"torchscript{suffix}"] = torch.jit.freeze(torch.jit.trace(m, probe[:1].to(dev, torch.half).contiguous(
            memory_format=CL3D), check_trace=False))
    if args.inductor:
        candidates["inductor-pad8"] = torch.compile(conv_variants(net, fused=False)["-pad8"])
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "peak_gflops": peak, "gflop_per_window": gflop, "rows": {}}
    print(f"| variant (+ CUDA graphs) | {' | '.join(f'batch {b}: ms, windows/s, of peak' for b in batches)} | max abs logit diff vs fp32 |")
    print(f"|---|{'---|' * len(batches)}---|")
    best = None
    for name, m in candidates.items():
        t0 = time.perf_counter()
        x1 = probe[:1].to(dev, torch.half).contiguous(memory_format=CL3D)
        try:
            runner = CudaGraphRunner(m, example=x1, max_batch=max(batches))
            got = runner(probe.to(dev, torch.half).contiguous(memory_format=CL3D)).float().cpu()
            row = {"max_abs_logit_diff": float((got - want).abs().max()), "top1_same": bool((got.argmax(1) == want.argmax(1)).all())}
            for b in batches:
                xb = torch.randn(b, *shape, device=dev, dtype=torch.half).contiguous(memory_format=CL3D)
                t = best_seconds(lambda: runner(xb), 20, sync=True)
                row[b] = {"ms": t * 1e3, "windows_per_s": b / t, "of_peak": gflop * b / t / peak}
        except Exception as exc:  # noqa: BLE001 - report and go on to the next variant
            print(f"| {name} | failed: {str(exc).splitlines()[0][:150]} |", flush=True)
            continue
        if isinstance(m, torch.nn.Module):
            row["refused_sites"] = sum(1 for s in m.modules() if isinstance(s, ConvReLU) and not s.fused)
        row["setup_s"] = time.perf_counter() - t0
        report["rows"][name] = row
        cells = " | ".join(f"{row[b]['ms']:.2f}, {row[b]['windows_per_s']:.0f}, {row[b]['of_peak'] * 100:.1f} %" for b in batches)
        print(f"| {name} | {cells} | {row['max_abs_logit_diff']:.1e}{'' if row['top1_same'] else ' (top-1 differs)'} |", flush=True)
        if "fused" in name and (best is None or row[batches[-1]]["ms"] < report["rows"][best][batches[-1]]["ms"]):
            best = name
        if "refused_sites" in row and row["refused_sites"]:
            print(f"  {name}: cuDNN refused {row['refused_sites']} fused call sites (run unfused)")
    if best is not None:
        xb = torch.randn(batches[-1], *shape, device=dev, dtype=torch.half).contiguous(memory_format=CL3D)
        total_ms, lines = kernels(candidates[best], xb, 10)
        report["kernels"] = {best: [f"{total_ms:.2f} ms of kernels per call", *lines]}
        print(f"\n## kernels of {best} (no graphs), batch {batches[-1]}")
        print("\n".join(report["kernels"][best]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
