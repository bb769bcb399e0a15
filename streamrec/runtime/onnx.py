"""ONNX: exporting a loaded model with a dynamic batch axis, and running it with ONNX Runtime."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Callable

import torch

from streamrec.models.exported import OnnxModule, torchscript_quiet
from streamrec.models.spec import LoadedModel


def example_input(loaded: LoadedModel, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3, loaded.spec.frames, *loaded.spec.crop)


def export_onnx(loaded: LoadedModel, path: Path | io.BytesIO) -> Path | io.BytesIO:
    """ONNX export with a dynamic batch axis (the TorchScript-based exporter), to a file or a buffer."""
    with torchscript_quiet():
        torch.onnx.export(loaded.module.eval(), (example_input(loaded),), path if isinstance(path, io.BytesIO) else str(path),
                          input_names=["clip"], output_names=["logits"],
                          dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def onnxruntime_module(loaded: LoadedModel, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(loaded, Path(tmp) / "model.onnx")
        return OnnxModule(path, threads=threads)  # ONNX Runtime keeps the model in memory
