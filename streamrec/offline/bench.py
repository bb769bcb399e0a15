"""``streamrec bench``: pipeline stages, backends, batching, the naive baseline and the
machine's measured peak, side by side, as a markdown table and JSON.

Every figure is measured here, in this run: model FLOPs by torch's FLOP counter, the peak
by a large matmul (fp32 on CPU, fp16 on GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from streamrec.errors import StreamrecError
from streamrec.runtime import backends

from streamrec.runtime import openvino

from streamrec.runtime import onnx
from streamrec.models.exported import torchscript_quiet
from streamrec.runtime.autopick import best_seconds
from streamrec.runtime.openvino import no_openvino_telemetry
from streamrec.offline.classify import iter_windows
from streamrec.runtime.graphs import conv_variants
from streamrec.runtime.classifier import CudaGraphRunner, default_threads, resolve_device
from streamrec.models.spec import LoadedModel
from streamrec.models.registry import load_model
from streamrec.models.preprocess import FramePreprocessor
from streamrec.live.ring import FrameRing, capacity_for
from streamrec.live.sources import PyAVSource, SourceSpec, named_as, open_container

logger = logging.getLogger(__name__)


# CPU backends that trade precision for time: timed and checked against eager fp32 on the clips'
# windows, never the "best fp32" that batched throughput and the preprocessing share are measured on
LOWER_PRECISION = {"openvino-bf16": "bf16", "openvino-int8": "int8"}


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "onnxruntime", "openvino", "av", "numpy"):
        try:
            with no_openvino_telemetry():  # importing openvino starts its telemetry
                versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "versions": versions}


def matmul_peak(device: torch.device) -> float:
    """GFLOP/s of a large matmul: fp16 ``torch.mm`` on GPU; on CPU fp32, the best of ``torch.mm``
    and NumPy's BLAS (on AMD CPUs torch's BLAS can trail OpenBLAS; the peak is the
    machine's, not one library's)."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 4096
    dtype = torch.float16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = best_seconds(lambda: torch.mm(a, b), 5, sync=cuda)
    if not cuda:
        an, bn = a.numpy(), b.numpy()
        t = min(t, best_seconds(lambda: an @ bn, 5))
    return 2 * n**3 / t / 1e9


