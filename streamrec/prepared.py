"""Loaded models cached as ``torch.fx`` graphs, so that a later start needs no torchvision.

torchvision's video models are plain convolution graphs once traced, but importing
torchvision to build them costs 167 MB of RSS and two seconds here (its ``ops`` import
``torch._dynamo`` and sympy). The first :func:`load` of a model and weights traces the
loaded module with ``torch.fx`` (its leaf modules are ``torch.nn`` ones: ``Conv3d``,
``BatchNorm3d``, ...; the model's own classes disappear into the graph), checks that the
graph computes exactly what the module does, and saves it with the class names and
preprocessing. Later loads read that file back without importing torchvision.

An entry is keyed by model name, weights argument, torch hub folder and torch version,
and is used only while the weights file it was made from has the same size and
modification time. The file is a pickle (``torch.load(weights_only=False)``): it is
trusted as much as the rest of streamrec's cache folder, which only streamrec writes.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from streamrec.models import build_model, make_checkpoint, model_spec
    >>> d = Path(tempfile.mkdtemp())
    >>> net = build_model("tiny3d", num_classes=2)
    >>> torch.save(make_checkpoint(net, model="tiny3d", classes=["jump", "run"], spec=model_spec("tiny3d")), d / "w.pt")
    >>> first = load(None, str(d / "w.pt"), cache=d)    # loads the file, saves the traced graph
    >>> again = load(None, str(d / "w.pt"), cache=d)    # the graph, without torchvision
    >>> again.classes, type(first.module).__name__, type(again.module).__name__
    (['jump', 'run'], 'Tiny3D', 'GraphModule')
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from .fsutil import atomic_torch_save
from .models import DEFAULT_MODEL, LoadedModel, ModelSpec, load_model

logger = logging.getLogger(__name__)

FORMAT = "streamrec-prepared-1"


def _entry(cache: Path, name: str | None, weights: str) -> Path:
    key = f"{FORMAT}|{name}|{weights}|{Path(weights).resolve() if _is_file(weights) else ''}|{torch.hub.get_dir()}|{torch.__version__}"
    return cache / "prepared" / f"{name or 'checkpoint'}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def _is_file(weights: str) -> bool:
    return weights.upper() not in ("DEFAULT", "NONE") and Path(weights).is_file()


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _weights_file(loaded: LoadedModel, weights: str) -> Path | None:
    if weights.upper() == "DEFAULT":
        from .models import hub_checkpoint_path

        return hub_checkpoint_path(loaded.name)
    return Path(weights) if _is_file(weights) else None


def load(name: str | None, weights: str, *, device: str = "cpu", cache: Path | None = None) -> LoadedModel:
    """:func:`~streamrec.models.load_model`, through the cache of traced graphs.

    Only for CPU inference (``device``): on CUDA the model is loaded as usual, since the GPU
    path rewrites the original module its own way. ``--weights none`` (random) and exported
    models (TorchScript, ONNX) are loaded as usual and not cached; so is a model that
    ``torch.fx`` cannot trace."""
    from .backends import CACHE
    from .engine import resolve_device

    cache = cache or CACHE
    weights = str(weights)
    if weights.lower() == "none" or resolve_device(device).type != "cpu":
        return load_model(name, weights=weights)
    if weights.upper() == "DEFAULT":
        name = name or DEFAULT_MODEL
    entry = _entry(cache, name, weights)
    hit = _read(entry, name)
    if hit is not None:
        return hit
    loaded = load_model(name, weights=weights)
    _write(entry, loaded, weights)
    return loaded


def _read(entry: Path, name: str | None) -> LoadedModel | None:
    if not entry.is_file():
        return None
    try:
        d = torch.load(entry, map_location="cpu", weights_only=False)  # our own cache: a pickled GraphModule
        source = Path(d["stamp"]["file"])
        if d["format"] != FORMAT or (name is not None and d["name"] != name) or _stamp(source) != d["stamp"]:
            logger.info("prepared model %s is stale; loading %s again", entry, d.get("name"))
            return None
    except Exception as exc:  # noqa: BLE001 - unreadable, or its weights file is gone: load again
        logger.info("prepared model %s not usable (%s); loading again", entry, exc)
        return None
    logger.info("loaded %s from the prepared-model cache %s", d["name"], entry)
    return LoadedModel(d["name"], d["module"].eval(), list(d["classes"]), ModelSpec.from_dict(d["spec"]), d["weights"],
                       extra=d["extra"])


def _write(entry: Path, loaded: LoadedModel, weights: str) -> None:
    module = loaded.module
    source = _weights_file(loaded, weights)
    if source is None or not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return
    try:
        graph = torch.fx.symbolic_trace(module)  # shares the module's tensors: no copy
        x = torch.randn(1, 3, loaded.spec.frames, *loaded.spec.crop, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = torch.equal(graph(x), module(x))
    except Exception as exc:  # noqa: BLE001 - not fx-traceable (e.g. MViT): loads as usual every time
        logger.info("%s is not cached as a graph (%s)", loaded.name, str(exc).splitlines()[0] if str(exc) else exc)
        return
    if not same:
        logger.warning("%s: the traced graph differs from the module; not cached", loaded.name)
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a concurrent start reads the old entry or the new one, never half of one
        atomic_torch_save({"format": FORMAT, "name": loaded.name, "weights": loaded.weights, "classes": loaded.classes,
                           "spec": loaded.spec.to_dict(), "extra": loaded.extra, "stamp": _stamp(source),
                           "module": graph}, entry)
    except OSError as exc:
        logger.warning("cannot cache the prepared model in %s: %s", entry.parent, exc)
