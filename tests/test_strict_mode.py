"""Strict mode (``STREAMREC_REQUIRE=all``, which ``.ci/run`` sets): a skip fails the run unless
the test needs hardware this machine lacks; a plain ``pytest`` keeps skipping politely."""

from __future__ import annotations

import re
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SAMPLE = '''
import pytest

@pytest.fixture
def needs_a_server():
    pytest.skip("no server in a fixture")

def test_fixture_skip(needs_a_server):
    pass

@pytest.mark.skipif(True, reason="a package is missing")
def test_mark_skip():
    pass

def test_inline_skip():
    pytest.skip("skipped inside")

@pytest.mark.hardware
@pytest.mark.skipif(True, reason="this CPU has no bfloat16 instructions")
def test_bf16():
    pass

@pytest.mark.gpu
def test_cuda():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

def test_passes():
    pass
'''


# the sample suite in one process, and in pytest-xdist's two workers (the default run's way)
WAYS = pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "two-workers"])


def run_sample(tmp_path, files: dict[str, str], require: str | None, workers: list[str] = ()) -> subprocess.CompletedProcess:
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tests / "conftest.py")
    for name, text in files.items():
        (tests / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  gpu: x\n  hardware: y\n")
    env = {k: v for k, v in os.environ.items() if k != "STREAMREC_REQUIRE"}
    if require is not None:
        env["STREAMREC_REQUIRE"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *workers, "tests"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@WAYS
def test_plain_pytest_skips_and_lists_the_hardware_skips(tmp_path, workers):
    r = run_sample(tmp_path, {"test_sample.py": SAMPLE}, None, workers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 5 skipped, 1 xfailed" in r.stdout
    assert "2 skipped: hardware this machine lacks" in r.stdout
    assert "tests/test_sample.py::test_bf16: this CPU has no bfloat16 instructions" in r.stdout
    assert "tests/test_sample.py::test_cuda: needs a CUDA GPU" in r.stdout


@pytest.mark.slow
@WAYS
def test_strict_mode_fails_every_skip_but_the_hardware_ones(tmp_path, workers):
    r = run_sample(tmp_path, {"test_sample.py": SAMPLE}, "all", workers)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = re.sub(r", \d+ warnings?", "", r.stdout)  # a warning of the environment does not change the counts
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 2 errors" in summary  # the skipped two: the hardware ones
    for test, reason in [("test_fixture_skip", "no server in a fixture"), ("test_mark_skip", "a package is missing"),
                         ("test_inline_skip", "skipped inside")]:
        line = next(l for l in r.stdout.splitlines() if l.startswith(("FAILED", "ERROR")) and f"::{test} " in l)
        assert "skipped under" in line, line  # the summary line is cut short; the full reason is above
        assert f"STREAMREC_REQUIRE=all, which allows no skip but for missing hardware: {reason}" in r.stdout
    assert "tests/test_sample.py::test_bf16: this CPU has no bfloat16 instructions" in r.stdout


@pytest.mark.slow
@WAYS
def test_strict_mode_fails_a_module_skipped_at_import(tmp_path, workers):
    module = 'import pytest\npytest.importorskip("no_such_module_here")\n\ndef test_a():\n    pass\n'
    files = {"test_fine.py": "def test_ok():\n    pass\n", "test_needs.py": module}
    (tmp_path / "polite").mkdir()
    (tmp_path / "strict").mkdir()
    polite = run_sample(tmp_path / "polite", files, None, workers)
    assert polite.returncode == 0 and "1 passed, 1 skipped" in polite.stdout, polite.stdout
    strict = run_sample(tmp_path / "strict", files, "all", workers)
    assert strict.returncode == 1, strict.stdout
    assert "STREAMREC_REQUIRE=all: 1 module(s) skipped, a failure" in strict.stdout
    assert "tests/test_needs.py: could not import 'no_such_module_here'" in strict.stdout


@pytest.mark.parametrize("value", ["yes", "1"])
def test_an_unknown_requirement_is_refused(tmp_path, value):
    r = run_sample(tmp_path, {"test_fine.py": "def test_ok():\n    pass\n"}, value)
    assert r.returncode != 0 and f"STREAMREC_REQUIRE: expected 'all' or nothing, got {value!r}" in r.stdout + r.stderr


def test_the_longest_files_named_for_the_workers_exist():
    from conftest import LONGEST_FIRST

    missing = [name for name in LONGEST_FIRST if not (ROOT / "tests" / name).is_file()]
    assert not missing, f"tests/conftest.py's LONGEST_FIRST names files that are gone: {missing}"
