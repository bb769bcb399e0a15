"""The prepared-model cache: a later start loads a traced graph, without torchvision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import pytest

from streamrec.runtime import prepared
from streamrec.models.registry import build_model, kinetics_classes, make_checkpoint, model_spec

from conftest import save_default_weights

CHILD = r"""
import json, sys, torch
from pathlib import Path
from streamrec.runtime import prepared
loaded = prepared.load("r2plus1d_18", "DEFAULT", cache=Path(sys.argv[1]))
x = torch.load(sys.argv[2])
with torch.no_grad():
    out = loaded.module(x)
torch.save(out, sys.argv[3])
print(json.dumps({"torchvision": "torchvision" in sys.modules, "type": type(loaded.module).__name__,
                  "classes": loaded.classes, "spec": loaded.spec.to_dict(), "weights": loaded.weights}))
"""


@pytest.mark.slow
def test_a_second_start_loads_the_graph_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("STREAMREC_OFFLINE", "1")
    save_default_weights("r2plus1d_18", tmp_path / "torch")
    cache = tmp_path / "cache"
    first = prepared.load("r2plus1d_18", "DEFAULT", cache=cache)
    assert len(list((cache / "prepared").glob("r2plus1d_18-*.pt"))) == 1
    x = torch.randn(2, 3, 16, 112, 112, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = first.module(x)
    env = {**os.environ, "PYTHONPATH": str(os.getcwd())}
    r = subprocess.run([sys.executable, "-c", CHILD, str(cache), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["torchvision"] is False and got["type"] == "GraphModule"
    assert got["classes"] == kinetics_classes("r2plus1d_18") and got["weights"] == "DEFAULT"
    assert got["spec"] == first.spec.to_dict()
    assert torch.equal(torch.load(tmp_path / "y.pt"), ref)  # the same numbers, bit for bit


@pytest.mark.slow
def test_a_changed_weights_file_is_loaded_again(tmp_path):
    w = tmp_path / "w.pt"

    def checkpoint():
        return make_checkpoint(build_model("tiny3d", num_classes=3), model="tiny3d", classes=["a", "b", "c"],
                               spec=model_spec("tiny3d"))

    torch.manual_seed(0)
    torch.save(checkpoint(), w)
    cache = tmp_path / "cache"
    prepared.load(None, str(w), cache=cache)
    again = prepared.load(None, str(w), cache=cache)
    assert type(again.module).__name__ == "GraphModule" and again.classes == ["a", "b", "c"]  # from the cache
    newer = checkpoint()  # other random weights, the same file size
    before = w.stat()
    torch.save(newer, w)
    os.utime(w, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # a later mtime, however coarse the clock
    fresh = prepared.load(None, str(w), cache=cache)
    assert type(fresh.module).__name__ != "GraphModule"  # stale entry: loaded from the file
    for k, v in newer["state_dict"].items():
        assert torch.equal(fresh.module.state_dict()[k], v), k
    assert type(prepared.load(None, str(w), cache=cache).module).__name__ == "GraphModule"  # cached again


def test_random_weights_are_not_cached(tmp_path):
    loaded = prepared.load("tiny3d", "none", cache=tmp_path)
    assert loaded.meaningless
    assert not (tmp_path / "prepared").exists()


@pytest.mark.slow
def test_a_graph_with_fixed_sizes_is_checked_at_full_size_and_cached(tmp_path, monkeypatch, capfd):
    """MViT's traced graph holds its token grid's sizes: the small-input check fails, the full one passes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    save_default_weights("mvit_v2_s", tmp_path / "torch")
    cache = tmp_path / "cache"
    first = prepared.load("mvit_v2_s", "DEFAULT", cache=cache)
    again = prepared.load("mvit_v2_s", "DEFAULT", cache=cache)
    assert type(again.module).__name__ == "GraphModule"
    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again.module(x), first.module(x))
    assert "Traceback" not in capfd.readouterr().err  # the expected small-size failure is not printed
