"""Where the inference thread's time goes after each batch: per step, wall time against the
thread's own CPU time (the difference is time spent waiting for the GIL or a CPU).

    python benchmarks/worker_wait.py [multicam.py options, e.g. --cameras 32 --device cpu --model tiny3d]

Runs ``benchmarks/multicam.py`` with the same options, with each step of the message path
(smoothing, top 5, message dicts, metrics, hand-off to the event loop; each done once per
batch) timed by wrappers installed for this run only, and prints one row per step, per message.
"""

from __future__ import annotations

import collections
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.live import labels  # noqa: E402
from streamrec.serve import app, metrics, server, worker  # noqa: E402

TOTALS: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])


def timed(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` with a wrapper adding its wall and thread CPU time to TOTALS[label]."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            row = TOTALS[label]
            row[0] += time.perf_counter() - t0
            row[1] += time.thread_time() - c0
            row[2] += 1

    setattr(owner, name, wrapper)


def main() -> None:
    timed(worker.InferenceWorker, "collect", "taking windows (ring)")
    timed(worker, "batch_windows", "stacking the batch")
    timed(worker.InferenceWorker, "emit", "all steps")
    timed(labels, "update_many", "smoothing")
    timed(labels, "top_k_many", "top 5")
    timed(labels, "prediction_message", "message dicts")
    timed(metrics.Metrics, "observe_prediction", "metrics")
    timed(server.Hub, "publish_many_threadsafe", "hand-off to the event loop")
    timed(app.LiveApp, "_publish_predictions", "metrics + history + JSON + hand-off")
    sys.argv = [str(ROOT / "benchmarks" / "multicam.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    messages = TOTALS["message dicts"][2]
    if not messages:
        sys.exit("benchmark: no prediction was made")
    print(f"\n{messages} messages in {TOTALS['all steps'][2]} batches; per message ('all steps': the message path):")
    print("| step | wall ms | thread CPU ms | waiting | calls |")
    print("|---|---|---|---|---|")
    for label, (wall, cpu, n) in TOTALS.items():
        if n:
            print(f"| {label} | {wall / messages * 1e3:.3f} | {cpu / messages * 1e3:.3f} | {max(0.0, 1 - cpu / wall):.0%} | {n} |")


if __name__ == "__main__":
    main()
