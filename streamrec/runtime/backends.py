"""CPU inference backends beyond eager PyTorch: ONNX Runtime, OpenVINO (fp32, bfloat16 and int8).

Each backend (:mod:`~streamrec.runtime.onnx`, :mod:`~streamrec.runtime.openvino`) turns a model into a callable ``(B, C, T, H, W) float32 -> (B, K) logits`` torch
function. ``auto`` times every backend that installs on this machine for this model and
caches the winner (:mod:`~streamrec.runtime.autopick`).

Example:
    >>> from streamrec.models.registry import load_model
    >>> fn = build("openvino", load_model("tiny3d", weights="none"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np

from streamrec.catalog import BACKEND_NAMES
from streamrec.errors import StreamrecError
from streamrec.models.spec import LoadedModel
from streamrec.runtime.onnx import onnxruntime_module
from streamrec.runtime.openvino import compile_openvino, load_int8

logger = logging.getLogger(__name__)


def build(name: str, loaded: LoadedModel, *, threads: int | None = None):
    """A callable for ``loaded`` on ``name`` (a CPU backend other than torch/torchscript)."""
    if name == "onnxruntime":
        return onnxruntime_module(loaded, threads)
    if name == "openvino":
        return compile_openvino(loaded, threads)
    if name == "openvino-bf16":
        return compile_openvino(loaded, threads, "bf16")
    if name == "openvino-int8":
        return load_int8(loaded, threads)
    raise StreamrecError(f"--backend: expected one of {', '.join(BACKEND_NAMES)}, got {name!r}")


def available() -> list[str]:
    """CPU backends whose libraries import here."""
    import importlib.util

    names = ["torch", "torchscript"]
    for name, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if importlib.util.find_spec(mod) is not None:
            names.append(name)
    return names


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
