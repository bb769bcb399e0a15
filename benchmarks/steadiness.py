"""How steady this machine's CPUs are: the same compute kernel timed on every vCPU at once.

    python benchmarks/steadiness.py [--seconds 30] [--json OUT]

One child process per vCPU, pinned to it, times a fixed NumPy kernel (~1 ms of float32
matrix products on one thread, the kind of work a convolution does) back to back for
``--seconds``. Each second's mean time (which counts a stall as well as a slower pace) is
compared with the whole run's median on that vCPU. On a machine of one's own every second
stays within a few percent; on a shared cloud host there are seconds where a vCPU runs
1.2-2x slower while the guest reports almost no steal time (another tenant on the same
physical core), and nothing inside the VM changes them.

A model split statically over two threads (oneDNN under torch, and OpenVINO by default,
give each thread half of every layer) runs at the pace of the slower vCPU: one vCPU at half
speed makes a window take as long as on one thread. streamrec's OpenVINO models share each
layer as the threads go instead (``benchmarks/slow_vcpu.py`` replays a slowed vCPU to
compare). ``benchmarks/live.py`` runs this check before and after its live run, so a
latency tail can be read against the state of the host at the time.

Example (made-up samples: two vCPUs for 3 s, the last second of vCPU 1 at 1.5x):
    >>> a = [(0.1 * i, 1.0) for i in range(30)]
    >>> b = [(0.1 * i, 1.0 if i < 20 else 1.5) for i in range(30)]
    >>> s = summarize({0: a, 1: b}, factor=1.2)
    >>> s["slow_share"], s["worst"], s["per_cpu"][1]["slow_seconds"]
    (0.167, 1.5, 1)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

FACTOR = 1.2  # a second whose mean kernel time is this much over the run's median counts as slow


def _worker(cpu: int, seconds: float) -> None:
    """Child process: pinned to ``cpu``, print JSON ``[[t, ms], ...]`` for ``seconds``."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    import numpy as np

    a = np.random.default_rng(cpu).random((128, 128), dtype=np.float32)
    b = a.T.copy()

    def kernel() -> None:
        for _ in range(20):
            a @ b

    for _ in range(50):  # warm caches and the BLAS
        kernel()
    out = []
    start = time.perf_counter()
    t_end = start + seconds
    while (t0 := time.perf_counter()) < t_end:
        kernel()
        # t unrounded: rounded, a start at 1.99996 s became 2.0 and a 2 s run had 3 seconds
        out.append((t0 - start, round((time.perf_counter() - t0) * 1e3, 4)))
    json.dump(out, sys.stdout)


def summarize(samples: dict[int, list[tuple[float, float]]], factor: float = FACTOR) -> dict:
    """Per-vCPU ``[(t_seconds, ms), ...]`` -> share of vCPU-seconds whose mean is at least
    ``factor`` times that vCPU's median, the worst second's ratio, and per-vCPU figures."""
    per_cpu = {}
    seconds_total = slow_total = 0
    worst = 1.0
    for cpu, rows in sorted(samples.items()):
        if not rows:
            continue
        median = statistics.median(ms for _, ms in rows)
        by_second: dict[int, list[float]] = defaultdict(list)
        for t, ms in rows:
            by_second[int(t)].append(ms)
        ratios = [statistics.fmean(v) / median for _, v in sorted(by_second.items())]
        slow = sum(r >= factor for r in ratios)
        per_cpu[cpu] = {"median_ms": round(median, 3), "seconds": len(ratios), "slow_seconds": slow,
                        "worst": round(max(ratios), 2)}
        seconds_total += len(ratios)
        slow_total += slow
        worst = max(worst, max(ratios))
    return {"factor": factor, "slow_share": round(slow_total / seconds_total, 3) if seconds_total else 0.0,
            "worst": round(worst, 2), "per_cpu": per_cpu}


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def measure(seconds: float = 15.0, factor: float = FACTOR) -> dict:
    """Run one pinned worker per vCPU for ``seconds`` (all at once) and summarize them."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {cpu: subprocess.Popen([sys.executable, __file__, "--worker", str(cpu), str(seconds)],
                                   stdout=subprocess.PIPE, env=env, text=True) for cpu in cpus()}
    samples = {}
    try:
        for cpu, p in procs.items():
            out, _ = p.communicate(timeout=seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"steadiness worker on vCPU {cpu} exited with {p.returncode}")
            samples[cpu] = [tuple(r) for r in json.loads(out)]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    result = summarize(samples, factor)
    result["seconds"] = seconds
    return result


def line(s: dict) -> str:
    """One sentence for a benchmark's report."""
    cpus_ = ", ".join(f"vCPU {c}: {v['slow_seconds']}/{v['seconds']} s, worst {v['worst']}x"
                      for c, v in s["per_cpu"].items())
    return (f"{s['slow_share'] * 100:.0f} % of vCPU-seconds ran >= {s['factor']}x slower than their median "
            f"({cpus_})")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), float(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--factor", type=float, default=FACTOR)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.seconds <= 0 or args.factor <= 1:
        sys.exit(f"steadiness: expected --seconds > 0 and --factor > 1, got {args.seconds} and {args.factor}")
    s = measure(args.seconds, args.factor)
    print(f"# host steadiness, {args.seconds:.0f} s, one pinned NumPy kernel per vCPU")
    print(line(s))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
