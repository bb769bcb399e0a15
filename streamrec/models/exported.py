"""Exported model files: TorchScript archives and ONNX files that carry streamrec's class
names and preprocessing, loaded as a :class:`LoadedModel` (ONNX through ONNX Runtime as an
``nn.Module``).

Example:
    >>> m = OnnxModule("model.onnx")       # doctest: +SKIP
    >>> m(torch.zeros(1, 3, 16, 112, 112))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from streamrec.catalog import MODEL_NAMES
from streamrec.errors import StreamrecError, WeightsError, install_hint
from streamrec.models.spec import LoadedModel, ModelSpec, class_names_problem
from streamrec.redact import printable

EXPORT_META = "streamrec.json"  # TorchScript extra file / ONNX metadata key


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise StreamrecError("ONNX: onnxruntime is not installed; " + install_hint("onnx")) from None
    return onnxruntime


def onnx_meta(path: Path, key: str) -> str:
    ort = _ort()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors (InvalidProtobuf, Fail...) derive from Exception only
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"--weights {path}: not an ONNX model ONNX Runtime can read ({why}); "
                           "copy or export it again") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if key not in meta:
        raise StreamrecError(f"--weights {path}: ONNX file has no {key} metadata (not exported by streamrec)")
    return meta[key]


class OnnxModule(nn.Module):
    """Runs an ONNX model on CPU with ONNX Runtime; input and output are torch tensors."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        ort = _ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)


@contextmanager
def torchscript_quiet() -> Iterator[None]:
    """Trace, freeze, save or load TorchScript without torch's deprecation warnings (2.11 and later).

    streamrec uses TorchScript on purpose (frozen TorchScript is the CUDA path the live
    pipeline asks for, and exported models are TorchScript files); the warnings tell a user
    of ``streamrec export`` or ``--backend torchscript`` nothing they can act on. Only
    ``torch.jit``'s own deprecation warnings and the legacy ONNX exporter's deprecation notices are
    hidden, and only inside this block.
    """
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):  # torch 2.14 says FutureWarning, 2.11 DeprecationWarning
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=category)
        # the ONNX export streamrec uses (dynamo=False) is TorchScript-based too
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning,
                                module=r"torch\.onnx")
        # a TorchScript file exported to ONNX: its methods have no Python signature to read
        warnings.filterwarnings("ignore", message=r"no signature found for <torch\.ScriptMethod", category=UserWarning)
        yield


def exported_model(text: str | bytes, path: Path, module: nn.Module) -> LoadedModel:
    """``module`` with what an exported file's metadata ``text`` says of it: its model (one of
    :data:`~streamrec.catalog.MODEL_NAMES`), class names fit for a model (see
    :func:`~streamrec.models.spec.class_names_problem`) and preprocessing; a one-line
    :class:`WeightsError` when the metadata is not that."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text  # TorchScript's extra file: bytes
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
        raise WeightsError(f"--weights {path}: its {EXPORT_META} metadata: expected JSON, got "
                           f"{printable(text, limit=40)!r}") from None
    if not isinstance(meta, dict) or meta.get("model") not in MODEL_NAMES:
        got = meta.get("model") if isinstance(meta, dict) else type(meta).__name__
        raise WeightsError(f"--weights {path}: model: expected one of {', '.join(MODEL_NAMES)}, got "
                           f"{printable(str(got), limit=40)!r}")
    problem = class_names_problem(meta.get("classes"))
    if problem is not None:
        raise WeightsError(f"--weights {path}: classes: {problem}")
    return LoadedModel(meta["model"], module, meta["classes"], ModelSpec.read(meta.get("preprocess"), str(path)), str(path))


def load_exported(path: Path) -> LoadedModel | None:
    """A :class:`LoadedModel` from an exported TorchScript or ONNX file, or ``None`` when
    ``path`` is neither."""
    head = path.read_bytes()[:4]
    if head[:2] == b"PK":  # a zip: TorchScript archive (or a torch.save file)
        extra = {EXPORT_META: ""}
        try:
            with torchscript_quiet():
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except RuntimeError:
            return None
        if not extra[EXPORT_META]:
            return None
        return exported_model(extra[EXPORT_META], path, module)
    if path.suffix.lower() == ".onnx":
        return exported_model(onnx_meta(path, EXPORT_META), path, OnnxModule(path))
    return None
