import json

import numpy as np
import pytest

from streamrec.live.messages import prediction_message, top_k, validate_prediction
from streamrec.live.smoothing import LabelSmoother, SmoothingConfig

CLASSES = [f"c{i}" for i in range(8)]


def make(probs=None, threshold=0.2, **kw):
    probs = np.array([0.05, 0.4, 0.1, 0.2, 0.05, 0.1, 0.05, 0.05]) if probs is None else probs
    sm = LabelSmoother(SmoothingConfig(threshold=threshold)).update(probs)
    args = dict(seq=1, smoothed=sm, probs=probs, classes=CLASSES, start_ts=100.0, end_ts=101.0,
                frames=16, infer_ms=600.0, sent_ts=101.25, capture_fps=30.0)
    args.update(kw)
    return prediction_message(**args)


def test_schema_and_values():
    msg = json.loads(json.dumps(make()))
    validate_prediction(msg)
    assert msg["label"] == "c1" and msg["raw_label"] == "c1"
    assert msg["latency_ms"] == 250.0
    assert [t["label"] for t in msg["top"]] == ["c1", "c3", "c2", "c5", "c0"]
    assert msg["window"] == {"start_ts": 100.0, "end_ts": 101.0, "frames": 16}


def test_uncertain_label():
    msg = make(probs=np.full(8, 1 / 8))
    assert msg["label"] == "uncertain" and msg["uncertain"] is True and msg["raw_label"] == "c0"


def test_top_k_is_sorted_and_stable():
    assert [t["label"] for t in top_k(np.array([0.1, 0.3, 0.3, 0.2]), ["a", "b", "c", "d"], 3)] == ["b", "c", "d"]


@pytest.mark.parametrize("field,value,err", [
    ("seq", "1", "seq"), ("score", 1.5, "score"), ("top", [], "top"),
    ("window", {"start_ts": 2.0, "end_ts": 1.0, "frames": 16}, "window"), ("latency_ms", -1.0, "latency_ms"),
])
def test_validator_rejects_bad_fields(field, value, err):
    msg = make()
    msg[field] = value
    with pytest.raises(ValueError, match=err):
        validate_prediction(msg)


def test_top_k_of_a_batch_is_each_rows_own_ranking_with_ties_in_class_order():
    from streamrec.live.messages import top_k_many

    rng = np.random.default_rng(7)
    probs = (rng.integers(0, 6, size=(50, 12)) / 10).astype(np.float32)  # many ties
    classes = [f"c{i}" for i in range(12)]
    got = top_k_many(probs, classes, 5)
    assert len(got) == len(probs) == 50
    for row, tops in zip(probs, got):
        order = sorted(range(12), key=lambda i: (-row[i], i))[:5]
        assert tops == [{"label": classes[i], "score": round(float(row[i]), 5)} for i in order]
    assert top_k(probs[0], classes, 5) == got[0]
    assert len(top_k_many(probs[:2, :3], classes[:3], 5)[0]) == 3  # k capped at the class count
