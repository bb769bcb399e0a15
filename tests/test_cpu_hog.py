"""benchmarks/cpu_hog.py, which loads the machine while the suite runs: it really uses CPU, stops
by itself after --seconds, and never outlives its parent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, wait_until

HOG = str(ROOT / "benchmarks" / "cpu_hog.py")


@pytest.mark.slow
def test_cpu_hog_spins_for_its_seconds_and_exits_by_itself():
    proc = subprocess.Popen([sys.executable, HOG, "--seconds", "2", "--workers", "1"], stderr=subprocess.PIPE, text=True)
    try:
        hog = psutil.Process(proc.pid)
        workers = wait_until(lambda: hog.children(), "the worker to start", timeout=30)
        assert len(workers) == 1
        worker = workers[0]
        busy = 0.0
        while proc.poll() is None:  # the worker's CPU time, read until it is gone
            try:
                busy = max(busy, sum(worker.cpu_times()[:2]))  # user + system
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        rc = proc.wait(timeout=30)  # it stops by itself: 2 s, whatever the load
    finally:
        proc.kill()
    assert rc == 0, proc.stderr.read()
    # a spinning worker gets most of a core for 2 s; a worker that slept would show ~0 s (0.25 s
    # leaves room for a machine busy with other work)
    assert busy > 0.25, busy
    assert not worker.is_running()


@pytest.mark.slow
def test_cpu_hog_workers_end_with_the_hog():
    proc = subprocess.Popen([sys.executable, HOG, "--workers", "2"], stderr=subprocess.PIPE, text=True)
    try:
        hog = psutil.Process(proc.pid)
        workers = wait_until(lambda: len(hog.children()) == 2 and hog.children(), "two workers", timeout=30)
        proc.send_signal(signal.SIGKILL)  # no chance to stop them itself
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == [] and len(gone) == 2
    finally:
        proc.kill()
