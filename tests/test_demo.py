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
