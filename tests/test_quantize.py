"""`streamrec quantize` and `--backend openvino-int8`: an int8 model made on real clips (the
shipped one and its mirror image), checked against fp32, kept in the cache, and served."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import av
import pytest
import torch

from conftest import ROOT, error_line, free_port, load_benchmark, run_cli, sigterm, streamrec_cmd, wait_http

pytest.importorskip("nncf")
pytest.importorskip("openvino")

CLASSES = [f"activity {i}" for i in range(10)]


@pytest.fixture(scope="module")
def second_clip(demo_clip, tmp_path_factory) -> Path:
    """The shipped clip mirrored left to right (re-encoded): a second real clip of other windows."""
    from conftest import write_frames

    with av.open(str(demo_clip)) as c:
        frames = [f.to_ndarray(format="rgb24")[:, ::-1] for f in c.decode(video=0)]
    return write_frames(tmp_path_factory.mktemp("clips") / "mirrored.mp4", frames, 28)


@pytest.fixture(scope="module")
def checkpoint(demo_clip, second_clip, tmp_path_factory) -> Path:
    """A tiny3d checkpoint whose outputs depend on its input: random convolutions with batch-norm
    statistics measured on real windows (benchmarks/stand_in_weights.py)."""
    from streamrec.offline.bench import clip_windows
    from streamrec.models.registry import build_model, load_model, make_checkpoint, model_spec

    torch.manual_seed(0)
    net = build_model("tiny3d", num_classes=len(CLASSES))
    windows = clip_windows([demo_clip, second_clip],
                           load_model("tiny3d", weights="none"), stride=0.5)
    net = load_benchmark("stand_in_weights").batchnorm_from_clips(net, windows)
    path = tmp_path_factory.mktemp("int8") / "tiny.pt"
    torch.save(make_checkpoint(net, model="tiny3d", classes=CLASSES, spec=model_spec("tiny3d")), path)
    return path


@pytest.mark.slow
def test_quantize_keeps_a_checked_model_that_serve_runs(demo_clip, second_clip, checkpoint, tmp_path, monkeypatch):
    from streamrec.runtime import autopick
    from streamrec.runtime import openvino
    from streamrec.runtime import prepared
    from streamrec.offline.bench import clip_windows
    from streamrec.runtime.classifier import Classifier

    cache = tmp_path / "cache"
    two = [str(demo_clip), str(second_clip)]
    proc = run_cli("quantize", "--weights", str(checkpoint), "--clips", *two, "--stride", "1", "--json",
                   env={"STREAMREC_CACHE": str(cache)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # NNCF's progress bars went to stderr
    loaded = prepared.load(None, str(checkpoint), device="cpu", cache=tmp_path / "prepared")
    n = len(clip_windows([Path(c) for c in two], loaded, stride=1.0))
    assert (report["calibration_windows"], report["checked_windows"]) == ((n + 1) // 2, n // 2)
    assert report["model"] == "tiny3d" and report["clips"] == two and report["stride_s"] == 1.0
    assert 0.9 <= report["agreement"] <= 1.0
    assert 0.0 < report["max_abs_score_diff"] <= 0.1  # really quantized, and close
    xml = Path(report["saved"])
    assert xml.parent == cache / "openvino" and xml.name.endswith("-int8.xml")
    assert xml.with_suffix(".bin").stat().st_size > 0
    assert json.loads(xml.with_suffix(".json").read_text())["top1_agree"] == report["top1_agree"]

    # the live classifier finds it by the weights' digest, from the model serve loads
    windows = clip_windows([demo_clip], loaded, stride=1.0)
    with torch.no_grad():
        reference = [torch.softmax(loaded.module(w), -1) for w in windows]
    for module in (openvino, autopick):  # where the command above kept it
        monkeypatch.setattr(module, "CACHE", cache)
    clf = Classifier(prepared.load(None, str(checkpoint), device="cpu", cache=tmp_path / "prepared"),
                     device="cpu", backend="openvino-int8")
    assert clf.backend == "openvino-int8"
    int8 = [clf.probs(w) for w in windows]
    diffs = [float((a - torch.as_tensor(b)).abs().max()) for a, b in zip(reference, int8)]
    assert 0.0 < max(diffs) <= 0.1

    port = free_port()
    server = subprocess.Popen(streamrec_cmd("serve", "--source", two[0], "--loop", "--weights", str(checkpoint),
                                            "--backend", "openvino-int8", "--device", "cpu", "--port", str(port),
                                            "--db", str(tmp_path / "h.db")),
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "STREAMREC_CACHE": str(cache)})
    try:
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=server, timeout=120))
        assert health["backend"] == "openvino-int8" and health["model"] == "tiny3d"
    finally:
        assert sigterm(server) == 0


@pytest.mark.slow
def test_quantize_refuses_a_model_that_moves_the_scores_too_far(demo_clip, checkpoint, tmp_path):
    cache = tmp_path / "cache"
    proc = run_cli("quantize", "--weights", str(checkpoint), "--clips", str(demo_clip),
                   "--max-score-diff", "0", env={"STREAMREC_CACHE": str(cache)}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--max-score-diff 0" in proc.stderr.splitlines()[-1] and "not saved" in proc.stderr.splitlines()[-1]
    assert "top-1 same as fp32" in proc.stdout  # the report is printed all the same
    assert list(cache.glob("openvino/*-int8.*")) == []


@pytest.mark.slow
def test_long_clips_widen_the_stride_to_keep_the_windows_held_bounded(demo_clip, second_clip, checkpoint, tmp_path, monkeypatch):
    from streamrec.runtime import autopick
    from streamrec.runtime import openvino
    from streamrec.runtime import prepared
    from streamrec.offline.dataset import probe
    from streamrec.offline.quantize import quantize

    for module in (openvino, autopick):

        monkeypatch.setattr(module, "CACHE", tmp_path)
    two = [demo_clip, second_clip]
    total = sum(probe(c).duration_s for c in two)
    loaded = prepared.load(None, str(checkpoint), device="cpu", cache=tmp_path / "prepared")
    report = quantize(loaded, two, stride=0.5, max_windows=6, save=False)
    assert report.stride_s == total / 6 > 0.5
    assert 6 <= report.calibration_windows + report.checked_windows <= 6 + len(two)  # one more per clip at most
    assert report.saved is None and list(tmp_path.glob("openvino/*-int8.xml")) == []  # save=False


@pytest.mark.slow
def test_int8_backend_without_a_quantized_model_names_the_command(demo_clip, checkpoint, tmp_path):
    proc = run_cli("classify", str(demo_clip), "--weights", str(checkpoint),
                   "--backend", "openvino-int8", "--device", "cpu", env={"STREAMREC_CACHE": str(tmp_path)})
    line = error_line(proc)
    assert f"make one first: streamrec quantize --model tiny3d --weights '{checkpoint}' --clips DIR" in line
    assert str(tmp_path / "openvino") in line


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--clips", "/nonexistent/clips"], "--clips: no such file or folder: /nonexistent/clips"),
    (["--clips", "{empty}"], "--clips: expected video files or folders holding them, found none in {empty}"),
    (["--clips", "{clip}", "--min-agreement", "1.5"], "--min-agreement: expected a fraction from 0 to 1, got 1.5"),
    (["--clips", "{clip}", "--max-score-diff", "-1"], "--max-score-diff: expected a score difference from 0 to 1, got -1.0"),
    (["--clips", "{clip}", "--stride", "0"], "--stride: expected 0.01 to 86400 seconds between windows, got 0.0"),
    (["--clips", "{clip}", "{text}", "--weights", "{tiny}"],
     "--clips: not a readable video file {text}: Invalid data found when processing input"),
    (["--clips", "{clip}", "--weights", "none", "--model", "tiny3d"],
     "--weights none: random weights; quantize a trained model (DEFAULT or a checkpoint)"),
])
def test_quantize_bad_input_is_one_line(demo_clip, checkpoint, tmp_path, args, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.mp4").write_text("not a video")
    fill = {"empty": str(tmp_path / "empty"), "clip": str(demo_clip), "tiny": str(checkpoint),
            "text": str(tmp_path / "notes.mp4")}
    args = [a.format(**fill) for a in args]
    proc = run_cli("quantize", *args, env={"STREAMREC_CACHE": str(tmp_path / "cache")})
    assert error_line(proc) == "streamrec: error: " + expected.format(**fill)


@pytest.mark.slow
def test_stand_in_batch_norms_are_the_averages_over_the_windows():
    from streamrec.models.registry import build_model

    torch.manual_seed(0)
    net = build_model("tiny3d", num_classes=3)
    windows = [torch.randn(1, 3, 16, 112, 112) * s + s for s in (0.5, 1.0, 2.0)]
    conv, bn = net.stem[0], net.stem[1]
    with torch.no_grad():
        outs = [conv(w) for w in windows]  # (1, C, T, H, W) each
    load_benchmark("stand_in_weights").batchnorm_from_clips(net, windows)
    assert not net.training
    means = torch.stack([o.mean(dim=(0, 2, 3, 4)) for o in outs])
    variances = torch.stack([o.var(dim=(0, 2, 3, 4), unbiased=True) for o in outs])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3
