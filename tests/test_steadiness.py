"""benchmarks/steadiness.py: the host check that live latency figures are read against."""

import doctest
import os

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def steadiness():
    return load_benchmark("steadiness")


def test_docstring_example(steadiness):
    result = doctest.testmod(steadiness)
    assert result.attempted > 0 and result.failed == 0


def test_summary_counts_slow_seconds_per_vcpu(steadiness):
    # vCPU 0: 4 s at 2 ms, one of them at 3 ms (1.5x); vCPU 1: 4 s at 1 ms, one at 1.1 ms (under 1.2x)
    cpu0 = [(s + k / 10, 3.0 if s == 2 else 2.0) for s in range(4) for k in range(10)]
    cpu1 = [(s + k / 10, 1.1 if s == 0 else 1.0) for s in range(4) for k in range(10)]
    s = steadiness.summarize({0: cpu0, 1: cpu1}, factor=1.2)
    assert s["per_cpu"][0] == {"median_ms": 2.0, "seconds": 4, "slow_seconds": 1, "worst": 1.5}
    assert s["per_cpu"][1] == {"median_ms": 1.0, "seconds": 4, "slow_seconds": 0, "worst": 1.1}
    assert s["slow_share"] == 0.125
    assert s["worst"] == 1.5
    assert steadiness.line(s).startswith("12 % of vCPU-seconds ran >= 1.2x slower than their median (vCPU 0: 1/4 s")


@pytest.mark.slow
def test_measure_runs_one_pinned_worker_per_vcpu(steadiness):
    s = steadiness.measure(2.0)
    assert sorted(s["per_cpu"]) == sorted(os.sched_getaffinity(0))
    for v in s["per_cpu"].values():
        assert v["seconds"] == 2
        assert v["median_ms"] > 0
