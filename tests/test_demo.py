"""The quick-start notebook runs top to bottom (offline: it falls back to random weights)."""

import contextlib
import io
import json

from conftest import ROOT


def test_quickstart_notebook_runs(clips, tmp_path, monkeypatch):
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


def test_replay_camera_refuses_what_it_cannot_serve(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    demo = str(ROOT / "demo" / "replay_camera.py")
    r = subprocess.run([sys.executable, "-c", "import gi"], capture_output=True)
    if r.returncode != 0:  # the venv has no GStreamer bindings: said in one line, not a traceback
        r = subprocess.run([sys.executable, demo, "clip.mp4"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.startswith("replay_camera.py: error: needs GStreamer's Python bindings")
    if Path("/usr/bin/python3").exists() and subprocess.run(["/usr/bin/python3", "-c", "import gi"]).returncode == 0:
        r = subprocess.run(["/usr/bin/python3", demo, str(tmp_path / "missing.mp4")], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2 and "READY" not in r.stdout  # it used to announce a stream of nothing
        assert r.stderr.splitlines()[-1] == f"rtsp_server.py: error: clip: file not found: {tmp_path / 'missing.mp4'}"
