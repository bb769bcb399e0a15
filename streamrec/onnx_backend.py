"""ONNX Runtime as an ``nn.Module``: lets an exported ``.onnx`` file serve and classify.

Example:
    >>> m = OnnxModule("model.onnx")       # doctest: +SKIP
    >>> m(torch.zeros(1, 3, 16, 112, 112))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import StreamrecError


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise StreamrecError("ONNX: onnxruntime is not installed; pip install 'streamrec[onnx]'") from None
    return onnxruntime


def onnx_meta(path: Path, key: str) -> str:
    sess = _ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
