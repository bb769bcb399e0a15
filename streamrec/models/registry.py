"""Video classifiers by name, their preprocessing spec, and weight loading.

The preprocessing numbers (resize, crop, mean, std) are read from torchvision's own
weights enum (``weights.transforms()``), never copied by hand; the temporal sampling
(frames per window, frame rate the weights were trained at) is the only thing this
module adds, because torchvision does not record it in the meta.

Example:
    >>> spec = model_spec("r2plus1d_18")
    >>> spec.resize, spec.crop, spec.frames, spec.fps
    ((128, 171), (112, 112), 16, 15.0)
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from streamrec.catalog import DEFAULT_MODEL, EXTRA_MODELS, MODEL_NAMES, TEMPORAL, TORCHVISION_MODELS  # noqa: F401 - re-exported
from streamrec.catalog import check_model
from streamrec.errors import WeightsError
from streamrec.models.exported import load_exported
from streamrec.models.spec import class_names_problem
from streamrec.redact import printable
from streamrec.validate import not_a_file
from streamrec.models.spec import LoadedModel, ModelSpec  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "streamrec-checkpoint"


def default_weights(name: str):
    """torchvision's DEFAULT Kinetics-400 weights enum member for ``name``."""
    from torchvision.models import get_model_weights

    check_model(name)
    if name not in TORCHVISION_MODELS:
        raise WeightsError(f"--weights DEFAULT: model {name!r} has no pretrained weights; pass a checkpoint PATH or 'none'")
    return get_model_weights(name).DEFAULT


def model_spec(name: str) -> ModelSpec:
    """The preprocessing of ``name``'s Kinetics-400 weights, read from torchvision's preset."""
    check_model(name)
    if name == "tiny3d":
        from streamrec.models.tiny3d import TINY3D_SPEC

        return TINY3D_SPEC
    t = default_weights(name).transforms()
    frames, fps = TEMPORAL[name]
    return ModelSpec(
        resize=tuple(int(x) for x in t.resize_size),
        crop=tuple(int(x) for x in t.crop_size),  # type: ignore[arg-type]
        mean=tuple(float(x) for x in t.mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in t.std),  # type: ignore[arg-type]
        frames=frames,
        fps=fps,
    )


def kinetics_classes(name: str = "r2plus1d_18") -> list[str]:
    """Kinetics-400 class names from torchvision's weights meta."""
    return list(default_weights(name).meta["categories"])


def build_model(name: str, *, num_classes: int) -> nn.Module:
    """An untrained model ``name`` with a ``num_classes``-way head."""
    check_model(name)
    if name == "tiny3d":
        from streamrec.models.tiny3d import Tiny3D

        return Tiny3D(num_classes=num_classes)
    from torchvision.models import get_model

    return get_model(name, weights=None, num_classes=num_classes)


def hub_checkpoint_path(name: str) -> Path:
    """Where torch hub caches ``name``'s DEFAULT weights file."""
    url = default_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_default_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = default_weights(name)
    path = hub_checkpoint_path(name)
    if path.is_file():
        logger.info("loading %s weights from the torch hub cache %s", name, path)
        return _torch_load(path)
    offline = os.environ.get("STREAMREC_OFFLINE", "") not in ("", "0")
    reason = "STREAMREC_OFFLINE is set"
    if not offline:
        logger.info("downloading %s weights from %s to %s", name, weights.url, path)
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            # what weights.get_state_dict does, less its own "Downloading:" line on stdout, where results go:
            # a temporary file beside the cache entry, its SHA-256 checked against the name's prefix, then renamed
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = torch.hub.HASH_REGEX.search(path.name)
            torch.hub.download_url_to_file(weights.url, str(path), digest.group(1) if digest else None, progress=False)
        except Exception as exc:  # noqa: BLE001 - any download failure means "offline"
            reason = f"download failed: {type(exc).__name__}: {exc}"
        else:
            return _torch_load(path)
        finally:
            socket.setdefaulttimeout(old)
    raise WeightsError(
        f"--weights DEFAULT: file {path.name} is not in the torch hub cache {path.parent} ({reason}); "
        f"download {weights.url} on a machine with internet and copy it to {path}, "
        f"or pass --weights PATH to a local file, or try the pipeline with --weights none (random weights)"
    )


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(load_failure(path, f"{type(exc).__name__}: {exc}")) from None


