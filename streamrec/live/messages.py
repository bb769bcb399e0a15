"""The JSON messages sent to browsers, and a validator the tests and clients can use.

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

import math
from typing import Any, Sequence

import numpy as np

from streamrec.live.smoothing import UNCERTAIN, Smoothed

TOP_K = 5
MEANINGLESS = "random weights (--weights none): labels are meaningless, for pipeline testing only"


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
        "latency_ms": round((sent_ts - end_ts) * 1e3, 2),
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


_FIELDS = {
    "type": str, "seq": int, "label": str, "score": float, "raw_label": str, "raw_score": float,
    "top": list, "window": dict, "infer_ms": float, "latency_ms": float, "capture_fps": float,
}


def validate_prediction(msg: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that breaks the prediction schema."""
    for key, typ in _FIELDS.items():
        if key not in msg:
            raise ValueError(f"prediction: missing field {key!r}")
        val = msg[key]
        ok = isinstance(val, (int, float)) and not isinstance(val, bool) if typ is float else isinstance(val, typ)
        if not ok:
            raise ValueError(f"prediction.{key}: expected {typ.__name__}, got {type(val).__name__}")
    if msg["type"] != "prediction":
        raise ValueError(f"prediction.type: expected 'prediction', got {msg['type']!r}")
    zone = msg.get("zone")
    if zone is not None and (not isinstance(zone, str) or not zone or "/" in zone):
        raise ValueError(f"prediction.zone: expected a zone's name or null (the whole frame), got {zone!r}")
    for key in ("score", "raw_score"):
        if not 0.0 <= msg[key] <= 1.0:
            raise ValueError(f"prediction.{key}: expected 0..1, got {msg[key]}")
    top = msg["top"]
    if not 1 <= len(top) <= TOP_K or any(set(t) != {"label", "score"} for t in top):
        raise ValueError(f"prediction.top: expected 1..{TOP_K} {{label, score}} entries, got {top!r}")
    if any(top[i]["score"] < top[i + 1]["score"] for i in range(len(top) - 1)):
        raise ValueError("prediction.top: expected scores in descending order")
    w = msg["window"]
    if set(w) != {"start_ts", "end_ts", "frames"} or not w["start_ts"] <= w["end_ts"] or w["frames"] < 1:
        raise ValueError(f"prediction.window: expected start_ts <= end_ts and frames >= 1, got {w!r}")
    for key in ("infer_ms", "latency_ms", "capture_fps"):
        if not math.isfinite(msg[key]) or msg[key] < 0:
            raise ValueError(f"prediction.{key}: expected a finite value >= 0, got {msg[key]}")