def model_gflops(loaded: LoadedModel) -> float:
    """GFLOP (2 x multiply-adds) of one window, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        loaded.module.eval()(onnx.example_input(loaded))
    return counter.get_total_flops() / 1e9


def check_clips(clip: Path, clips: list[Path]) -> None:
    """Every clip opens as a video, before minutes of measuring; a one-line :class:`SourceError`
    naming its option (``--clip`` or ``--clips``) and the file otherwise."""
    for option, paths in (("--clip", [clip]), ("--clips", clips)):
        for path in paths:
            with named_as(option), PyAVSource(SourceSpec.parse(str(path))):
                pass


def stage_costs(clip: Path, loaded: LoadedModel, frames: int = 300) -> dict[str, float]:
    """Per-frame decode and preprocessing, and per-window assembly, in ms."""
    spec = loaded.spec
    pre = FramePreprocessor(spec)
    ring = FrameRing(capacity_for(spec.frames, spec.fps), pre.crop_shape, np.uint8)
    dec = prep = 0.0
    n = 0
    with named_as("--clip"), PyAVSource(SourceSpec.parse(str(clip))) as src:
        it = iter(src.frames())
        while n < frames:
            t0 = time.perf_counter()
            try:
                rgb, _ = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            ring.write(pre.resize_crop(rgb), n / 30.0)
            dec += t1 - t0
            prep += time.perf_counter() - t1
            n += 1
    window = ring.newest_window(spec.frames, spec.fps)
    if window is None:
        raise StreamrecError(f"--clip {clip}: expected a clip of at least one window ({spec.frames} frames at "
                             f"{spec.fps:g} fps), got {n} frames")
    asm = best_seconds(lambda: pre.window(ring.newest_window(spec.frames, spec.fps).frames), 20)  # gather + normalize
    return {"decode_ms_per_frame": dec / n * 1e3, "preprocess_ms_per_frame": prep / n * 1e3,
            "window_assembly_ms": asm * 1e3, "frames": n}


def naive_window_ms(clip: Path, loaded: LoadedModel, repeats: int = 3, device: torch.device = torch.device("cpu")) -> float:
    """One window of the naive per-window loop: decode 16 frames, weights.transforms(), eager fp32 on ``device``."""
    import copy

    import av
    from torchvision.transforms._presets import VideoClassification

    sp = loaded.spec  # torchvision's own preset, with this model's numbers
    transform = VideoClassification(crop_size=sp.crop, resize_size=sp.resize, mean=sp.mean, std=sp.std)
    net = copy.deepcopy(loaded.module).eval().float().to(device)

    def once() -> None:
        with open_container(str(clip)) as c:
            frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(loaded.spec.frames), c.decode(video=0))]
        x = transform(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)).unsqueeze(0)  # (T,H,W,C)->(T,C,H,W)
        with torch.no_grad():
            net(x.to(device)).cpu()

    return best_seconds(once, repeats) * 1e3


def cpu_backends(loaded: LoadedModel, names: list[str], threads: int) -> dict[str, Callable]:
    from streamrec.runtime.classifier import Classifier

    out = {}
    for name in names:
        own = dataclasses.replace(loaded, module=copy.deepcopy(loaded.module))  # the torch backend consumes its model
        try:
            out[name] = Classifier(own, device="cpu", backend=name, threads=threads, warmup=0).module
        except Exception as exc:  # noqa: BLE001 - report what does not install or convert
            logger.warning("backend %s unavailable: %s", name, exc)
    return out


def cuda_backends(loaded: LoadedModel, device: torch.device) -> dict[str, Callable]:
    """eager fp16, TorchScript fp16 channels_last_3d, each also through CUDA graphs, TensorRT (when it installs).

    Moves ``loaded.module`` to ``device`` in fp16."""
    eager = loaded.module.eval().to(device, torch.float16).to(memory_format=torch.channels_last_3d)
    x = onnx.example_input(loaded).to(device, torch.float16).contiguous(memory_format=torch.channels_last_3d)
    out: dict[str, Callable] = {"eager-fp16": eager}
    out["eager-fp16+cuda-graphs"] = CudaGraphRunner(eager, example=x, max_batch=64)
    for suffix, net in conv_variants(eager).items():
        if suffix:
            out[f"eager-fp16{suffix}"] = net
            out[f"eager-fp16{suffix}+cuda-graphs"] = CudaGraphRunner(net, example=x, max_batch=64)
        try:
            with torch.no_grad(), torchscript_quiet():
                traced = torch.jit.freeze(torch.jit.trace(net, x, check_trace=False))
            out[f"torchscript-fp16-cl3d{suffix}"] = traced
            out[f"torchscript-fp16-cl3d{suffix}+cuda-graphs"] = CudaGraphRunner(traced, example=x, max_batch=64)
        except Exception as exc:  # noqa: BLE001 - some models do not trace
            logger.warning("TorchScript failed for %s%s: %s", loaded.name, suffix, exc)
    if os.environ.get("STREAMREC_BENCH_COMPILE", "1") != "0":  # torch.compile (Inductor) of the padded model
        variants = conv_variants(eager)
        suffix = "-pad8" if "-pad8" in variants else ""
        mode = os.environ.get("STREAMREC_BENCH_COMPILE_MODE") or None  # e.g. max-autotune-no-cudagraphs
        compiled = torch.compile(variants[suffix], mode=mode)
        out[f"inductor-fp16{suffix}"] = compiled
        out[f"inductor-fp16{suffix}+cuda-graphs"] = CudaGraphRunner(compiled, example=x, max_batch=64)
    try:
        import torch_tensorrt

        out["tensorrt-fp16"] = torch_tensorrt.compile(eager, inputs=[x], enabled_precisions={torch.float16})
    except Exception as exc:  # noqa: BLE001 - an optional extra; report and go on
        logger.warning("TensorRT not available: %s", exc)
    return out


def on_device(fn: Callable, device: torch.device) -> Callable:
    """Wrap a CUDA fp16 backend to take and return CPU float32, for agreement checks."""
    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(x.to(device, torch.float16).contiguous(memory_format=torch.channels_last_3d)).float().cpu()
    return call


def clip_windows(clips: list[Path], loaded: LoadedModel, stride: float = 2.0) -> list[torch.Tensor]:
    """``(1, C, T, H, W)`` windows of real clips, through the live sampling and preprocessing."""
    out = []
    pre = FramePreprocessor(loaded.spec)
    for clip in clips:
        with named_as("--clips"), PyAVSource(SourceSpec.parse(str(clip))) as src:
            out += [pre.window(w.frames) for w, _ in iter_windows(src, loaded.spec, stride=stride)]
    return out


def agreement(reference: Callable, others: dict[str, Callable], windows: list[torch.Tensor]) -> dict[str, dict]:
    """Per backend: windows whose top-1 equals the reference's, the max |logit diff| and the max
    |softmax score diff|."""
    with torch.no_grad():
        ref = [reference(w).float() for w in windows]
        result = {}
        for name, fn in others.items():
            outs = [fn(w).float() for w in windows]
            result[name] = {
                "windows": len(windows),
                "top1_agree": sum(int(a.argmax() == b.argmax()) for a, b in zip(ref, outs)),
                "max_abs_logit_diff": max(backends.max_abs_diff(a.numpy(), b.numpy()) for a, b in zip(ref, outs)),
                "max_abs_score_diff": max(backends.max_abs_diff(a.softmax(-1).numpy(), b.softmax(-1).numpy())
                                          for a, b in zip(ref, outs)),
            }
    return result


@torch.no_grad()
def timing_row(seconds: float, gflop: float, peak: float, naive_ms: float) -> dict[str, float]:
    """One backend's row: ms per window, GFLOP/s, the share of the measured peak, the speed-up on the naive loop."""
    return {"ms": seconds * 1e3, "gflops": gflop / seconds, "of_peak": gflop / seconds / peak,
            "vs_naive": naive_ms / (seconds * 1e3)}


