"""benchmarks/live.py's accounting of slow windows (CPU time, run-queue wait, steal per inference)."""

import threading
import time

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def live():
    return load_benchmark("live")


class Spinner:
    """A stand-in classifier whose call uses ``cpu_ms`` of CPU time (or sleeps ``sleep_ms``)."""

    loaded = "the wrapped classifier's model"

    def __init__(self, cpu_ms: float = 0.0, sleep_ms: float = 0.0) -> None:
        self.cpu_ms, self.sleep_ms = cpu_ms, sleep_ms

    def probs(self, batch):
        start = time.process_time()
        while (time.process_time() - start) * 1e3 < self.cpu_ms:
            pass
        time.sleep(self.sleep_ms / 1e3)
        return batch


class Toucher:
    """A stand-in classifier whose call writes to ``pages`` pages of a fresh anonymous mapping."""

    def __init__(self, pages: int) -> None:
        self.pages = pages

    def probs(self, batch):
        import mmap

        with mmap.mmap(-1, self.pages * mmap.PAGESIZE) as m:
            for i in range(self.pages):
                m[i * mmap.PAGESIZE] = 1
        return batch


def test_slow_windows_compares_medians_of_the_slow_and_the_other_windows(live):
    rows = [(400.0, 800.0, 60.0, 0.0, 30, 0)] * 18 + [(700.0, 1380.0, 110.0, 10.0, 40, 1), (720.0, 1400.0, 120.0, 0.0, 50, 0)]
    acc = live.slow_windows(rows)
    assert acc == {"slow": 2, "of": 20, "margin_ms": 100.0,
                   "wall_ms": {"slow": 710.0, "others": 400.0}, "cpu_ms": {"slow": 1390.0, "others": 800.0},
                   "runq_wait_ms": {"slow": 115.0, "others": 60.0}, "steal_ms": {"slow": 5.0, "others": 0.0},
                   "minor_faults": {"slow": 45.0, "others": 30.0}, "major_faults": {"slow": 0.5, "others": 0.0}}
    assert live.slow_line("Live windows", acc) == (
        "Live windows slower than their p50 + 100 ms: 2 of 20. Per window (median), slow vs the others: "
        "wall 710 vs 400 ms, CPU time of the process 1390 vs 800 ms, run-queue wait of its threads 115.0 vs 60.0 ms, "
        "guest steal 5 vs 0 ms, page faults 45 vs 30 (major 0 vs 0).")
    steady = live.slow_windows([(400.0, 800.0, 60.0, 0.0, 30, 0)] * 5)
    assert steady["slow"] == 0 and steady["wall_ms"] == {"slow": None, "others": 400.0}
    assert live.slow_line("Its calls", steady) == "Its calls slower than their p50 + 100 ms: 0 of 5."
    assert live.slow_windows([]) == {"slow": 0, "of": 0}


@pytest.mark.slow
def test_accounting_tells_cpu_time_from_waiting(live):
    busy = live.CpuAccounting(Spinner(cpu_ms=60))
    idle = live.CpuAccounting(Spinner(sleep_ms=60))
    assert busy.probs("x") == "x" and idle.probs("y") == "y"
    assert busy.loaded == "the wrapped classifier's model"  # everything else passes through to the classifier
    (b_wall, b_cpu, b_wait, b_steal, b_minflt, b_majflt), = busy.rows
    (i_wall, i_cpu, i_wait, i_steal, i_minflt, i_majflt), = idle.rows
    assert b_cpu >= 60 and b_wall >= b_cpu * 0.5
    assert i_wall >= 60 and i_cpu < 30
    assert min(b_wait, i_wait, b_steal, i_steal, b_minflt, i_minflt, b_majflt, i_majflt) >= 0
    faulting = live.CpuAccounting(Toucher(pages=256))
    faulting.probs(None)
    assert faulting.rows[0][4] >= 256  # each newly touched page of a fresh mapping is a minor fault


def test_run_queue_wait_counts_only_threads_alive_at_the_second_reading(live):
    before = {"10": 5_000_000, "11": 9_000_000, "12": 1_000_000}   # thread 12 ends in between
    after = {"10": 7_000_000, "11": 9_500_000, "13": 250_000}       # thread 13 starts in between
    assert live.waited_ms(before, after) == 2.75
    assert str(threading.get_native_id()) in live.runqueue_wait_ns()  # this thread is one of them
