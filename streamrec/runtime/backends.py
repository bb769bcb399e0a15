"""CPU inference backends beyond eager PyTorch: ONNX Runtime, OpenVINO (fp32, bfloat16 and int8).

Each backend turns a model into a callable ``(B, C, T, H, W) float32 -> (B, K) logits`` torch
function. ``auto`` times every backend that installs on this machine for this model and
caches the winner in ``~/.cache/streamrec/backends.json``.

Example:
    >>> from streamrec.models.registry import load_model
    >>> fn = build("openvino", load_model("tiny3d", weights="none"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from streamrec.errors import StreamrecError
from streamrec.fsutil import CACHE, atomic_write_text
from streamrec.models.exported import torchscript_quiet
from streamrec.models.spec import LoadedModel

logger = logging.getLogger(__name__)

CPU_BACKENDS = ("torch", "torchscript", "onnxruntime", "openvino")
ALL_BACKENDS = ("auto",) + CPU_BACKENDS + ("openvino-bf16", "openvino-int8")


def example_input(loaded: LoadedModel, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3, loaded.spec.frames, *loaded.spec.crop)


def export_onnx(loaded: LoadedModel, path: Path | io.BytesIO) -> Path | io.BytesIO:
    """ONNX export with a dynamic batch axis (the TorchScript-based exporter), to a file or a buffer."""
    with torchscript_quiet():
        torch.onnx.export(loaded.module.eval(), (example_input(loaded),), path if isinstance(path, io.BytesIO) else str(path),
                          input_names=["clip"], output_names=["logits"],
                          dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def _onnxruntime(loaded: LoadedModel, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    from streamrec.models.exported import OnnxModule

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(loaded, Path(tmp) / "model.onnx")
        return OnnxModule(path, threads=threads)  # the session holds the model in memory


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (keys converted models on disk)."""
    import hashlib

    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# converted models kept on disk (r2plus1d_18: 120 MB each); the least recently used go first
OPENVINO_KEEP = 4
_TELEMETRY_LOCK = threading.Lock()


