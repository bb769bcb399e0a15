"""Threads that fail are logged once, counted and restarted; a model that outputs NaN or does not
match its class names never reaches the page or the history, and /healthz says why."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import urllib.request

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from streamrec.config import CameraConfig, SmoothingConfig
from streamrec.live.camera import Camera
from streamrec.models.exported import EXPORT_META, torchscript_quiet
from streamrec.models.registry import build_model, load_model, make_checkpoint, model_spec
from streamrec.runtime.classifier import Classifier
from streamrec.serve.worker import InferenceWorker
from streamrec.supervision import Supervisor

from conftest import error_line, free_port, run_cli, sigterm, streamrec_cmd, wait_http, wait_until, write_video


class FlakyClassifier(Classifier):
    """tiny3d whose first ``fail`` batches raise (a fake fault: the failure is the point)."""

    fail = 3

    def probs(self, batch):
        if self.fail > 0:
            self.fail -= 1
            raise IndexError("list index out of range")
        return super().probs(batch)


@pytest.mark.slow
def test_a_failing_worker_is_logged_once_counted_restarted_and_reported(tmp_path, caplog):
    video = write_video(tmp_path / "v.mp4", seconds=2)
    clf = FlakyClassifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    sup = Supervisor(backoff_s=0.01)
    wake, stop = threading.Condition(), threading.Event()
    cam = Camera(CameraConfig(name="c", source=str(video), loop=True), clf, SmoothingConfig(), wake=wake, supervisor=sup)
    got: list[dict] = []
    worker = InferenceWorker(clf, lambda items: got.extend(m for _, m in items), stop_event=stop, wake=wake,
                             name="inference-0", supervisor=sup)
    worker.add(cam)
    with caplog.at_level(logging.ERROR, logger="streamrec.supervision"):
        cam.start()
        worker.start()
        try:
            wait_until(lambda: len(got) >= 2, "predictions after the restarts")
        finally:
            stop.set()
            cam.close()
            with wake:
                wake.notify_all()
            worker.join(5)
    stats = sup.stats()["inference-0"]
    assert (stats["failures"], stats["restarts"]) == (3, 3)
    assert sup.reasons() == ["inference-0 keeps failing: IndexError: list index out of range (3 times)"]
    failures = [r for r in caplog.records if "inference-0 failed" in r.getMessage()]
    assert len(failures) == 1  # the same error again is counted, not logged again
    assert not worker.is_alive()


def nan_checkpoint(path) -> str:
    """A checkpoint whose values are all finite (a NaN weight is refused at load) but whose model
    outputs NaN for every window: each BatchNorm's running variance is negative."""
    torch.manual_seed(0)
    module = build_model("tiny3d", num_classes=3)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.fill_(-1.0)
    torch.save(make_checkpoint(module, model="tiny3d", classes=["a", "b", "c"], spec=model_spec("tiny3d")), path)
    return str(path)


