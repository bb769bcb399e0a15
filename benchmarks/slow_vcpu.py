"""A vCPU slowed by the host, replayed: what it does to a window of the classifier.

    python benchmarks/slow_vcpu.py [--model r2plus1d_18] [--losses 0 30 50] [--calls 12]
    python benchmarks/slow_vcpu.py --live --loss 30 --spell 3 --period 10 [-- live.py options]

A shared cloud host sometimes runs one vCPU 1.2-1.9x slower for seconds at a time
(``benchmarks/steadiness.py`` measures it). To replay that on demand, a child process pinned
to the last vCPU at real-time priority (``SCHED_FIFO``) busy-loops ``--loss`` % of every
10 ms there, during the first ``--spell`` s of every ``--period`` s (all the time by
default). It needs the right to real-time scheduling (root or ``CAP_SYS_NICE``); without it
the script says so in one line and exits 2.

The first form times the classifier alone (OpenVINO fp32, two threads, ``--calls`` calls
alternating) compiled two ways: each thread a fixed half of every layer (OpenVINO's
default, ``TBB_PARTITIONER=STATIC``) and each layer cut in chunks the threads take as they
go (``AUTO``, what streamrec compiles), for every ``--losses`` value, and prints a table with
what a perfect split would give (the steady time times vCPUs / (vCPUs - lost share)).
The second form runs ``benchmarks/live.py`` (options after ``--``) while the loop runs.

Example (the loop's schedule: busy in the first 3 s of every 10 s):
    >>> [busy_now(t, spell=3, period=10) for t in (0.0, 2.9, 3.0, 9.9, 10.5)]
    [True, True, False, False, True]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK_S = 0.010


def fail(message: str) -> None:
    """One line on stderr and exit 2."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)


def busy_now(elapsed: float, *, spell: float, period: float) -> bool:
    """Whether the loop takes its share of the vCPU ``elapsed`` seconds after it started."""
    return elapsed % period < spell


def steal(cpu: int, loss: float, seconds: float, spell: float, period: float) -> int:
    """The child: ``loss`` % of every 10 ms of ``cpu`` at real-time priority, in spells."""
    parent = os.getppid()
    os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        print("slow_vcpu: error: real-time scheduling (SCHED_FIFO) is not permitted here; "
              "run as root or with CAP_SYS_NICE", file=sys.stderr, flush=True)
        return 2
    print("ready", flush=True)
    busy_s = loss / 100 * TICK_S
    start = time.monotonic()
    while (t := time.monotonic()) < start + seconds and os.getppid() == parent:  # ends with its parent
        if busy_now(t - start, spell=spell, period=period):
            while time.monotonic() - t < busy_s:
                pass
        time.sleep(max(0.0, TICK_S - (time.monotonic() - t)))
    return 0


class Stealer:
    """The busy loop in a child process, from ``with`` to its end (never left running)."""

    def __init__(self, loss: float, *, spell: float | None = None, period: float = 10.0,
                 seconds: float = 3600.0, cpu: int | None = None) -> None:
        self.cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
        self.args = [str(a) for a in (self.cpu, loss, seconds, period if spell is None else spell, period)]
        self.loss = loss
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Stealer":
        if self.loss == 0:
            return self
        self.proc = subprocess.Popen([sys.executable, __file__, "--steal", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(10)
            fail(self.proc.stderr.read().strip() or "slow_vcpu: error: the busy loop did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def alone(model: str, losses: list[float], calls: int) -> list[dict]:
    """p50 per call of the classifier alone, fixed halves vs chunks, for every loss."""
    sys.path.insert(0, str(ROOT))
    from streamrec.runtime import openvino
    from streamrec.runtime import onnx
    from streamrec.models.registry import load_model

    loaded = load_model(model, weights="none")
    ov, ir = openvino.openvino_model(loaded)
    x = onnx.example_input(loaded)
    fixed = openvino.compile_model(ov, ir, None, partitioner="STATIC")
    chunks = openvino.compile_model(ov, ir, None)  # what streamrec runs
    threads = int(chunks.compiled.get_property("INFERENCE_NUM_THREADS"))
    rows = []
    for loss in losses:
        with Stealer(loss):
            times: dict[str, list[float]] = {"fixed": [], "chunks": []}
            for fn in (fixed, chunks):  # warm-up
                fn(x)
            for i in range(calls):
                for name, fn in ((("fixed", fixed), ("chunks", chunks)) if i % 2 == 0 else
                                 (("chunks", chunks), ("fixed", fixed))):
                    t0 = time.perf_counter()
                    fn(x)
                    times[name].append((time.perf_counter() - t0) * 1000)
        rows.append({"loss": loss, "threads": threads, **{k: statistics.median(v) for k, v in times.items()}})
    steady = next((r["chunks"] for r in rows if r["loss"] == 0), None)
    for r in rows:
        r["ideal"] = None if steady is None else steady * threads / (threads - r["loss"] / 100)
    return rows


def table(model: str, rows: list[dict]) -> str:
    out = [f"# {model} alone, OpenVINO fp32, {rows[0]['threads']} threads, p50 per call; the last vCPU losing:",
           "| lost | each thread a fixed half of every layer | chunks taken as the threads go | perfect split |",
           "|---|---|---|---|"]
    for r in rows:
        ideal = "–" if r["ideal"] is None else f"{r['ideal']:.1f} ms"
        out.append(f"| {r['loss']:.0f} % | {r['fixed']:.1f} ms | {r['chunks']:.1f} ms | {ideal} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--steal"]:
        cpu, loss, seconds, spell, period = argv[1:6]
        return steal(int(cpu), float(loss), float(seconds), float(spell), float(period))
    live_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="r2plus1d_18")
    p.add_argument("--losses", type=float, nargs="+", default=[0, 30, 50], help="%% of the last vCPU taken")
    p.add_argument("--calls", type=int, default=12)
    p.add_argument("--live", action="store_true", help="run benchmarks/live.py (options after --) meanwhile")
    p.add_argument("--loss", type=float, default=30, help="with --live: %% of the last vCPU taken")
    p.add_argument("--spell", type=float, default=None, help="with --live: seconds busy of every --period")
    p.add_argument("--period", type=float, default=10.0)
    args = p.parse_args(argv)
    for option, values in (("--losses", args.losses), ("--loss", [args.loss])):
        for v in values:
            if not 0 <= v < 100:
                fail(f"slow_vcpu: error: {option}: expected 0 <= % < 100, got {v:g}")
    if args.spell is not None and not 0 < args.spell <= args.period:
        fail(f"slow_vcpu: error: --spell: expected 0 < seconds <= --period ({args.period:g}), got {args.spell:g}")
    if args.calls < 1:
        fail(f"slow_vcpu: error: --calls: expected >= 1, got {args.calls}")
    if args.live:
        with Stealer(args.loss, spell=args.spell, period=args.period):
            return subprocess.call([sys.executable, str(ROOT / "benchmarks" / "live.py"), *live_args])
    print(table(args.model, alone(args.model, args.losses, args.calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