@contextmanager
def no_openvino_telemetry() -> Iterator[None]:
    """Import and use OpenVINO (and NNCF) without their usage telemetry.

    ``import openvino`` imports its model converter, which writes a client id to ``~/intel``,
    and each conversion sends usage events to Google Analytics unless the user ran
    ``opt_in_out --opt_out`` (OpenVINO collects by default). streamrec picks and converts
    models for its user without asking, so inside this block the telemetry's consent check
    answers "declined": nothing is written or sent. The user's own consent file is not
    touched; an OpenVINO without its telemetry package sends nothing anyway."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        yield
        return
    with _TELEMETRY_LOCK:
        original = OptInChecker.__dict__["check"]
        OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
        try:
            yield
        finally:
            OptInChecker.check = original


def prune_cache(folder: Path, keep: int = OPENVINO_KEEP) -> list[Path]:
    """Delete all but the ``keep`` most recently used OpenVINO models (``.xml`` + ``.bin``, and
    an int8 model's ``.json`` report) in ``folder``; return the ``.xml`` files deleted. Every
    fine-tuned checkpoint converts to a model of its own, so without this the folder grows by
    one model per checkpoint ever served.

    Example:
        >>> import os, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for i, name in enumerate(["a-int8", "b", "c"]):
        ...     for ext in (".xml", ".bin", ".json"):
        ...         _ = (d / (name + ext)).write_text(name)
        ...         os.utime(d / (name + ext), (i, i))
        >>> [p.name for p in prune_cache(d, keep=2)], sorted(p.name for p in d.iterdir())
        (['a-int8.xml'], ['b.bin', 'b.json', 'b.xml', 'c.bin', 'c.json', 'c.xml'])
    """
    def used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    models = sorted(folder.glob("*.xml"), key=used, reverse=True)
    for xml in models[keep:]:
        # the weights first (a lone .xml is just unreadable); an int8 model's report last
        for p in (xml.with_suffix(".bin"), xml, xml.with_suffix(".json")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete the old OpenVINO model %s: %s", p, exc)
    return models[keep:]


def ir_path(loaded: LoadedModel, digest: str, suffix: str = "") -> Path:
    """Where the OpenVINO cache keeps ``loaded`` converted (``suffix`` "-int8": quantized)."""
    return CACHE / "openvino" / f"{loaded.name}-{'x'.join(map(str, loaded.spec.crop))}-{digest}{suffix}.xml"


def int8_path(loaded: LoadedModel, digest: str | None = None) -> Path:
    """Where ``streamrec quantize`` keeps ``loaded``'s int8 model (its report: the ``.json`` beside it)."""
    return ir_path(loaded, digest or weights_digest(loaded.module), "-int8")


def _first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, at most 200 characters (OpenVINO's run to pages)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:200]


def _openvino_model(loaded: LoadedModel):
    """The model as OpenVINO IR; converted once per weights and cached on disk (the
    conversion from PyTorch takes seconds, reading the IR back milliseconds). The cache
    keeps the :data:`OPENVINO_KEEP` most recently used models; random weights
    (``--weights none``) are converted each time and never written."""
    with no_openvino_telemetry():
        try:
            import openvino as ov
        except ImportError:
            raise StreamrecError("--backend openvino: openvino is not installed; pip install openvino (a dependency of streamrec)") from None
        xml = ir_path(loaded, weights_digest(loaded.module))
        folder = xml.parent
        if xml.is_file():
            try:
                model = ov.Core().read_model(str(xml))
                for p in (xml, xml.with_suffix(".bin")):
                    os.utime(p)  # used now: the last to be pruned
                return ov, model
            except (RuntimeError, OSError) as exc:
                logger.warning("cached OpenVINO model %s unreadable (%s); converting again", xml, exc)
        with torchscript_quiet():  # OpenVINO's PyTorch frontend traces with torch.jit
            try:
                model = ov.convert_model(loaded.module.eval(), example_input=example_input(loaded))
            except Exception as exc:  # noqa: BLE001 - OpConversionFailure and the tracer's own errors
                raise StreamrecError(f"OpenVINO cannot convert {loaded.name} ({_first_line(exc)}); "
                                     "use another --backend (auto picks one that runs)") from None
    if loaded.meaningless:  # random weights: nobody asks for these again
        return ov, model
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(xml), compress_to_fp16=False)
        prune_cache(folder, OPENVINO_KEEP)
    except (OSError, RuntimeError) as exc:
        logger.warning("cannot cache the OpenVINO model in %s: %s", folder, exc)
    return ov, model


class OpenVINOModule:
    """A compiled OpenVINO model called like a torch module."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: x.detach().float().cpu().numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())

    def to(self, *args, **kwargs) -> "OpenVINOModule":
        return self

    def eval(self) -> "OpenVINOModule":
        return self

    def parameters(self):
        return iter(())


def bf16_refusal(capabilities: Iterable[str]) -> str | None:
    """Why ``--backend openvino-bf16`` cannot run on a CPU with OpenVINO's ``capabilities``
    (its ``OPTIMIZATION_CAPABILITIES``), or None when it can.

    Example:
        >>> bf16_refusal(["FP32", "BF16", "INT8"]) is None
        True
        >>> bf16_refusal(["FP32", "INT8"])
        '--backend openvino-bf16: this CPU has no bfloat16 instructions (OpenVINO reports FP32, INT8); use --backend openvino'
    """
    capabilities = list(capabilities)
    if "BF16" in capabilities:
        return None
    return (f"--backend openvino-bf16: this CPU has no bfloat16 instructions (OpenVINO reports "
            f"{', '.join(capabilities) or 'nothing'}); use --backend openvino")


def _compile(ov, model, threads: int | None, precision: str = "f32", *, partitioner: str = "AUTO") -> OpenVINOModule:
    """Compile for the CPU at ``precision``: "f32" (without the hint OpenVINO may run bf16 on
    CPUs that have it), or "bf16" (convolutions and matmuls on bfloat16 inputs, accumulated in
    fp32: r2plus1d_18 here 2x faster, logits within about 3e-3 of f32). ``partitioner`` "STATIC"
    (OpenVINO's default) is only for comparing with it."""
    core = ov.Core()
    if precision == "bf16" and (why := bf16_refusal(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))):
        raise StreamrecError(why)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if "TBB_PARTITIONER" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):  # newer OpenVINO releases
        # Each layer's work in chunks that a thread whose vCPU runs faster takes more of, instead of
        # a fixed half per thread that waits for the slower one: same results, no cost on a steady
        # host; with one of two vCPUs at 0.7x speed r2plus1d_18 took 442 ms, not 527 (README).
        config["TBB_PARTITIONER"] = partitioner
    compiled = core.compile_model(model, "CPU", config)
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if precision == "bf16" and "bf16" not in got and "bfloat16" not in got:  # a hint OpenVINO may decline
        raise StreamrecError(f"--backend openvino-bf16: OpenVINO compiled the model in {got}, not bfloat16; "
                             "use --backend openvino")
    return OpenVINOModule(compiled)


