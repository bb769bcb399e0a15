"""The inference worker: each batch starts on a fresh frame, and slow inference skips windows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from streamrec.config import CameraConfig
from streamrec.runtime.classifier import Classifier
from streamrec.live.camera import Camera
from streamrec.serve.worker import InferenceWorker
from streamrec.models.registry import load_model
from streamrec.live.smoothing import SmoothingConfig

from conftest import write_video


class SlowClassifier(Classifier):
    """tiny3d, made as slow as a big model on a small CPU (a fake: the delay is the point)."""

    delay_s = 0.25

    def probs(self, batch):
        time.sleep(self.delay_s)
        return super().probs(batch)


def run_worker(video, frame_wait_s: float, n: int = 6, *, clf: Classifier | None = None, sports_only: bool = False) -> list[dict]:
    clf = clf or SlowClassifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    wake = threading.Condition()
    stop = threading.Event()
    cam = Camera(CameraConfig(name="c", source=str(video), loop=True, sports_only=sports_only), clf, SmoothingConfig(), wake=wake)
    got: list[dict] = []
    done = threading.Event()

    def publish(items):
        got.extend(msg for _cam, msg in items)
        if len(got) >= n:
            done.set()

    worker = InferenceWorker(clf, publish, stop_event=stop, wake=wake, frame_wait_s=frame_wait_s)
    worker.add(cam)
    cam.start()
    worker.start()
    try:
        assert done.wait(60), f"only {len(got)} predictions"
    finally:
        stop.set()
        cam.close()
        with wake:
            wake.notify_all()
        worker.join(5)
    assert not worker.is_alive() and not cam.capture.is_alive()
    return got


@pytest.mark.slow
def test_each_batch_starts_on_a_frame_captured_after_the_previous_batch(tmp_path):
    video = write_video(tmp_path / "ten.mp4", seconds=4, fps=10)  # a frame every 100 ms
    msgs = run_worker(video, frame_wait_s=0.2)
    for prev, cur in zip(msgs, msgs[1:]):
        sent = prev["window"]["end_ts"] + prev["latency_ms"] / 1e3
        # the window's last frame came after the previous result went out (20 ms for pacing jitter)
        assert cur["window"]["end_ts"] >= sent - 0.02, (sent, cur["window"]["end_ts"])
    # inference (250 ms) is slower than the camera (100 ms): windows in between are skipped, not queued
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    ends = np.diff([m["window"]["end_ts"] for m in msgs])
    assert ends.min() >= 0.25 - 0.02


@pytest.mark.slow
def test_sports_only_labels_only_sport_classes_renormalized(tmp_path):
    from streamrec.models.kinetics import sport_classes

    video = write_video(tmp_path / "ten.mp4", seconds=4, fps=10)
    torch.manual_seed(0)
    clf = Classifier(load_model("r2plus1d_18", weights="none"), device="cpu", backend="torch", warmup=0)
    msgs = run_worker(video, frame_wait_s=0.0, n=3, clf=clf, sports_only=True)
    sports = set(sport_classes())
    for m in msgs:
        assert {m["label"], m["raw_label"]} - {"uncertain"} <= sports
        assert {t["label"] for t in m["top"]} <= sports
        assert m["top"][0]["score"] == m["raw_score"] and sum(t["score"] for t in m["top"]) <= 1.0 + 1e-6
    # renormalized over 134 of 400 classes: random weights' near-uniform scores rise to about 1/134
    assert msgs[0]["top"][-1]["score"] > 0.9 / 134


def test_waiting_for_more_cameras_leaves_the_windows_already_in_the_batch(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=1, fps=10)
    clf = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    wake, stop = threading.Condition(), threading.Event()
    a, b = (Camera(CameraConfig(name=n, source=str(video)), clf, SmoothingConfig(), wake=wake) for n in "ab")
    worker = InferenceWorker(clf, lambda _items: None, stop_event=stop, wake=wake)
    worker.add(a)
    worker.add(b)
    spec = clf.loaded.spec
    frame = np.zeros(a.ring.frame_shape, a.ring.dtype)
    ts = [k / 30 for k in range(40)]  # a 30 fps camera, never started: frames written here
    try:
        for t in ts[:36]:
            a.ring.write(frame, t)
        first = worker.collect()
        assert [(c.name, w.end_seq) for c, w in first] == [("a", 35)]  # b has no frame yet
        a.ring.write(frame, ts[36])  # a new frame for a while the worker waits for b
        for t in ts[:36]:
            b.ring.write(frame, t)
        more = worker.collect(frozenset({"a"}))
        assert [(c.name, w.end_seq) for c, w in more] == [("b", 35)]
        assert (a.last_end, a.skipped) == (35, 0)  # a's newer window is still there for the next batch
        assert [(c.name, w.end_seq) for c, w in worker.collect()] == [("a", 36)]
        assert spec.frames == first[0][1].frames.shape[0]
    finally:
        a.close()
        b.close()


def test_more_cameras_than_the_batch_take_turns_and_keep_their_windows(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=1, fps=10)
    clf = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    wake, stop = threading.Condition(), threading.Event()
    cams = [Camera(CameraConfig(name=n, source=str(video)), clf, SmoothingConfig(), wake=wake) for n in "abc"]
    worker = InferenceWorker(clf, lambda _items: None, stop_event=stop, wake=wake, max_batch=2)
    for c in cams:
        worker.add(c)
    frame = np.zeros(cams[0].ring.frame_shape, cams[0].ring.dtype)
    try:
        served = []
        for k in range(40):  # every camera has a new frame before every batch
            for c in cams:
                c.ring.write(frame, k / 30)
            if k < 35:
                continue
            batch = worker.collect()
            served.append("".join(c.name for c, _ in batch))
            assert all(w.end_seq == k for _, w in batch)  # each the camera's newest window
            worker._served(batch)
        assert served == ["ab", "ca", "bc", "ab", "ca"]  # with 3 cameras and batches of 2, nobody starves
        # a camera left out keeps its window: never taken, so never counted as skipped
        left_out = cams[1]  # "b" was left out of the last batch
        assert (left_out.last_end, left_out.skipped) == (38, 1)  # taken at frames 35, 37 and 38: frame 36 skipped
    finally:
        for c in cams:
            c.close()
