"""Running a loaded model: device choice, TorchScript, half precision, threads.

On CUDA the model is traced and frozen with TorchScript, cast to fp16 and laid out
``channels_last_3d``, warmed up, and timed against eager; the faster one is kept, and then
replayed through CUDA graphs (one per batch-size bucket, see :class:`CudaGraphRunner`) when
that measures faster still. On CPU
it runs fp32 (eager, frozen TorchScript, ONNX Runtime or OpenVINO: ``auto`` times them), with a
thread count that leaves a core for capture; or, when asked, OpenVINO in bfloat16
(``--backend openvino-bf16``, on CPUs with bfloat16 instructions) or the int8 model
``streamrec quantize`` made and checked against fp32 for these weights (``--backend openvino-int8``).

Example:
    >>> from streamrec.models.registry import load_model
    >>> clf = Classifier(load_model("tiny3d", weights="none"), device="cpu")
    >>> import torch
    >>> clf.probs(torch.zeros(2, 3, 16, 112, 112)).shape
    (2, 10)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
import torch

from streamrec.runtime import backends

from streamrec.runtime import openvino

from streamrec.runtime import autopick
from streamrec.models.exported import torchscript_quiet
from streamrec.catalog import BACKEND_NAMES, OWN_POOL
from streamrec.config import check_device
from streamrec.errors import StreamrecError, WeightsError
from streamrec.models.spec import LoadedModel
from streamrec.models.preprocess import normalize_batch, normalize_crops
from streamrec.runtime.tracing import guard

logger = logging.getLogger(__name__)



def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StreamrecError(f"--device {device}: no CUDA GPU is available on this machine; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= (n := torch.cuda.device_count()):
        raise StreamrecError(f"--device {device}: expected cuda:0 to cuda:{n - 1}, got {device} (this machine has {n} "
                             f"CUDA GPU{'s' * (n != 1)})")
    return torch.device(device)


def default_threads() -> int:
    """All cores but one (capture needs one), and at least 1; on 2 cores, both."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n if n <= 2 else n - 1


def _fail(why: str):
    raise RuntimeError(why)


def batch_bucket(batch: int, max_batch: int) -> int:
    """The captured batch size that serves ``batch``: the next power of two, at most ``max_batch``.

    Example:
        >>> [batch_bucket(b, 32) for b in (1, 2, 3, 5, 17, 32)]
        [1, 2, 4, 8, 32, 32]
    """
    if batch < 1:
        raise ValueError(f"batch: expected >= 1, got {batch}")
    bucket = 1
    while bucket < batch:
        bucket *= 2
    return min(bucket, max(max_batch, batch))


