"""A first start that talks: what ``serve`` says while the model loads, and when the page is ready."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from conftest import ROOT, sigterm, streamrec_cmd


def _serve_log(tmp_path, cache: str) -> list[str]:
    """serve's stderr lines up to (and including) the page's address."""
    env = {**os.environ, "STREAMREC_CACHE": str(tmp_path / cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(streamrec_cmd("serve", "--source", str(ROOT / "demo" / "clips" / "arm_wrestling.mp4"),
                                          "--loop", "--port", "0", "--model", "tiny3d", "--weights", "none",
                                          "--device", "cpu", "--backend", "auto", "--db", str(tmp_path / "h.db")),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if " at http://" in line or time.monotonic() > deadline:
                break
    finally:
        assert sigterm(proc) == 0
    return lines


def _index(lines: list[str], pattern: str) -> int:
    hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert len(hits) == 1, (pattern, lines)
    return hits[0]


@pytest.mark.slow
def test_serve_says_what_it_loads_and_times_then_the_address(tmp_path):
    lines = _serve_log(tmp_path, "cache")
    loading = _index(lines, r"INFO .*loading model tiny3d \(first start: timing backends, once per machine and model\)…$")
    timing = _index(lines, r"INFO .*--backend auto: timing torch, .* for tiny3d \(once per machine and model; "
                           r"the choice is kept in .*backends\.json\)$")
    serving = _index(lines, r"INFO .*serving .* at http://127\.0\.0\.1:\d+/ \(Ctrl-C to stop\)$")
    assert loading < timing < serving
    again = _serve_log(tmp_path, "cache")  # the choice is cached: no timing, and no promise of it
    _index(again, r"INFO .*loading model tiny3d…$")
    assert not any("timing" in line for line in again)
    _index(again, r"serving .* at http://")
