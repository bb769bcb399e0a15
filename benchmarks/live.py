"""Live pipeline benchmark: per-stage costs and latency, against the naive per-window loop.

    python benchmarks/live.py [--seconds 60] [--model r2plus1d_18] [--clip PATH] [--json OUT]
                              [--backend B] [--weights none|DEFAULT|PATH]

Runs the real server (capture thread, inference thread, asyncio websocket server) on a
looped clip for ``--seconds`` with one websocket client, and reads the stage timers and
the ``latency_ms`` of every message the client received. Then runs the naive approach
for the same number of windows: for every window, decode the 16 frames again, apply
``weights.transforms()`` to the whole clip, run eager fp32. In between, it times the same
classifier on its own (no capture, no server), to tell the machine's spread of inference
time from what the pipeline adds. Before and after the live run, ``steadiness.py`` times
a fixed kernel on every vCPU for 15 s (``--steadiness 0`` skips it): on a shared cloud host
the vCPUs have slow seconds of their own, and a latency tail is read against them.
During the live run every inference is also accounted (:class:`CpuAccounting`): the CPU time
the process used in it, how long its threads waited for a CPU, the guest's steal time and
the page faults, so that a slow window can be told apart: its threads waiting (run-queue wait grows) or
running the whole time and getting less done (CPU time grows with the wall time).

Weights are random by default (``--weights none``): timings do not depend on them, in fp32 or
``--backend openvino-bf16``. ``--backend openvino-int8`` needs weights ``streamrec quantize``
was run on (a checkpoint or a state_dict file; it refuses random ones).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.serve.app import LiveApp  # noqa: E402
from streamrec.config import ServeConfig  # noqa: E402


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


async def client(port: int, seconds: float, out: list) -> None:
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "prediction":
                    out.append(m)


def runqueue_wait_ns() -> dict[str, int]:
    """Per thread of this process, nanoseconds it has waited on a run queue (``/proc`` schedstat)."""
    waits = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            waits[task.name] = int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            pass
    return waits


def waited_ms(before: dict[str, int], after: dict[str, int]) -> float:
    """Run-queue wait between two :func:`runqueue_wait_ns` readings, of the threads alive at the
    second (a thread started in between counts from zero; one that ended is not seen)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e6


def _steal_ms() -> float:
    """The guest's steal time so far, all CPUs (``/proc/stat``; clock ticks -> ms)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    return int(fields[8]) * 1e3 / os.sysconf("SC_CLK_TCK")


COLUMNS = ("wall_ms", "cpu_ms", "runq_wait_ms", "steal_ms", "minor_faults", "major_faults")


class CpuAccounting:
    """Wraps the worker's classifier: per call, one row of :data:`COLUMNS`: wall ms, this
    process's CPU ms (all threads), its threads' run-queue wait ms, the guest's steal ms, and
    the process's minor and major page faults (Linux only; the reads are outside the timed call
    but inside the worker's ``infer_ms``: about 0.1 ms)."""

    def __init__(self, classifier) -> None:
        self._classifier = classifier
        self.rows: list[tuple[float, ...]] = []

    def __getattr__(self, name):
        return getattr(self._classifier, name)

    def probs(self, batch):
        w0, s0, r0 = runqueue_wait_ns(), _steal_ms(), resource.getrusage(resource.RUSAGE_SELF)
        c0, t0 = time.process_time(), time.perf_counter()
        out = self._classifier.probs(batch)
        t1, c1 = time.perf_counter(), time.process_time()
        w1, s1, r1 = runqueue_wait_ns(), _steal_ms(), resource.getrusage(resource.RUSAGE_SELF)
        self.rows.append(((t1 - t0) * 1e3, (c1 - c0) * 1e3, waited_ms(w0, w1), s1 - s0,
                          r1.ru_minflt - r0.ru_minflt, r1.ru_majflt - r0.ru_majflt))
        return out


def slow_windows(rows: list[tuple[float, ...]], margin_ms: float = 100.0) -> dict:
    """Windows slower than the median by more than ``margin_ms`` against the others: the medians
    of each of :data:`COLUMNS` per window."""
    wall = np.array([r[0] for r in rows])
    if len(wall) == 0:
        return {"slow": 0, "of": 0}
    slow = wall > np.median(wall) + margin_ms
    out = {"slow": int(slow.sum()), "of": len(rows), "margin_ms": margin_ms}
    for col, name in enumerate(COLUMNS):
        values = np.array([r[col] for r in rows])
        out[name] = {"slow": round(float(np.median(values[slow])), 1) if slow.any() else None,
                     "others": round(float(np.median(values[~slow])), 1)}
    return out