def time_backends(name: str, fns: dict[str, Callable], x1: torch.Tensor, m: dict[str, Any], *, repeats: int,
                  cuda: bool, gflop: float, peak: float) -> dict[str, dict[str, float]]:
    """Each backend of ``fns`` timed on one window ``x1``; one that fails is dropped from ``fns``
    and named in ``m["failed"]``."""
    rows = {}
    if cuda:  # the same eager fp16 model with cuDNN's default algorithm choice, then let cuDNN measure
        torch.backends.cudnn.benchmark = False
        t = best_seconds(lambda: fns["eager-fp16"](x1), repeats, sync=True)
        rows["eager-fp16 (cudnn.benchmark off)"] = timing_row(t, gflop, peak, m["naive_ms"])
        torch.backends.cudnn.benchmark = True
    for bname, fn in list(fns.items()):
        try:
            t = best_seconds(lambda: fn(x1), repeats, sync=cuda)
        except Exception as exc:  # noqa: BLE001 - e.g. a model that cannot be captured in a CUDA graph
            logger.warning("backend %s failed for %s: %s", bname, name, str(exc).splitlines()[0])
            m.setdefault("failed", {})[bname] = str(exc).splitlines()[0]
            del fns[bname]
            continue
        rows[bname] = timing_row(t, gflop, peak, m["naive_ms"])
    return rows


