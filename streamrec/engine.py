"""Running a loaded model: device choice, TorchScript, half precision, threads.

On CUDA the model is traced and frozen with TorchScript, cast to fp16 and laid out
``channels_last_3d``, warmed up, and timed against eager; the faster one is kept. On CPU
it runs fp32, eager or frozen TorchScript, with a thread count that leaves a core for
capture.

Example:
    >>> from streamrec.models import load_model
    >>> clf = Classifier(load_model("tiny3d", weights="none"), device="cpu")
    >>> import torch
    >>> clf.probs(torch.zeros(2, 3, 16, 112, 112)).shape
    (2, 10)
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from . import backends
from .errors import StreamrecError
from .models import LoadedModel

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "torchscript", "onnxruntime", "openvino")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise StreamrecError(f"--device: expected auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StreamrecError("--device cuda: no CUDA GPU is available on this machine; use --device cpu")
    return torch.device(device)


def default_threads() -> int:
    """All cores but one (capture needs one), and at least 1; on 2 cores, both."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n if n <= 2 else n - 1


def _fail(why: str):
    raise RuntimeError(why)


class Classifier:
    """A model ready for inference on ``device``, taking ``(B, C, T, H, W)`` float32 input."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: str = "auto",
        backend: str = "auto",
        threads: int | None = None,
        warmup: int = 2,
    ) -> None:
        if backend not in BACKENDS:
            raise StreamrecError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        self.loaded = loaded
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if self.cuda else torch.float32
        self.threads = threads or default_threads()
        if not self.cuda:
            torch.set_num_threads(self.threads)
        module = loaded.module.eval().to(self.device, self.dtype)
        if self.cuda:
            module = module.to(memory_format=torch.channels_last_3d)
        self.timings: dict[str, float] = {}
        self.module = module
        self.backend = "torch"
        prebuilt = isinstance(module, torch.jit.ScriptModule) or not any(True for _ in module.parameters())
        if prebuilt or backend == "torch":
            pass
        elif self.cuda:
            if backend not in ("auto", "torchscript"):
                raise StreamrecError(f"--backend {backend}: a CPU backend; on CUDA use auto, torch or torchscript")
            scripted = self._script(module)
            if scripted is not None:
                if backend == "torchscript":
                    self.module, self.backend = scripted, "torchscript"
                else:  # auto on CUDA: keep whichever is faster
                    t_eager = self._time(module, warmup)
                    t_script = self._time(scripted, warmup)
                    self.timings = {"eager_ms": t_eager * 1e3, "torchscript_ms": t_script * 1e3}
                    logger.info("eager %.1f ms vs TorchScript %.1f ms per window", t_eager * 1e3, t_script * 1e3)
                    if t_script < t_eager:
                        self.module, self.backend = scripted, "torchscript"
        elif backend == "torchscript":
            scripted = self._script(module)
            if scripted is None:
                raise StreamrecError(f"--backend torchscript: {loaded.name} does not trace")
            self.module, self.backend = scripted, "torchscript"
        elif backend in ("onnxruntime", "openvino"):
            self.module, self.backend = backends.build(backend, loaded, threads=self.threads), backend
        else:  # auto on CPU: the fastest measured here, cached
            factories = {"torch": lambda: module, "torchscript": lambda: self._script(module) or _fail("does not trace")}
            for name in backends.available():
                if name in ("onnxruntime", "openvino"):
                    factories[name] = lambda name=name: backends.build(name, loaded, threads=self.threads)
            self.backend, self.module = backends.pick_auto(loaded, factories, threads=self.threads)
        if warmup and not self.cuda:
            self._time(self.module, 1)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        s = self.loaded.spec
        return (3, s.frames, *s.crop)

    def _example(self, batch: int = 1) -> torch.Tensor:
        x = torch.zeros(batch, *self.input_shape, device=self.device, dtype=self.dtype)
        return x.to(memory_format=torch.channels_last_3d) if self.cuda else x

    def _script(self, module: torch.nn.Module):
        try:
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(module, self._example(), check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        except Exception as exc:  # noqa: BLE001 - some models do not trace; eager still works
            logger.warning("TorchScript failed for %s (%s); using eager", self.loaded.name, exc)
            return None

    def _time(self, module, repeats: int) -> float:
        x = self._example()
        best = float("inf")
        with torch.no_grad():
            for _ in range(max(repeats, 1) + 1):
                if self.cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                module(x)
                if self.cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        return best

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` float32 on any device -> logits ``(B, K)`` float32 on CPU."""
        if batch.dim() != 5:
            raise ValueError(f"batch: expected (B, C, T, H, W), got shape {tuple(batch.shape)}")
        x = batch.to(self.device, self.dtype, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            out = self.module(x)
        return out.float().cpu()

    def probs(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax scores ``(B, K)`` as numpy float32."""
        return torch.softmax(self.logits(batch), dim=1).numpy()