def run_live(clip: Path, model: str, seconds: float, backend: str = "auto", threads: int | None = None,
             device: str = "cpu", weights: str = "none") -> dict:
    import tempfile

    db = Path(tempfile.mkdtemp()) / "history.db"
    cfg = ServeConfig(source=str(clip), loop=True, weights=weights, model=model, device=device, port=0, db=str(db),
                      backend=backend, threads=threads)
    app = LiveApp(cfg)
    worker = next(iter(app.workers.values()))
    accounting = worker.classifier = CpuAccounting(worker.classifier)
    msgs: list[dict] = []

    async def main() -> None:
        runner = asyncio.create_task(app.run())
        while app.server.port == 0:
            await asyncio.sleep(0.05)
        await client(app.server.port, seconds, msgs)
        app.request_stop()
        await runner

    asyncio.run(main())
    cam = next(iter(app.cameras.values()))
    cap = cam.capture
    warm = [m for m in msgs if m["seq"] > 2]  # skip warm-up windows
    n = max(cap.frames, 1)
    return {
        "windows": len(msgs),
        "frames": cap.frames,
        "decode_ms_per_frame": cap.decode_s / n * 1e3,
        "resize_ms_per_frame": cap.resize_s / n * 1e3,
        "assemble_ms_p50": pct(worker.assemble_ms, 50),
        "infer_ms_p50": pct([m["infer_ms"] for m in warm], 50),
        "infer_ms_p95": pct([m["infer_ms"] for m in warm], 95),
        "post_ms_p50": pct(worker.post_ms, 50),
        "latency_ms_p50": pct([m["latency_ms"] for m in warm], 50),
        "latency_ms_p95": pct([m["latency_ms"] for m in warm], 95),
        "capture_fps": float(np.median([m["capture_fps"] for m in warm])) if warm else 0.0,
        "dropped": cam.ring.dropped,
        "skipped_windows": cam.skipped,
        "backend": cam.classifier.backend,
        "accounting": slow_windows(accounting.rows[3:]),  # the same warm-up skipped as for the messages
    }


def run_alone(clip: Path, model: str, backend: str, threads: int | None, device: str, calls: int = 100,
              weights: str = "none") -> dict:
    """The same classifier on its own: no capture, no server, one window of the clip classified
    ``calls`` times with a 20 ms pause between (as the worker waits for a frame). Its spread is
    the machine's; what the live pipeline adds to it is contention and waiting."""
    from streamrec.offline.classify import iter_windows
    from streamrec.runtime.classifier import Classifier
    from streamrec.models.registry import load_model
    from streamrec.models.preprocess import batch_windows
    from streamrec.live.sources import PyAVSource, SourceSpec

    clf = Classifier(load_model(model, weights=weights), device=device, backend=backend, threads=threads)
    with PyAVSource(SourceSpec.parse(str(clip))) as src:
        window, _ = next(iter_windows(src, clf.loaded.spec, stride=1.0))  # the live path's sampling
    x = batch_windows([window.frames])  # uint8 (1, T, H, W, C), as the worker passes it
    for _ in range(3):
        clf.probs(x)
    accounting = CpuAccounting(clf)
    for _ in range(calls):
        time.sleep(0.02)
        accounting.probs(x)
    times = [r[0] for r in accounting.rows]
    return {"calls": calls, "infer_ms_p50": pct(times, 50), "infer_ms_p95": pct(times, 95), "backend": clf.backend,
            "accounting": slow_windows(accounting.rows)}


def run_naive(clip: Path, model: str, windows: int) -> dict:
    """The naive per-window loop: per window, decode 16 frames, transform the clip, eager fp32."""
    import av
    import torch
    from torchvision.models import get_model, get_model_weights

    from streamrec.runtime.classifier import default_threads

    torch.set_num_threads(default_threads())
    weights = get_model_weights(model).DEFAULT
    net = get_model(model, weights=None).eval()
    transform = weights.transforms()
    dec, pre, inf, total = [], [], [], []
    with av.open(str(clip)) as c:
        n_frames = c.streams.video[0].frames or 0
    for i in range(windows):
        t0 = time.perf_counter()
        start = (i * 8) % max(1, n_frames - 32)
        with av.open(str(clip)) as c:
            frames = []
            for j, f in enumerate(c.decode(video=0)):
                if j >= start and (j - start) % 2 == 0:
                    frames.append(f.to_ndarray(format="rgb24"))
                if len(frames) == 16:
                    break
        t1 = time.perf_counter()
        x = transform(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)).unsqueeze(0)  # (T,H,W,C)->(T,C,H,W)
        t2 = time.perf_counter()
        with torch.no_grad():
            net(x)
        t3 = time.perf_counter()
        if i >= 1:
            dec.append((t1 - t0) * 1e3), pre.append((t2 - t1) * 1e3), inf.append((t3 - t2) * 1e3), total.append((t3 - t0) * 1e3)
    return {
        "windows": windows,
        "decode_ms_per_window": pct(dec, 50),
        "preprocess_ms_per_window": pct(pre, 50),
        "infer_ms_p50": pct(inf, 50),
        "latency_ms_p50": pct(total, 50),
        "latency_ms_p95": pct(total, 95),
    }