class CudaGraphRunner:
    """Replays a module through CUDA graphs: one graph per batch-size bucket (1, 2, 4, ... ``max_batch``).

    A batch is copied into its bucket's static input (the rows past the batch keep whatever
    they held; their outputs are dropped), the graph is replayed, and a copy of the first
    rows of the static output is returned. A graph is captured the first time its bucket is
    used (a few warm-up runs on a side stream first, as PyTorch's graph docs ask). Batches
    larger than ``max_batch`` run the module directly. Not thread-safe: one caller at a time.
    """

    def __init__(self, module, *, example: torch.Tensor, max_batch: int = 32) -> None:
        if example.device.type != "cuda":
            raise ValueError(f"example: expected a CUDA tensor, got one on {example.device}")
        self.module = module
        self.example = example[:1]
        self.max_batch = max_batch
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _capture(self, bucket: int):
        static_in = self.example.expand(bucket, *self.example.shape[1:]).clone(memory_format=torch.preserve_format)
        if self.example.is_contiguous(memory_format=torch.channels_last_3d):
            static_in = static_in.contiguous(memory_format=torch.channels_last_3d)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                self.module(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = self.module(static_in)
        self.graphs[bucket] = (graph, static_in, static_out)
        logger.info("captured a CUDA graph for batch %d", bucket)
        return self.graphs[bucket]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if b > self.max_batch:
            return self.module(x)
        bucket = batch_bucket(b, self.max_batch)
        graph, static_in, static_out = self.graphs.get(bucket) or self._capture(bucket)
        static_in[:b].copy_(x)
        graph.replay()
        return static_out[:b].clone()


class Classifier:
    """A model ready for inference on ``device``, taking ``(B, C, T, H, W)`` float32 input.

    It owns ``loaded.module``: on CUDA it moves it to the GPU; on CPU the ``torch`` backend
    rewrites it in place (:meth:`_cpu_eager`) and ``loaded.module`` becomes the rewrite, which
    gives the same logits. Keep a copy first if the original module is needed as it was."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: str = "auto",
        backend: str = "auto",
        threads: int | None = None,
        warmup: int = 2,
        cuda_graphs: bool = True,
        max_batch: int = 32,
        batch_hint: int = 1,
    ) -> None:
        if backend not in BACKEND_NAMES:
            raise StreamrecError(f"--backend: expected one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
        self.loaded = loaded
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if self.cuda else torch.float32
        self.threads = threads or default_threads()
        # the batch size that choosing a backend on CUDA times: 1 for one camera (latency), the
        # number of cameras for many (throughput: the fastest at batch 1 is not at batch 32)
        self.batch_hint = max(1, min(batch_hint, max_batch))
        if not self.cuda:
            torch.set_num_threads(self.threads)
        else:  # fixed input shapes (one per batch bucket): let cuDNN time its algorithms once per shape
            torch.backends.cudnn.benchmark = True
        module = loaded.module.eval().to(self.device, self.dtype)
        if self.cuda:
            module = module.to(memory_format=torch.channels_last_3d)
        self.timings: dict[str, float] = {}
        self.module = module
        self.backend = "torch"
        self.channels_last = self.cuda  # the layout the module wants its input in
        if loaded.prebuilt and backend not in ("auto", "torch"):  # said, not refused: a config's backend is for every
            # camera, and a camera on an exported file runs beside the others
            logger.warning("--backend %s is not used for %s: an exported model runs as it is (its own runtime)", backend,
                           loaded.weights)
        if loaded.prebuilt:  # an exported model runs as it is, on its own runtime: named so in /healthz
            self.backend = "torchscript" if isinstance(loaded.module, torch.jit.ScriptModule) else "onnxruntime"
        if not loaded.prebuilt:
            if self.cuda:
                self._choose_cuda(module, backend, warmup)
            else:
                self._choose_cpu(module, backend)
        if self.cuda and cuda_graphs and backend in ("auto", "compile") and not loaded.prebuilt:
            self._try_graphs(warmup, max_batch)
        self._check_outputs()  # also the CPU's warm-up call

    def _check_outputs(self) -> None:
        """Refuse a model whose outputs do not match its class names (an export or checkpoint
        made inconsistent): every label would be wrong or an index out of range."""
        outputs = self.logits(self._example(1)).shape[-1]
        if outputs != len(self.loaded.classes):
            raise WeightsError(f"--weights {self.loaded.weights}: the model has {outputs} outputs but "
                               f"{len(self.loaded.classes)} class names; export or save it again with its classes")

    def _choose_cuda(self, module: torch.nn.Module, backend: str, warmup: int) -> None:
        """``backend`` on the GPU: eager, TorchScript, torch.compile, or auto (the fastest of them)."""
        if backend == "torch":
            return
        if backend not in ("auto", "torchscript", "compile"):
            raise StreamrecError(f"--backend {backend}: a CPU backend; on CUDA use auto, torch, torchscript or compile")
        if backend == "compile":  # torch.compile (Inductor): merges the bias + ReLU passes into one
            from streamrec.runtime.graphs import conv_variants

            variants = conv_variants(module)
            suffix = "-pad8" if "-pad8" in variants else ""
            self.module, self.backend = torch.compile(variants[suffix]), f"compile{suffix}"
            t0 = time.perf_counter()
            self._time(self.module, 1)
            self.timings["compile_s"] = time.perf_counter() - t0
        elif backend == "torchscript":
            scripted = self._script(module)
            if scripted is not None:
                self.module, self.backend = scripted, "torchscript"
        else:  # auto on CUDA: the fastest of eager / TorchScript, with 3-D or factorized 2-D convolutions
            self._pick_cuda(module, warmup)

    def _choose_cpu(self, module: torch.nn.Module, backend: str) -> None:
        """``backend`` on the CPU: eager (rewritten exactly), TorchScript, ONNX Runtime, OpenVINO, or
        auto (the fastest measured here, cached)."""
        loaded = self.loaded
        if backend == "torch":
            self.module = self._cpu_eager(module)
        elif backend == "compile":
            raise StreamrecError("--backend compile: for CUDA GPUs; on CPU use auto, torch, torchscript, onnxruntime "
                                 "or openvino[-bf16|-int8]")
        elif backend == "torchscript":
            scripted = self._script(module)
            if scripted is None:
                raise StreamrecError(f"--backend torchscript: {loaded.name} does not trace")
            self.module, self.backend = scripted, "torchscript"
        elif backend in OWN_POOL:  # built by streamrec.runtime.backends
            self.module, self.backend = backends.build(backend, loaded, threads=self.threads), backend
        else:
            factories = {"torch": lambda: self._cpu_eager(module, keep=False),
                         "torchscript": lambda: self._script(module) or _fail("does not trace")}
            for name in backends.available():
                if name in ("onnxruntime", "openvino"):
                    factories[name] = lambda name=name: backends.build(name, loaded, threads=self.threads)
            self.backend, self.module = autopick.pick_auto(loaded, factories, threads=self.threads)
            if self.backend == "openvino" and openvino.bf16_supported():
                logger.info("this CPU has bfloat16 instructions: --backend openvino-bf16 takes about half the time "
                            "per window (scores a little different from fp32; auto keeps fp32)")
            if self.backend == "torch" and self.module is not module:
                self._adopt(self.module)

    def _cpu_eager(self, module: torch.nn.Module, *, keep: bool = True) -> torch.nn.Module:
        """Eager PyTorch on CPU, rewritten exactly where the model allows (:mod:`streamrec.runtime.graphs`):
        batch norms folded, factorized ``(1,k,k)``/``(k,1,1)`` 3-D convolutions as 2-D ones, channels-last.
        oneDNN runs these faster (docs/performance.md), and with no batch-norm outputs and no layout
        reorders a forward pass needs less memory. ``keep``: the classifier adopts the rewritten model
        (see :meth:`_adopt`)."""
        from streamrec.runtime.graphs import channels_last, factorize

        flat = factorize(module, inplace=keep)  # keep: the loaded model is consumed, not copied
        if flat is None:
            return module
        flat = channels_last(flat)
        if keep:
            self._adopt(flat)
        return flat

    def _adopt(self, module: torch.nn.Module) -> None:
        """Make ``module`` (an exact rewrite of the loaded model) the loaded model, so one copy of the
        weights stays in memory, not two; it takes channels-last input."""
        self.loaded.module = module
        self.channels_last = True

    def _pick_cuda(self, module: torch.nn.Module, warmup: int) -> None:
        """Time eager and TorchScript, each on the exact rewrites of :func:`streamrec.runtime.graphs.conv_variants`
        (factorized 2-D convolutions, channels padded to multiples of 8, convolution + bias + ReLU
        as one cuDNN call), and ``torch.compile`` (Inductor) of the padded model, at the batch its
        cameras will make; keep the fastest. The choice is cached per model, GPU, batch and
        torch/cuDNN version (:func:`streamrec.runtime.autopick.pick_auto`): later starts build only it."""
        from streamrec.runtime.graphs import conv_variants

        variants = conv_variants(module)  # cheap: graph rewrites; scripting and compiling are the slow part
        factories: dict[str, Callable[[], Callable]] = {}
        for suffix, net in variants.items():
            factories[f"torch{suffix}"] = lambda net=net: net
            factories[f"torchscript{suffix}"] = lambda net=net: self._script(net) or _fail("does not trace")
        suffix = "-pad8" if "-pad8" in variants else ""
        factories[f"compile{suffix}"] = lambda net=variants[suffix]: torch.compile(net)  # compiled at its first call
        gpu = f"{torch.cuda.get_device_name(self.device)}|batch {self.batch_hint}|cudnn {torch.backends.cudnn.version()}"
        times: dict[str, float] = {}
        self.backend, self.module = autopick.pick_auto(
            self.loaded, factories, threads=None, device=gpu, example=self._example(self.batch_hint),
            repeats=max(warmup, 10), sync=True, times=times)
        self.timings = {f"{name}_ms": t * 1e3 for name, t in times.items()}
        logger.info("per window on %s: %s", self.device,
                    ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items()) or f"{self.backend} (cached choice)")

    def _try_graphs(self, warmup: int, max_batch: int) -> None:
        """Replay through CUDA graphs when that measures faster than launching kernels one by one."""
        try:
            runner = CudaGraphRunner(self.module, example=self._example(), max_batch=max_batch)
            t_plain = self._time(self.module, max(warmup, 10))
            t_graph = self._time(runner, max(warmup, 10))
        except Exception as exc:  # noqa: BLE001 - some models do not capture; kernels launched one by one still work
            logger.warning("CUDA graph capture failed for %s (%s); launching kernels directly", self.loaded.name, exc)
            return
        self.timings.update({f"{self.backend}_ms": t_plain * 1e3, f"{self.backend}+cuda-graphs_ms": t_graph * 1e3})
        logger.info("%s %.2f ms vs with CUDA graphs %.2f ms per window", self.backend, t_plain * 1e3, t_graph * 1e3)
        if t_graph < t_plain:
            self.module, self.backend = runner, f"{self.backend}+cuda-graphs"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        s = self.loaded.spec
        return (3, s.frames, *s.crop)

    def _example(self, batch: int = 1) -> torch.Tensor:
        x = torch.zeros(batch, *self.input_shape, device=self.device, dtype=self.dtype)
        return x.to(memory_format=torch.channels_last_3d) if self.channels_last else x

    def _script(self, module: torch.nn.Module):
        try:
            with torch.inference_mode(False), torch.no_grad(), torchscript_quiet():
                traced = torch.jit.trace(module, self._example(), check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        except Exception as exc:  # noqa: BLE001 - some models do not trace; eager still works
            logger.warning("TorchScript failed for %s (%s); using eager", self.loaded.name, exc)
            return None

    def _time(self, module, repeats: int) -> float:
        x = self._example(self.batch_hint if self.cuda else 1)
        return autopick.best_seconds(lambda: module(x), repeats, sync=self.cuda)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` float32 on CPU, from a batch on any device: uint8 crops ``(B, T, H, W, C)``
        (normalized here, on this classifier's device: on a GPU after a uint8 upload, a quarter
        of the bytes of float32) or normalized float32 ``(B, C, T, H, W)``."""
        if batch.dim() != 5:
            raise ValueError(f"batch: expected (B, T, H, W, C) uint8 or (B, C, T, H, W) float, got shape {tuple(batch.shape)}")
        if batch.dtype == torch.uint8:
            if self.cuda and batch.device.type == "cpu":
                batch = batch.pin_memory()
            if self.backend in OWN_POOL:  # normalized in this thread: torch's pool, woken for it, would spin on the runtime's cores
                x = torch.from_numpy(normalize_crops(batch.numpy(), self.loaded.spec))
            else:
                x = normalize_batch(batch.to(self.device, non_blocking=True), self.loaded.spec, dtype=self.dtype,
                                    channels_last=self.channels_last)
        else:
            x = batch.to(self.device, self.dtype, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad(), guard.call():  # not while torch.fx traces another model (see streamrec.runtime.tracing)
            out = self.module(x)
        return out.float().cpu()

    def probs(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax scores ``(B, K)`` as numpy float32."""
        return torch.softmax(self.logits(batch), dim=1).numpy()
