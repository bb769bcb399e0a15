"""benchmarks/slow_vcpu.py: the replayed slow vCPU behind the README's balanced-split figures."""

import doctest
import subprocess
import sys

import psutil
import pytest

from conftest import ROOT, load_benchmark

SCRIPT = ROOT / "benchmarks" / "slow_vcpu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def busy_loops() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "--steal" in (p.info["cmdline"] or [])
            and any(str(a).endswith("slow_vcpu.py") for a in p.info["cmdline"])]


def test_docstring_example():
    result = doctest.testmod(load_benchmark("slow_vcpu"))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_table_for_each_loss_and_no_busy_loop_left():
    proc = run("--model", "tiny3d", "--losses", "0", "30", "--calls", "2")
    if proc.returncode == 2:  # no real-time scheduling on this machine: said in one line
        assert proc.stderr.strip().splitlines()[-1] == ("slow_vcpu: error: real-time scheduling (SCHED_FIFO) is not "
                                                        "permitted here; run as root or with CAP_SYS_NICE")
    else:
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert lines[0].startswith("# tiny3d alone, OpenVINO fp32, ")
        assert lines[1] == ("| lost | each thread a fixed half of every layer | chunks taken as the threads go "
                            "| perfect split |")
        assert [line.split(" | ")[0] for line in lines[3:]] == ["| 0 %", "| 30 %"]
    assert busy_loops() == []


@pytest.mark.parametrize("args, message", [
    (["--losses", "0", "100"], "slow_vcpu: error: --losses: expected 0 <= % < 100, got 100"),
    (["--live", "--loss", "-5"], "slow_vcpu: error: --loss: expected 0 <= % < 100, got -5"),
    (["--live", "--spell", "12"], "slow_vcpu: error: --spell: expected 0 < seconds <= --period (10), got 12"),
    (["--calls", "0"], "slow_vcpu: error: --calls: expected >= 1, got 0"),
])
def test_bad_options_are_one_line(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