def table(live: dict, naive: dict, alone: dict | None = None) -> str:
    win_pre = live["resize_ms_per_frame"] * 16
    rows = [
        ("decode (capture thread's wall time, waits for a CPU included)", f"{live['decode_ms_per_frame']:.2f} ms/frame (once)", f"{naive['decode_ms_per_window']:.1f} ms/window (16+ frames again)"),
        ("resize + crop (streamrec); + normalize (naive)", f"{live['resize_ms_per_frame']:.3f} ms/frame (once)", f"{naive['preprocess_ms_per_window']:.1f} ms/window"),
        ("window assembly (gather uint8 crops)", f"{live['assemble_ms_p50']:.2f} ms/window", "(in the above)"),
        (f"inference (streamrec: {live['backend']}, normalizing the window included; naive: eager fp32)", f"{live['infer_ms_p50']:.0f} ms", f"{naive['infer_ms_p50']:.0f} ms"),
        ("smoothing + send", f"{live['post_ms_p50']:.2f} ms", "–"),
        ("latency_ms p50", f"{live['latency_ms_p50']:.0f} ms", f"{naive['latency_ms_p50']:.0f} ms"),
        ("latency_ms p95", f"{live['latency_ms_p95']:.0f} ms", f"{naive['latency_ms_p95']:.0f} ms"),
    ]
    share = (live["assemble_ms_p50"] + win_pre) / live["infer_ms_p50"] * 100
    out = ["| stage | streamrec | naive (book) |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out.append("")
    out.append(f"Window preprocessing (16 per-frame preprocessings + assembly) = {share:.1f} % of inference; "
               f"latency p95 - infer p50 = {live['latency_ms_p95'] - live['infer_ms_p50']:.0f} ms "
               f"(infer p95 - infer p50 = {live['infer_ms_p95'] - live['infer_ms_p50']:.0f} ms); "
               f"{live['windows']} windows, {live['skipped_windows']} window ends skipped while busy, "
               f"{live['dropped']} frames never used.")
    out.append(slow_line("Live windows", live.get("accounting")))
    if alone:
        out.append(f"The same classifier alone right after ({alone['backend']}, {alone['calls']} calls, no capture or server): "
                   f"infer p50 {alone['infer_ms_p50']:.0f} ms, p95 {alone['infer_ms_p95']:.0f} ms "
                   f"(p95 - p50 = {alone['infer_ms_p95'] - alone['infer_ms_p50']:.0f} ms). "
                   + slow_line("Its calls", alone.get("accounting")))
    return "\n".join(out)


def slow_line(what: str, acc: dict | None) -> str:
    """One sentence on :func:`slow_windows`' figures."""
    if not acc or not acc["of"]:
        return ""
    line = f"{what} slower than their p50 + {acc['margin_ms']:.0f} ms: {acc['slow']} of {acc['of']}."
    if acc["slow"]:
        line += (" Per window (median), slow vs the others: wall {wall_ms[slow]:.0f} vs {wall_ms[others]:.0f} ms, "
                 "CPU time of the process {cpu_ms[slow]:.0f} vs {cpu_ms[others]:.0f} ms, run-queue wait of its "
                 "threads {runq_wait_ms[slow]:.1f} vs {runq_wait_ms[others]:.1f} ms, guest steal "
                 "{steal_ms[slow]:.0f} vs {steal_ms[others]:.0f} ms, page faults {minor_faults[slow]:.0f} vs "
                 "{minor_faults[others]:.0f} (major {major_faults[slow]:.0f} vs {major_faults[others]:.0f}).").format(**acc)
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--clip", default=str(ROOT / "demo" / "clips" / "arm_wrestling.mp4"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default="none", help="none (default), DEFAULT or a file (openvino-int8 needs one)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--no-alone", action="store_true", help="skip timing the classifier on its own")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steadiness", type=float, default=15.0,
                    help="seconds of the host check before and after the live run (0: skip)")
    args = ap.parse_args()
    clip = Path(args.clip)
    if not clip.is_file():
        sys.exit(f"benchmark: clip not found: {clip}")
    import steadiness

    host = {"before": steadiness.measure(args.steadiness)} if args.steadiness > 0 else {}
    live = run_live(clip, args.model, args.seconds, args.backend, args.threads, args.device, args.weights)
    if host:
        host["after"] = steadiness.measure(args.steadiness)
    alone = None if args.no_alone else run_alone(clip, args.model, args.backend, args.threads, args.device,
                                                 weights=args.weights)
    if args.no_naive:
        rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in live.items()}
        if alone:
            rounded["alone"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in alone.items()}
        if host:
            rounded["host"] = {k: {"slow_share": v["slow_share"], "worst": v["worst"]} for k, v in host.items()}
        print(json.dumps(rounded))
        return
    naive = run_naive(clip, args.model, max(live["windows"] // 2, 8))
    print(f"# live pipeline, {args.model}, {clip.name}, {args.seconds:.0f} s, {platform.processor() or platform.machine()}, "
          f"{threading.active_count()} Python thread(s) still running")
    print(table(live, naive, alone))
    for when, h in host.items():
        print(f"Host {when} the live run ({h['seconds']:.0f} s, benchmarks/steadiness.py): {steadiness.line(h)}.")
    if args.json:
        Path(args.json).write_text(json.dumps({"live": live, "naive": naive, "alone": alone, "host": host}, indent=1))


if __name__ == "__main__":
    main()
