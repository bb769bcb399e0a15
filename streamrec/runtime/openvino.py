"""OpenVINO on the CPU: converting a model to IR (cached on disk per weights), compiling it in
fp32 or bfloat16, and int8 models made with NNCF.

Example:
    >>> bf16_refusal(["FP32", "INT8"]) is not None, bf16_refusal(["FP32", "BF16"])
    (True, None)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Iterable, Iterator

import torch

from streamrec.errors import StreamrecError, install_hint
from streamrec.fsutil import CACHE, atomic_write_text
from streamrec.models.exported import torchscript_quiet
from streamrec.models.spec import LoadedModel
from streamrec.runtime.onnx import example_input

logger = logging.getLogger(__name__)


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (keys converted models on disk)."""
    import hashlib

    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# converted models kept on disk (their size: docs/performance.md); the least recently used go first
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


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, at most 200 characters (OpenVINO's run to pages)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:200]


def openvino_model(loaded: LoadedModel):
    """The model as OpenVINO IR; converted once per weights and cached on disk (the
    conversion from PyTorch takes seconds, reading the IR back milliseconds). The cache
    keeps the :data:`OPENVINO_KEEP` most recently used models; random weights
    (``--weights none``) are converted each time and never written."""
    with no_openvino_telemetry():
        try:
            import openvino as ov
        except ImportError:
            raise StreamrecError("--backend openvino: openvino is not installed; " + install_hint("openvino")) from None
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
                raise StreamrecError(f"OpenVINO cannot convert {loaded.name} ({first_line(exc)}); "
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


def compile_model(ov, model, threads: int | None, precision: str = "f32", *, partitioner: str = "AUTO") -> OpenVINOModule:
    """Compile for the CPU at ``precision``: "f32" (without the hint OpenVINO may run bf16 on
    CPUs that have it), or "bf16" (convolutions and matmuls on bfloat16 inputs, accumulated in
    fp32: faster, logits a little different from f32; docs/performance.md). ``partitioner`` "STATIC"
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
        # host, and a shorter window when one vCPU slows (docs/performance.md, "One slowed vCPU").
        config["TBB_PARTITIONER"] = partitioner
    compiled = core.compile_model(model, "CPU", config)
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if precision == "bf16" and "bf16" not in got and "bfloat16" not in got:  # a hint OpenVINO may decline
        raise StreamrecError(f"--backend openvino-bf16: OpenVINO compiled the model in {got}, not bfloat16; "
                             "use --backend openvino")
    return OpenVINOModule(compiled)


def compile_openvino(loaded: LoadedModel, threads: int | None, precision: str = "f32") -> OpenVINOModule:
    ov, model = openvino_model(loaded)
    return compile_model(ov, model, threads, precision)


def openvino_int8(loaded: LoadedModel, calibration: Iterable[torch.Tensor], threads: int | None = None,
                  subset_size: int = 32, *, with_model: bool = False):
    """Post-training int8 quantization with NNCF, calibrated on real windows ``(1, C, T, H, W)``;
    with ``with_model``, ``(module, the quantized OpenVINO model)`` for :func:`save_int8`."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise StreamrecError("--backend openvino-int8: nncf is not installed; " + install_hint("int8"))
    ov, model = openvino_model(loaded)
    data = [x.numpy() for x in calibration]
    if not data:
        raise StreamrecError("int8: no calibration windows")
    # NNCF reports through OpenVINO's telemetry too; its progress bars go to stderr, not into a report on stdout
    with no_openvino_telemetry(), redirect_stdout(sys.stderr):
        import nncf

        try:
            quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=min(subset_size, len(data)))
        except Exception as exc:  # noqa: BLE001 - NNCF raises its own and OpenVINO's errors
            raise StreamrecError(f"int8: NNCF cannot quantize {loaded.name} ({first_line(exc)})") from None
    module = compile_model(ov, quantized, threads)
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
            raise StreamrecError("--backend openvino-int8: openvino is not installed; " + install_hint("int8")) from None
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
    return compile_model(ov, model, threads)


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether ``--backend openvino-bf16`` runs here: OpenVINO installed and the CPU has bfloat16 instructions."""
    try:
        with no_openvino_telemetry():
            import openvino as ov
        return bf16_refusal(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")) is None
    except (ImportError, RuntimeError):
        return False
