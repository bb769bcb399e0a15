"""What the lower-precision CPU backends change, on windows of your own clips.

    python benchmarks/precision.py --weights FILE [--model r2plus1d_18] [--clips DIR|FILE ...]
                                   [--stride 0.5] [--json OUT.json]

Every window of the clips (one every ``--stride`` seconds, through the live sampling and
preprocessing) goes through OpenVINO fp32, the reference, and through ``openvino-bf16`` (on
CPUs with bfloat16 instructions) and ``openvino-int8`` (when ``streamrec quantize`` made a
model for these weights). Printed per backend: how many windows keep fp32's top-1, the largest
softmax score and logit differences, and one window's time (best of 3). ``--weights none`` is
refused: random weights' scores lie so close together that noise decides their top-1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the real clips beside the repository, else the clip shipped in demo/clips
CLIPS = ROOT.parent / "shared" / "clips" if (ROOT.parent / "shared" / "clips").is_dir() else ROOT / "demo" / "clips"
sys.path.insert(0, str(ROOT))


def compare(weights: str, model: str | None, clips: list[Path], stride: float) -> dict:
    import torch

    from streamrec.runtime import backends

    from streamrec.runtime import openvino

    from streamrec.runtime import onnx

    from streamrec.runtime import autopick

    from streamrec.runtime import prepared
    from streamrec.offline.bench import agreement, clip_windows
    from streamrec.errors import StreamrecError

    loaded = prepared.load(model, weights, device="cpu")
    if loaded.meaningless:
        raise StreamrecError("--weights none: random weights; compare a trained model (DEFAULT or a checkpoint)")
    windows = clip_windows(clips, loaded, stride=stride)
    reference = backends.build("openvino", loaded)
    others, missing = {}, {}
    if openvino.bf16_supported():
        others["openvino-bf16"] = backends.build("openvino-bf16", loaded)
    else:
        missing["openvino-bf16"] = "this CPU has no bfloat16 instructions"
    if openvino.int8_path(loaded).is_file():
        others["openvino-int8"] = backends.build("openvino-int8", loaded)
    else:
        missing["openvino-int8"] = "no int8 model of these weights yet (streamrec quantize makes one)"
    x1 = onnx.example_input(loaded)
    with torch.no_grad():
        ms = {name: autopick.best_seconds(lambda fn=fn: fn(x1)) * 1e3
              for name, fn in {"openvino": reference, **others}.items()}
        fp32 = {id(w): reference(w) for w in windows}  # each window through fp32 once, for both figures
    top = sorted(float(logits.softmax(-1).max()) for logits in fp32.values())
    return {"model": loaded.name, "weights": weights, "clips": [str(c) for c in clips], "stride_s": stride,
            "windows": len(windows), "fp32_top1_score_median": top[len(top) // 2],
            "ms_per_window": ms, "vs_fp32": agreement(lambda w: fp32[id(w)], others, windows), "not_measured": missing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="DEFAULT or a file (a state_dict or a streamrec checkpoint)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--clips", nargs="+", default=[str(CLIPS)])
    ap.add_argument("--stride", type=float, default=0.5)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from streamrec.offline.dataset import video_files
    from streamrec.errors import StreamrecError

    try:
        clips = video_files([Path(c) for c in args.clips])
        r = compare(args.weights, args.model, clips, args.stride)
    except StreamrecError as exc:
        sys.exit(f"precision.py: {exc}")
    print(f"{r['model']}, weights {r['weights']}: {r['windows']} windows of {len(clips)} clip(s), one every "
          f"{r['stride_s']:g} s; fp32's top-1 score: median {r['fp32_top1_score_median']:.3f}")
    print("| backend | ms / window | top-1 same as fp32 | max abs score diff | max abs logit diff |")
    print("|---|---|---|---|---|")
    print(f"| openvino (fp32, the reference) | {r['ms_per_window']['openvino']:.1f} | – | – | – |")
    for name, a in r["vs_fp32"].items():
        print(f"| {name} | {r['ms_per_window'][name]:.1f} | {a['top1_agree']}/{a['windows']} | "
              f"{a['max_abs_score_diff']:.4f} | {a['max_abs_logit_diff']:.4f} |")
    for name, why in r["not_measured"].items():
        print(f"| {name} | not measured: {why} | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