def load_failure(path: Path | str, error: str) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed with ``error``
    (torch's own message runs to several sentences, with terminal escapes and a link).

    Example:
        >>> load_failure("m.pt", "UnpicklingError: Weights only load failed. ... WeightsUnpickler error: "
        ...              "Unsupported global: GLOBAL torchvision.models.video.resnet.VideoResNet was not an allowed global")
        '--weights: m.pt holds a whole pickled model (torchvision.models.video.resnet.VideoResNet), which streamrec does not unpickle (unpickling can run any code); save its weights instead: torch.save(model.state_dict(), "m.pt")'
        >>> load_failure("clip.mp4", "UnpicklingError: Weights only load failed. ... WeightsUnpickler error: Unsupported operand 120 ...")
        '--weights: clip.mp4 is not a file torch.save wrote (expected a state_dict, a streamrec checkpoint, TorchScript or ONNX)'
        >>> load_failure("m.pt", "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory. More.")
        '--weights: m.pt is damaged or incomplete (PytorchStreamReader failed reading zip archive: failed finding central directory); copy or download it again'
    """
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", error).split())
    if m := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"--weights: {path} holds a whole pickled model ({m.group(1)}), which streamrec does not unpickle "
                f"(unpickling can run any code); save its weights instead: torch.save(model.state_dict(), \"{path}\")")
    if "Unsupported operand" in text or "invalid load key" in text:
        return (f"--weights: {path} is not a file torch.save wrote "
                "(expected a state_dict, a streamrec checkpoint, TorchScript or ONNX)")
    if m := re.search(r"(PytorchStreamReader failed[^.]*)", text):
        return f"--weights: {path} is damaged or incomplete ({m.group(1)}); copy or download it again"
    first = re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0]
    return f"--weights: cannot read {path} as a PyTorch file: {first[:300]}"


def _fit_errors(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    detail = []
    if mismatched:
        k = mismatched[0]
        detail.append(f"{len(mismatched)} shape mismatches (first: {k} expected {tuple(own[k].shape)}, got {tuple(state[k].shape)})")
    if missing:
        detail.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    return detail


def build_loaded(name: str, state: dict[str, torch.Tensor], *, num_classes: int, source: str) -> nn.Module:
    """Model ``name`` holding the tensors of ``state``, with no second copy of the weights.

    The module is built on the ``meta`` device (shapes only, no random init) and takes the
    loaded tensors themselves (``assign=True``), so loading needs the memory of one set of
    weights, not two. Floating tensors are cast to
    the module's dtype, as a copying ``load_state_dict`` would. A model with tensors that
    are not in its state_dict (non-persistent buffers) is built normally and copied into.

    Raises :class:`WeightsError` naming the first mismatch when ``state`` does not fit.
    """
    with torch.device("meta"):
        module = build_model(name, num_classes=num_classes)
    own = module.state_dict()
    detail = _fit_errors(own, state)
    if detail:
        raise WeightsError(f"--weights {source}: does not fit model {name}: {'; '.join(detail)}")
    state = {k: v.to(own[k].dtype) if v.is_floating_point() and v.dtype != own[k].dtype else v for k, v in state.items()}
    module.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        module = build_model(name, num_classes=num_classes)
        module.load_state_dict(state)
    return module


def load_model(name: str | None = None, *, weights: str | os.PathLike = "DEFAULT", warn_random: bool = True) -> LoadedModel:
    """Build ``name`` and load ``weights``: ``"DEFAULT"``, ``"none"`` or a file path.

    ``warn_random=False``: no warning for ``--weights none``, for a caller that trains the
    random weights (they mean nothing only until then).

    A file is either a torchvision state_dict for ``name`` (Kinetics-400 head) or a
    streamrec checkpoint, which carries its own model name, class names and preprocessing;
    ``name=None`` means the checkpoint's model, or ``DEFAULT_MODEL`` for anything else.
    """
    wstr = str(weights)
    path = Path(wstr)
    if wstr.upper() not in ("DEFAULT", "NONE") and path.is_file():
        if path.suffix.lower() == ".onnx" or _is_torchscript(path):
            exported = load_exported(path)
            if exported is None:
                raise WeightsError(f"--weights {wstr}: an exported model without streamrec's class names")
            if name is not None and name != exported.name:
                raise WeightsError(f"--weights {wstr}: exported model is {exported.name!r}, but --model is {name!r}")
            return exported
        obj = _torch_load(path)
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            return load_checkpoint(obj, source=wstr, expect_model=name)
    name = name or DEFAULT_MODEL
    check_model(name)
    if wstr.upper() == "DEFAULT":
        classes = kinetics_classes(name)
        module = build_loaded(name, checked_state(_load_default_state_dict(name), "DEFAULT"), num_classes=len(classes), source="DEFAULT")
        return LoadedModel(name, module.eval(), classes, model_spec(name), "DEFAULT")
    if wstr.lower() == "none":
        classes = kinetics_classes(name) if name in TORCHVISION_MODELS else [f"class_{i}" for i in range(10)]
        module = build_model(name, num_classes=len(classes))
        if warn_random:
            logger.warning("--weights none: random weights, labels are meaningless")
        return LoadedModel(name, module.eval(), classes, model_spec(name), "none", meaningless=True)
    if not path.is_file():
        raise WeightsError(f"--weights: expected DEFAULT, none or a file, got {wstr!r} ({not_a_file(path)})")
    obj = _torch_load(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"--weights {wstr}: expected a state_dict or a streamrec checkpoint, got {type(obj).__name__}")
    if name not in TORCHVISION_MODELS:  # no Kinetics head: a bare state_dict says nothing of its classes
        raise WeightsError(f"--weights {wstr}: a bare state_dict, but {name} has no Kinetics-400 classes to give it; "
                           "expected a streamrec checkpoint (streamrec train writes one), which carries its class names")
    classes = kinetics_classes(name)
    module = build_loaded(name, checked_state(obj, wstr), num_classes=len(classes), source=wstr)
    return LoadedModel(name, module.eval(), classes, model_spec(name), wstr)


def checked_state(state: Any, source: str) -> dict[str, torch.Tensor]:
    """``state`` when it is a state_dict (names to tensors) whose floating values are all finite;
    else a :class:`WeightsError` naming the first problem (a model with a NaN weight labels
    every window NaN)."""
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"--weights {source}: state_dict: expected a table of tensors, got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"--weights {source}: state_dict: expected names and tensors, got "
                               f"{printable(str(key), limit=60)!r}: {type(value).__name__}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"--weights {source}: state_dict: expected finite values, got NaN or infinity in "
                               f"{printable(key, limit=60)!r}")
    return state


def load_checkpoint(ckpt: dict[str, Any], *, source: str, expect_model: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from a streamrec checkpoint dict (see :func:`make_checkpoint`)."""
    name = ckpt.get("model")
    classes = ckpt.get("classes")
    if name not in MODEL_NAMES or not isinstance(classes, list) or not classes:
        raise WeightsError(f"--weights {source}: checkpoint lacks a valid 'model' or 'classes' entry")
    problem = class_names_problem(classes)
    if problem is not None:
        raise WeightsError(f"--weights {source}: classes: {problem}")
    if expect_model is not None and expect_model != name:
        raise WeightsError(f"--weights {source}: checkpoint is for model {name!r}, but --model is {expect_model!r}")
    module = build_loaded(name, checked_state(ckpt.get("state_dict"), source), num_classes=len(classes), source=source)
    spec = ModelSpec.read(ckpt["preprocess"], source) if "preprocess" in ckpt else model_spec(name)
    extra = {k: ckpt[k] for k in ("train_args", "metrics") if k in ckpt}
    return LoadedModel(name, module.eval(), list(classes), spec, source, extra=extra)


def make_checkpoint(
    module: nn.Module, *, model: str, classes: Sequence[str], spec: ModelSpec, **extra: Any
) -> dict[str, Any]:
    """The dict a streamrec checkpoint file holds (``torch.save`` it)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": model,
        "classes": list(classes),
        "preprocess": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }
