"""Model and backend names, Kinetics-400's groups and the temporal sampling of the weights, importable without torch.

The command line parses its arguments (``--model`` choices included) before it decides
whether to import torch at all (see :mod:`streamrec.runtime.firststart`), so the names live here.

Example:
    >>> DEFAULT_MODEL in MODEL_NAMES, TEMPORAL["mvit_v2_s"]
    (True, (16, 7.5))
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

# Temporal sampling the torchvision Kinetics-400 weights were trained with (torchvision's
# references/video_classification recipes; MViT: pytorch/vision#7345): (frames, fps).
TEMPORAL: dict[str, tuple[int, float]] = {
    "r3d_18": (16, 15.0),
    "mc3_18": (16, 15.0),
    "r2plus1d_18": (16, 15.0),
    "s3d": (16, 15.0),
    "mvit_v1_b": (16, 7.5),
    "mvit_v2_s": (16, 7.5),
    "swin3d_t": (16, 15.0),
    "swin3d_s": (16, 15.0),
    "swin3d_b": (16, 15.0),
}
TORCHVISION_MODELS: tuple[str, ...] = tuple(TEMPORAL)
EXTRA_MODELS: tuple[str, ...] = ("tiny3d",)
MODEL_NAMES: tuple[str, ...] = TORCHVISION_MODELS + EXTRA_MODELS
DEFAULT_MODEL = "r2plus1d_18"
MEANINGLESS = "random weights (--weights none): labels are meaningless, for pipeline testing only"
UNCERTAIN = "uncertain"  # the label shown when no class is clear enough: no model's class may be named so
CLASS_NAME_MAX_CHARS = 200
# Inference backends (streamrec.runtime.classifier.Classifier), the one list of their names:
# name -> (auto times it on the CPU, it runs its own thread pool). auto picks among the fp32
# CPU ones only: openvino-bf16 trades precision (asked for, never assumed) and openvino-int8
# needs a model made by ``streamrec quantize`` first.
BACKENDS: dict[str, tuple[bool, bool]] = {
    "auto": (False, False), "torch": (True, False), "torchscript": (True, False), "onnxruntime": (True, True),
    "openvino": (True, True), "openvino-bf16": (False, True), "openvino-int8": (False, True),
    "compile": (False, False),
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
CPU_BACKENDS: tuple[str, ...] = tuple(n for n, (timed, _) in BACKENDS.items() if timed)
OWN_POOL: tuple[str, ...] = tuple(n for n, (_, own) in BACKENDS.items() if own)


def check_model(name: str) -> None:
    """A :class:`~streamrec.errors.WeightsError` unless ``name`` is a model streamrec runs.

    >>> check_model("r2plus1d_18")
    >>> check_model("R2plus1d_18")
    Traceback (most recent call last):
    ...
    streamrec.errors.WeightsError: --model: expected one of r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v1_b, mvit_v2_s, swin3d_t, swin3d_s, swin3d_b, tiny3d, got 'R2plus1d_18'
    """
    from streamrec.errors import WeightsError

    if name not in MODEL_NAMES:
        raise WeightsError(f"--model: expected one of {', '.join(MODEL_NAMES)}, got {name!r}")


@lru_cache(maxsize=1)
def kinetics_groups() -> tuple[dict[str, Any], ...]:
    """Kinetics-400's groups (each a ``name``, its ``labels`` and whether it is a ``sport``), as
    shipped in ``streamrec/models/data/kinetics400_groups.json``: read here, without torch, so that
    a config's ``[[rules]] groups`` are checked before any model loads
    (:mod:`streamrec.models.kinetics` answers questions about them).

    >>> len(kinetics_groups()) > 10 and all({"name", "labels", "sport"} <= set(g) for g in kinetics_groups())
    True
    """
    data = json.loads(resources.files("streamrec.models").joinpath("data/kinetics400_groups.json").read_text())
    return tuple(data["groups"])


def kinetics_group_names() -> list[str]:
    return sorted(g["name"] for g in kinetics_groups())
