"""Keep every core of this machine busy, for N seconds or until killed.

The test suite must pass on a loaded machine (CI runners and these 2-core machines are shared),
so no test may depend on having the CPU to itself. To check that, run the suite under load:

    python benchmarks/cpu_hog.py --seconds 900 & .venv/bin/python -m pytest

One worker process per core (``--workers`` to choose) spins in a busy loop. The workers end
with the hog: killed with it even by SIGKILL (Linux: PR_SET_PDEATHSIG; elsewhere they notice
within a fraction of a second that their parent is gone), and the hog ends with its own parent
in the same way, so a hog started in the background of a shell or a test never outlives it.
SIGTERM or Ctrl-C stops it at once; it exits 0.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import time


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spin(deadline: float | None, parent: int) -> None:
    """Busy-loop until ``deadline`` (monotonic seconds; None: forever) or until ``parent`` is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the hog stops its workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the hog, which stops them
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return
    x = 0
    while True:
        for i in range(20_000):
            x = (x * 31 + i) & 0xFFFFFFFF
        if os.getppid() != parent or (deadline is not None and time.monotonic() >= deadline):
            return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run until killed)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers: expected >= 1, got {args.workers}")
    if args.seconds is not None and args.seconds <= 0:
        ap.error(f"--seconds: expected > 0, got {args.seconds}")

    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = [ctx.Process(target=spin, args=(deadline, os.getpid()), name=f"cpu-hog-{i}", daemon=True)
               for i in range(args.workers)]
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for w in workers:
        w.start()
    print(f"cpu_hog: {args.workers} busy worker(s), "
          f"{'until killed' if deadline is None else f'for {args.seconds:g} s'} (pid {os.getpid()})", file=sys.stderr)
    while not stopping and any(w.is_alive() for w in workers):
        if os.getppid() != parent:  # our parent is gone (no PR_SET_PDEATHSIG here)
            break
        for w in workers:
            w.join(0.1)
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        w.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