def batched_throughput(fn: Callable, loaded: LoadedModel, batches: list[int], dev: torch.device, dtype: torch.dtype,
                       *, repeats: int, gflop: float, peak: float) -> dict[int, dict[str, float]]:
    """Windows per second of ``fn`` at each batch size."""
    cuda = dev.type == "cuda"
    thr = {}
    for b in batches:
        xb = onnx.example_input(loaded, b).to(dev, dtype)
        if cuda:
            xb = xb.contiguous(memory_format=torch.channels_last_3d)
        t = best_seconds(lambda: fn(xb), max(1, repeats - 1), sync=cuda)
        thr[b] = {"windows_per_s": b / t, "of_peak": gflop * b / t / peak}
    return thr


def run(*, models: list[str], clip: Path, clips: list[Path], device: str = "auto", batches: list[int],
        int8: bool = True, repeats: int = 3) -> dict[str, Any]:
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    threads = default_threads()
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"machine": machine_info(dev), "device": str(dev), "models": {}}
    peak = matmul_peak(dev)
    report["peak_gflops"] = peak
    for name in models:
        torch.manual_seed(0)
        loaded = load_model(name, weights="none")
        gflop = model_gflops(loaded)
        m: dict[str, Any] = {"gflop_per_window": gflop, "stages": stage_costs(clip, loaded)}
        m["naive_ms"] = naive_window_ms(clip, loaded, device=dev)
        windows = clip_windows(clips, loaded) if clips else []
        reference = copy.deepcopy(loaded.module).eval().float()  # eager fp32 on CPU
        cpu_names = backends.available() + (["openvino-bf16"] if openvino.bf16_supported() else [])
        fns = cuda_backends(loaded, dev) if cuda else cpu_backends(loaded, cpu_names, threads)
        dtype = torch.float16 if cuda else torch.float32
        x1 = onnx.example_input(loaded).to(dev, dtype)
        if cuda:
            x1 = x1.contiguous(memory_format=torch.channels_last_3d)
            repeats = max(repeats, 20)
        rows = time_backends(name, fns, x1, m, repeats=repeats, cuda=cuda, gflop=gflop, peak=peak)
        if int8 and not cuda and "openvino" in fns and windows:
            q = openvino.openvino_int8(loaded, windows, threads=threads)
            t = best_seconds(lambda: q(x1), repeats)
            rows["openvino-int8"] = timing_row(t, gflop, peak, m["naive_ms"])
            fns["openvino-int8"] = q
        if cuda:  # the batch multi-camera serving runs at, for every backend
            b = max(batches)
            xb = onnx.example_input(loaded, b).to(dev, dtype).contiguous(memory_format=torch.channels_last_3d)
            for bname, fn in fns.items():
                t = best_seconds(lambda: fn(xb), 5, sync=True)
                rows[bname][f"batch{b}_windows_per_s"] = b / t
                rows[bname][f"batch{b}_of_peak"] = gflop * b / t / peak
        m["backends"] = rows
        if windows:
            # on CPU "torch" is the rewritten eager model (streamrec.runtime.graphs): checked against the unmodified one too
            others = {k: on_device(v, dev) if cuda else v for k, v in fns.items()}
            m["agreement"] = agreement(reference, others, windows)
        best_name = min((k for k in rows if k in fns and k not in LOWER_PRECISION), key=lambda k: rows[k]["ms"])
        m["best_fp32" if not cuda else "best"] = best_name
        for low, key in LOWER_PRECISION.items():
            if low in rows:
                m[f"{key}_speedup_vs_best_fp32"] = rows[best_name]["ms"] / rows[low]["ms"]
        thr = batched_throughput(fns[best_name], loaded, batches, dev, dtype, repeats=repeats, gflop=gflop, peak=peak)
        m["batched"] = {"backend": best_name, "by_batch": thr}
        m["preprocess_share_of_inference"] = (m["stages"]["preprocess_ms_per_frame"] * loaded.spec.frames
                                              + m["stages"]["window_assembly_ms"]) / rows[best_name]["ms"]
        if cuda:
            m["classifier"] = classifier_e2e(dataclasses.replace(loaded, module=copy.deepcopy(reference)), dev)
        report["models"][name] = m
    return report