def _openvino(loaded: LoadedModel, threads: int | None, precision: str = "f32") -> OpenVINOModule:
    ov, model = _openvino_model(loaded)
    return _compile(ov, model, threads, precision)


def openvino_int8(loaded: LoadedModel, calibration: Iterable[torch.Tensor], threads: int | None = None,
                  subset_size: int = 32, *, with_model: bool = False):
    """Post-training int8 quantization with NNCF, calibrated on real windows ``(1, C, T, H, W)``;
    with ``with_model``, ``(module, the quantized OpenVINO model)`` for :func:`save_int8`."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise StreamrecError("--backend openvino-int8: nncf is not installed; pip install 'streamrec[openvino]'")
    ov, model = _openvino_model(loaded)
    data = [x.numpy() for x in calibration]
    if not data:
        raise StreamrecError("int8: no calibration windows")
    # NNCF reports through OpenVINO's telemetry too; its progress bars go to stderr, not into a report on stdout
    with no_openvino_telemetry(), redirect_stdout(sys.stderr):
        import nncf

        try:
            quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=min(subset_size, len(data)))
        except Exception as exc:  # noqa: BLE001 - NNCF raises its own and OpenVINO's errors
            raise StreamrecError(f"int8: NNCF cannot quantize {loaded.name} ({_first_line(exc)})") from None
    module = _compile(ov, quantized, threads)
    return (module, quantized) if with_model else module


def save_int8(model, xml: Path, report: str) -> None:
    """Write a quantized model to the cache as ``xml`` + ``.bin``, with ``report`` (JSON) beside it,
    each through a temporary name: a reader never finds half a model."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.tmp.xml")
    try:
        with no_openvino_telemetry():
            ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
        atomic_write_text(xml.with_suffix(".json"), report)
    except (OSError, RuntimeError) as exc:
        raise StreamrecError(f"cannot save the int8 model to {xml.parent}: {exc}") from None
    finally:
        for p in (tmp, tmp.with_suffix(".bin")):
            p.unlink(missing_ok=True)
    prune_cache(xml.parent, OPENVINO_KEEP)


def load_int8(loaded: LoadedModel, threads: int | None = None) -> OpenVINOModule:
    """The int8 model ``streamrec quantize`` made for these weights, compiled; a one-line error
    naming the command when there is none."""
    xml = int8_path(loaded)
    if not xml.is_file():
        weights = loaded.weights if loaded.weights in ("DEFAULT", "none") else f"'{loaded.weights}'"
        raise StreamrecError(f"--backend openvino-int8: no int8 model of {loaded.name} for these weights in {xml.parent}; "
                             f"make one first: streamrec quantize --model {loaded.name} --weights {weights} --clips DIR")
    with no_openvino_telemetry():
        try:
            import openvino as ov
        except ImportError:
            raise StreamrecError("--backend openvino-int8: openvino is not installed; pip install openvino (a dependency of streamrec)") from None
        try:
            model = ov.Core().read_model(str(xml))
        except RuntimeError as exc:
            raise StreamrecError(f"--backend openvino-int8: cannot read {xml} ({str(exc).splitlines()[0]}); "
                                 "run streamrec quantize again") from None
    for p in (xml, xml.with_suffix(".bin")):
        os.utime(p)  # used now: the last to be pruned
    try:
        report = json.loads(xml.with_suffix(".json").read_text())
        logger.info("int8 model %s: top-1 same as fp32 on %s/%s checked windows", xml.name,
                    report.get("top1_agree"), report.get("checked_windows"))
    except (OSError, ValueError):
        pass
    return _compile(ov, model, threads)


