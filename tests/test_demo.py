"""The quick-start notebook runs top to bottom (offline: it falls back to random weights)."""

import contextlib
import io
import json
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_quickstart_notebook_runs(demo_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("STREAMREC_OFFLINE", "1")
    monkeypatch.chdir(ROOT / "demo")
    nb = json.loads((ROOT / "demo" / "quickstart.ipynb").read_text())
    env: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), env)
    text = out.getvalue()
    assert "16 (256, 340, 3) 1.00 s" in text
    assert "random weights - the labels below are meaningless" in text
    assert tuple(env["x"].shape) == (1, 3, 16, 112, 112)
    assert len(env["top5"]) == 5 and env["top5"][0].label in env["rec"].classes


REPLAY = str(ROOT / "demo" / "replay_camera.py")


def test_replay_camera_without_gstreamer_bindings_says_so_in_one_line():
    """Run as if ``gi`` were not installed (a venv without system packages), wherever it is."""
    import subprocess
    import sys

    hide_gi = ("import runpy, sys; sys.modules['gi'] = None; sys.argv = [sys.argv[1], 'clip.mp4']; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", hide_gi, REPLAY], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("replay_camera.py: error: needs GStreamer's Python bindings"), r.stderr


def test_replay_camera_refuses_a_missing_clip(tmp_path):
    import subprocess
    import sys

    import pytest

    pythons = [p for p in (sys.executable, "/usr/bin/python3")
               if Path(p).exists() and subprocess.run([p, "-c", "import gi"], capture_output=True).returncode == 0]
    if not pythons:
        pytest.skip("no python3 with GStreamer's Python bindings (Debian: python3-gi); .ci/run installs them")
    r = subprocess.run([pythons[0], REPLAY, str(tmp_path / "missing.mp4")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "READY" not in r.stdout  # it used to announce a stream of nothing
    assert r.stderr.splitlines()[-1] == f"rtsp_server.py: error: clip: file not found: {tmp_path / 'missing.mp4'}"