def classifier_e2e(loaded: LoadedModel, device: torch.device, repeats: int = 50) -> dict[str, Any]:
    """What the live path does per window: the Classifier that ``serve`` builds (``--backend auto``),
    from a CPU float32 window to CPU scores, copies included. Median and p95 over ``repeats``."""
    from streamrec.runtime.classifier import Classifier

    clf = Classifier(loaded, device=str(device), backend="auto")
    x = torch.randn(1, *clf.input_shape)
    clf.probs(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf.probs(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"backend": clf.backend, "timings": clf.timings, "e2e_ms_p50": float(np.median(times)),
            "e2e_ms_p95": float(np.percentile(times, 95))}


def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    out = [f"Machine: {mi['cpu']}, {mi['cores']} cores, GPU {mi['gpu'] or 'none'}; torch {mi['versions']['torch']}; "
           f"measured peak {report['peak_gflops']:.0f} GFLOP/s ({'fp16 torch.mm' if mi['gpu'] else 'fp32 matmul, best of torch.mm and NumPy'})", ""]
    for name, m in report["models"].items():
        st = m["stages"]
        out += [f"### {name} ({m['gflop_per_window']:.1f} GFLOP per window)", "",
                f"Pipeline stages: decode {st['decode_ms_per_frame']:.2f} ms/frame, preprocess "
                f"{st['preprocess_ms_per_frame']:.3f} ms/frame, window assembly {st['window_assembly_ms']:.2f} ms "
                f"= {m['preprocess_share_of_inference'] * 100:.1f} % of inference; naive (book) window: {m['naive_ms']:.0f} ms.", "",
                "| backend | ms / window | GFLOP/s | of peak | × naive | top-1 agree with eager fp32 (CPU) | max abs logit diff |"
                + (f" windows/s at batch {max(m['batched']['by_batch'])} |" if report["machine"]["gpu"] else ""),
                "|---|---|---|---|---|---|---|" + ("---|" if report["machine"]["gpu"] else "")]
        agree = m.get("agreement", {})
        for b, r in m["backends"].items():
            a = agree.get(b)
            ag = f"{a['top1_agree']}/{a['windows']}" if a else "–"
            diff = f"{a['max_abs_logit_diff']:.1e}" if a else "–"
            big = next((k for k in r if k.endswith("_windows_per_s")), None)
            extra = f" {r[big]:.0f} ({r[big.replace('windows_per_s', 'of_peak')] * 100:.0f} % of peak) |" if big else ""
            out.append(f"| {b} | {r['ms']:.1f} | {r['gflops']:.0f} | {r['of_peak'] * 100:.0f} % | {r['vs_naive']:.2f} | {ag} | {diff} |{extra}")
        for b, why in m.get("failed", {}).items():
            out.append(f"| {b} | failed: {why[:90]} | | | | | |")
        for key in LOWER_PRECISION.values():
            if f"{key}_speedup_vs_best_fp32" in m:
                out.append(f"\n{key} vs best fp32 ({m['best_fp32']}): {m[f'{key}_speedup_vs_best_fp32']:.2f}× faster")
        if "classifier" in m:
            c = m["classifier"]
            out.append(f"\nserve's classifier (`--backend auto` chose {c['backend']}): {c['e2e_ms_p50']:.2f} ms per window "
                       f"(p95 {c['e2e_ms_p95']:.2f}), from a CPU float32 window to CPU scores, copies included")
        bt = m["batched"]
        out += ["", f"Batched throughput ({bt['backend']}): " + ", ".join(
            f"batch {b}: {v['windows_per_s']:.2f} windows/s ({v['of_peak'] * 100:.0f} % of peak)" for b, v in bt["by_batch"].items()), ""]
    return "\n".join(out)