def build(name: str, loaded: LoadedModel, *, threads: int | None = None):
    """A callable for ``loaded`` on ``name`` (a CPU backend other than torch/torchscript)."""
    if name == "onnxruntime":
        return _onnxruntime(loaded, threads)
    if name == "openvino":
        return _openvino(loaded, threads)
    if name == "openvino-bf16":
        return _openvino(loaded, threads, "bf16")
    if name == "openvino-int8":
        return load_int8(loaded, threads)
    raise StreamrecError(f"--backend: expected one of {', '.join(ALL_BACKENDS)}, got {name!r}")


def best_seconds(call: Callable[[], object], repeats: int = 3, *, sync: bool = False) -> float:
    """Best of ``repeats`` timed calls, after one warm-up call, without autograd. With ``sync``
    the GPU is synchronized around each call (its work is asynchronous)."""
    with torch.no_grad():
        call()
        best = float("inf")
        for _ in range(max(repeats, 1)):
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            call()
            if sync:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best


def _cache_key(loaded: LoadedModel, threads: int | None, device: str | None = None) -> str:
    import torch as _t

    where = device or f"{platform.processor() or platform.machine()}|{os.cpu_count()}|{threads}"
    return f"{loaded.name}|{tuple(loaded.spec.crop)}|{where}|{_t.__version__}"


def pick_auto(loaded: LoadedModel, factories: dict[str, Callable[[], Callable]], *, threads: int | None,
              cache_file: Path | None = None, device: str | None = None, example: torch.Tensor | None = None,
              repeats: int = 2, sync: bool = False, times: dict[str, float] | None = None) -> tuple[str, Callable]:
    """The fastest backend of ``factories`` (name -> builder) on this machine, built.

    The choice is cached per model, CPU (or ``device``: a GPU's description), thread count and
    torch version, so later starts build only the winner. Each candidate is timed on
    ``example`` (default: one float32 window), best of ``repeats``, synchronizing a GPU with
    ``sync``; ``times`` (when given) receives the seconds measured, empty for a cached choice."""
    cache_file = cache_file or CACHE / "backends.json"
    key = _cache_key(loaded, threads, device)
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get(key) in factories:
        try:
            return cached[key], factories[cached[key]]()
        except Exception as exc:  # noqa: BLE001 - re-measure below
            logger.warning("cached backend %s failed to build (%s); measuring again", cached[key], exc)
    x = example_input(loaded) if example is None else example
    times = {} if times is None else times
    best, winner = None, None  # only the fastest so far stays built: the others' memory goes back
    for name, factory in factories.items():
        candidate = None
        try:
            candidate = factory()
            times[name] = best_seconds(lambda: candidate(x), repeats=repeats, sync=sync)
        except Exception as exc:  # noqa: BLE001 - a backend that fails is not a candidate
            logger.warning("backend %s failed its trial run: %s", name, exc)
            continue
        if best is None or times[name] < times[best]:
            best, winner = name, candidate
    if best is None:
        raise StreamrecError("--backend auto: no backend ran on this machine")
    logger.info("backend trial (ms): %s -> %s", {k: round(v * 1e3, 1) for k, v in times.items()}, best)
    cached[key] = best
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cached, indent=1))
    except OSError as exc:
        logger.warning("cannot cache the backend choice in %s: %s", cache_file, exc)
    return best, winner


def available() -> list[str]:
    """CPU backends whose libraries import here."""
    import importlib.util

    names = ["torch", "torchscript"]
    for name, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if importlib.util.find_spec(mod) is not None:
            names.append(name)
    return names


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether ``--backend openvino-bf16`` runs here: OpenVINO installed and the CPU has bfloat16 instructions."""
    try:
        with no_openvino_telemetry():
            import openvino as ov
        return bf16_refusal(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")) is None
    except (ImportError, RuntimeError):
        return False


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