@pytest.mark.slow
def test_a_model_that_outputs_nan_is_skipped_and_health_turns_degraded(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=3)
    weights = nan_checkpoint(tmp_path / "nan.pt")
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--source", str(video), "--loop", "--weights", weights, "--port",
                                          str(port), "--device", "cpu", "--backend", "torch", "--db",
                                          str(tmp_path / "h.db")), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)

        def degraded():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                h = json.loads(r.read())  # strict JSON: a bare NaN would fail here
            return h if h["status"] == "degraded" else None

        health = wait_until(degraded, "/healthz degraded", timeout=120)
        cam = health["cameras"]["default"]
        assert cam["nonfinite_windows"] >= 1 and cam["predictions"] == 0
        assert any("non-finite scores" in r for r in health["reasons"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        samples = {(s.name, s.labels.get("camera")): s.value for fam in text_string_to_metric_families(text)
                   for s in fam.samples}
        assert samples[("streamrec_windows_nonfinite_total", "default")] >= 1
        assert samples[("streamrec_predictions_total", "default")] == 0
    finally:
        assert sigterm(proc) == 0
    err = proc.stderr.read()
    assert err.count("the model gave non-finite scores") == 1
    assert "Traceback" not in err


def mismatched_export(tmp_path) -> str:
    """A TorchScript export whose metadata lists 2 class names for a head of 3 outputs."""
    module = build_model("tiny3d", num_classes=3).eval()
    spec = model_spec("tiny3d")
    meta = json.dumps({"model": "tiny3d", "classes": ["a", "b"], "preprocess": spec.to_dict()})
    path = tmp_path / "bad.pt"
    with torchscript_quiet():  # TorchScript on purpose: the export format streamrec reads
        traced = torch.jit.trace(module, torch.zeros(1, 3, spec.frames, *spec.crop), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={EXPORT_META: meta})
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["classify", "serve"])
def test_a_model_whose_outputs_do_not_match_its_classes_is_refused(tmp_path, command):
    video = write_video(tmp_path / "v.mp4", seconds=2)
    weights = mismatched_export(tmp_path)
    args = [str(video)] if command == "classify" else ["--source", str(video), "--port", "0", "--db",
                                                         str(tmp_path / "h.db")]
    proc = run_cli(command, *args, "--weights", weights, "--device", "cpu", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == (f"streamrec: error: --weights {weights}: the model has 3 outputs but 2 class names; "
                                "export or save it again with its classes")


@pytest.mark.slow
def test_healthz_without_the_token_says_only_the_status(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=2)
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--source", str(video), "--loop", "--model", "tiny3d", "--weights",
                                          "none", "--port", str(port), "--token", "s3cret", "--db",
                                          str(tmp_path / "h.db")), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        public = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc))
        full = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz?token=s3cret", proc=proc))
        assert list(public) == ["status"] and public["status"] in ("ok", "starting", "degraded")
        assert {"cameras", "reasons", "supervised", "model"} <= set(full)
    finally:
        assert sigterm(proc) == 0


def test_label_messages_leave_out_non_finite_rows_only():
    from streamrec.live.labels import LabelStats, Labelled, label_messages
    from streamrec.live.smoothing import LabelSmoother

    stats = [LabelStats(), LabelStats()]
    items = [Labelled(n, s, LabelSmoother(), None, start_ts=0.0, end_ts=1.0, frames=16, capture_fps=15.0)
             for n, s in zip(("a", "b"), stats)]
    msgs = label_messages(items, np.array([[0.2, 0.8], [np.inf, 0.1]]), ["x", "y"], infer_ms=1.0, clock=lambda: 2.0,
                          meaningless=False)
    assert [(m["camera"], m["label"]) for m in msgs] == [("a", "y")]
    assert [(s.seq, s.nonfinite) for s in stats] == [(1, 0), (0, 1)]


def test_a_sports_only_row_whose_sport_scores_all_underflow_stays_finite():
    """A window the model is sure is no sport (every sport class's score underflows to 0 in
    float32): the sports are even and low, the message is valid JSON, and the next window's
    smoothed score is a number again (a 0/0 once made it NaN for good)."""
    import math

    from streamrec.live.labels import LabelStats, Labelled, label_messages
    from streamrec.live.smoothing import LabelSmoother

    item = Labelled("a", LabelStats(), LabelSmoother(), [1, 2], start_ts=0.0, end_ts=1.0, frames=16, capture_fps=15.0)
    underflow = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)  # softmax of logits 200 apart
    first, = label_messages([item], underflow, ["x", "y", "z"], infer_ms=1.0, clock=lambda: 2.0, meaningless=False)
    assert [(t["label"], t["score"]) for t in first["top"]] == [("y", 0.5), ("z", 0.5), ("x", 0.0)]
    json.dumps(first, allow_nan=False)
    second, = label_messages([item], np.array([[0.1, 0.8, 0.1]], dtype=np.float32), ["x", "y", "z"], infer_ms=1.0,
                             clock=lambda: 3.0, meaningless=False)
    assert second["label"] == "y" and math.isfinite(second["score"]) and second["score"] > 0.5
