"""The JSON messages sent to browsers, built as dicts; :mod:`streamrec.live.wire` types them,
checks them and gives their JSON Schema.

A prediction::

    {"type": "prediction", "seq": 3, "label": "archery", "score": 0.71,
     "raw_label": "archery", "raw_score": 0.66, "uncertain": false,
     "top": [{"label": "archery", "score": 0.66}, ...5],
     "window": {"start_ts": 1764097000.1, "end_ts": 1764097001.1, "frames": 16},
     "infer_ms": 612.0, "latency_ms": 700.3, "capture_fps": 30.0,
     "camera": "default", "zone": null, "meaningless": false}

``zone`` is the zone's name for a zone's label, ``null`` for the whole frame.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from streamrec.catalog import MEANINGLESS  # noqa: F401 - the random-weights warning, re-exported
from streamrec.live.smoothing import UNCERTAIN, Smoothed
from streamrec.live.wire import TOP_K, Prediction, validate_message


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = TOP_K) -> list[dict[str, Any]]:
    """The ``k`` best classes, best first, as ``{"label", "score"}`` dicts."""
    return top_k_many(np.asarray(probs)[None], classes, k)[0]  # (K,) -> (1, K)


def top_k_many(probs: np.ndarray, classes: Sequence[str], k: int = TOP_K) -> list[list[dict[str, Any]]]:
    """:func:`top_k` of each row of ``probs`` ``(B, K)``, with two NumPy calls for the whole batch
    (see :func:`streamrec.live.smoothing.update_many` for why not one per row); ties keep class order.

    Example:
        >>> top_k_many(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]), ["a", "b", "c"], 2)
        [[{'label': 'b', 'score': 0.6}, {'label': 'c', 'score': 0.3}], [{'label': 'a', 'score': 0.5}, {'label': 'c', 'score': 0.3}]]
    """
    k = min(k, len(classes))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, K) -> (B, k): best first, ties in class order
    best = np.take_along_axis(probs, idx, 1)
    idx, best = idx.tolist(), best.tolist()
    return [[{"label": classes[i], "score": round(v, 5)} for i, v in zip(ri, rv)] for ri, rv in zip(idx, best)]


def prediction_message(
    *,
    seq: int,
    smoothed: Smoothed,
    classes: Sequence[str],
    probs: np.ndarray | None = None,
    top: list[dict[str, Any]] | None = None,
    start_ts: float,
    end_ts: float,
    frames: int,
    infer_ms: float,
    sent_ts: float,
    capture_fps: float,
    camera: str = "default",
    zone: str | None = None,
    meaningless: bool = False,
) -> dict[str, Any]:
    """One prediction message of ``camera``'s ``zone`` (``None``: its whole frame); ``top`` is
    computed from ``probs`` unless given."""
    if top is None and probs is None:
        raise ValueError("prediction_message: expected probs or top, got neither")
    return {
        "type": "prediction",
        "seq": seq,
        "label": UNCERTAIN if smoothed.uncertain else classes[smoothed.label_index],
        "score": round(smoothed.score, 5),
        "raw_label": classes[smoothed.raw_index],
        "raw_score": round(smoothed.raw_score, 5),
        "uncertain": smoothed.uncertain,
        "top": top if top is not None else top_k(probs, classes),  # top: already computed (a batch's)
        "window": {"start_ts": start_ts, "end_ts": end_ts, "frames": frames},
        "infer_ms": round(infer_ms, 2),
        "latency_ms": round(max(0.0, sent_ts - end_ts) * 1e3, 2),  # 0, not below, when the clock went back
        "capture_fps": round(capture_fps, 2),
        "camera": camera,
        "zone": zone,
        "meaningless": meaningless,
    }


def status_message(*, camera: str, source: dict[str, Any], inference: dict[str, Any], model: str, device: str,
                   backend: str | None, meaningless: bool, zones: Sequence[Any] = (), whole_frame: bool = True,
                   **extra: Any) -> dict[str, Any]:
    """A camera's status, once a second: ``source`` is its capture's stats (``state``, ``error``,
    ``capture_fps``, ``dropped``...), ``inference`` its label stats (``inference_rate``...); the
    page reads both, and shows the model with its device and backend (``openvino-int8``: quantized).
    ``zones`` (:class:`~streamrec.zones.ZoneConfig`) are sent as ``"zones"`` (their JSON), with
    ``"whole_frame"`` (whether the whole frame is labelled too), for the page to draw them.
    ``extra`` adds fields (the cluster adds the camera's ``node``).

    Example:
        >>> m = status_message(camera="pool", source={"state": "running"}, inference={"inference_rate": 2.0},
        ...                    model="r2plus1d_18", device="cpu", backend="openvino", meaningless=True)
        >>> m["type"], m["backend"], m["warning"] == MEANINGLESS, m["zones"], m["whole_frame"]
        ('status', 'openvino', True, [], True)
    """
    return {"type": "status", "camera": camera, "source": source, "inference": inference, "model": model,
            "device": device, "backend": backend, "meaningless": meaningless,
            "warning": MEANINGLESS if meaningless else None, "zones": [z.to_json() for z in zones],
            "whole_frame": whole_frame, **extra}


def validate_prediction(msg: dict[str, Any]) -> Prediction:
    """``msg`` as a :class:`~streamrec.live.wire.Prediction`; ``ValueError`` naming the first field
    that breaks its schema (see :func:`~streamrec.live.wire.validate_message`), or ``type`` when
    ``msg`` is another message."""
    out = validate_message(msg)
    if not isinstance(out, Prediction):
        raise ValueError(f"prediction.type: expected 'prediction', got {msg.get('type')!r}")
    return out
