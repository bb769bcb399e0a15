"""torch.fx tracing in one thread while models run in another (a camera added at run time)."""

from __future__ import annotations

import threading

import torch
import pytest
from torchvision.models.video import r2plus1d_18

from streamrec.runtime.graphs import fold_norms
from streamrec.runtime.classifier import Classifier
from streamrec.models.registry import load_model
from streamrec.runtime.tracing import CallTraceGuard


@pytest.mark.slow
def test_models_keep_running_while_another_model_is_traced():
    clf = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    x = torch.zeros(1, 3, 16, 112, 112)
    stop, errors, calls = threading.Event(), [], [0]

    def infer():
        while not stop.is_set():
            try:
                clf.logits(x)
                calls[0] += 1
            except Exception as exc:  # noqa: BLE001 - what this test counts
                errors.append(f"{type(exc).__name__}: {exc}")

    t = threading.Thread(target=infer, name="inference-test")
    t.start()
    try:
        net = r2plus1d_18().eval()
        traced = [fold_norms(net) is not None for _ in range(6)]  # each trace patches nn.Module for every thread
    finally:
        stop.set()
        t.join(30)
    assert traced == [True] * 6
    assert errors == [] and calls[0] > 0


def test_a_trace_waits_for_calls_in_progress_and_new_calls_wait_for_it():
    g = CallTraceGuard()
    order: list[str] = []
    in_call, trace_waiting = threading.Event(), threading.Event()

    def tracer():
        trace_waiting.set()
        with g.trace():
            order.append("trace")

    with g.call():
        in_call.set()
        t = threading.Thread(target=tracer)
        t.start()
        trace_waiting.wait(5)
        while not g.waiting:  # the trace is queued behind this call
            pass

        def late_call():
            with g.call():
                order.append("late call")

        late = threading.Thread(target=late_call)
        late.start()
        order.append("call ends")
    t.join(5)
    late.join(5)
    assert order == ["call ends", "trace", "late call"]
