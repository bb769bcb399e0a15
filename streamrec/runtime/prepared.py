"""Loaded models cached as ``torch.fx`` graphs, so that a later start needs no torchvision.

torchvision's video models are plain convolution graphs once traced, but importing
torchvision to build them costs memory and start-up time (its ``ops`` import ``torch._dynamo``
and sympy; see docs/performance.md). The first :func:`load` of a model and weights traces the
loaded module with ``torch.fx`` (its leaf modules are ``torch.nn`` ones: ``Conv3d``,
``BatchNorm3d``, ...; the model's own classes disappear into the graph), checks that the
graph computes exactly what the module does, and saves it with the class names and
preprocessing. Later loads read that file back without importing torchvision.

An entry is keyed by model name, weights argument, torch hub folder and torch version,
and is used only while the weights file it was made from has the same size and
modification time (:mod:`streamrec.runtime.firststart` computes the key; a JSON side file records
the weights file's stamp, and whether the model could be cached at all, so that the command
line can check the entry without importing torch). The file is a pickle (``torch.load(weights_only=False)``): it is
trusted as much as the rest of streamrec's cache folder, which only streamrec writes.
``python -m streamrec.runtime.prepared --weights W [--model NAME]`` fills an entry (see
:func:`streamrec.runtime.firststart.prepare`).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from streamrec.models.registry import build_model, make_checkpoint, model_spec
    >>> d = Path(tempfile.mkdtemp())
    >>> net = build_model("tiny3d", num_classes=2)
    >>> torch.save(make_checkpoint(net, model="tiny3d", classes=["jump", "run"], spec=model_spec("tiny3d")), d / "w.pt")
    >>> first = load(None, str(d / "w.pt"), cache=d)    # loads the file, saves the traced graph
    >>> again = load(None, str(d / "w.pt"), cache=d)    # the graph, without torchvision
    >>> again.classes, type(first.module).__name__, type(again.module).__name__
    (['jump', 'run'], 'Tiny3D', 'GraphModule')
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from streamrec.runtime.firststart import (child_error_line, entry_path, is_current, is_weights_file, prepare, side_file,
                                          stamp)
from streamrec.fsutil import CACHE, atomic_torch_save, atomic_write_text
from streamrec.models.spec import LoadedModel, ModelSpec
from streamrec.models.registry import hub_checkpoint_path, load_model
from streamrec.runtime.tracing import guard

logger = logging.getLogger(__name__)


def _weights_file(loaded: LoadedModel, weights: str) -> Path | None:
    if weights.upper() == "DEFAULT":
        return hub_checkpoint_path(loaded.name)
    return Path(weights) if is_weights_file(weights) else None


def load(name: str | None, weights: str, *, device: str = "cpu", cache: Path | None = None,
         child: bool = False) -> LoadedModel:
    """:func:`~streamrec.models.registry.load_model`, through the cache of traced graphs.

    Only for CPU inference (``device``): on CUDA the model is loaded as usual, since the GPU
    path rewrites the original module its own way. ``--weights none`` (random) and exported
    models (TorchScript, ONNX) are loaded as usual and not cached; so is a model that
    ``torch.fx`` cannot trace. ``child=True`` (the Python API): on a first start, while this
    process has not imported torchvision, a child process does the first load
    (:func:`streamrec.runtime.firststart.prepare`, as the command line does), so that torchvision never
    loads here; if the child fails, the load happens here and reports its own error."""
    from streamrec.runtime.classifier import resolve_device

    cache = cache or CACHE
    weights = str(weights)
    if weights.lower() == "none" or resolve_device(device).type != "cpu":
        return load_model(name, weights=weights)
    entry = entry_path(cache, name, weights)
    if child and "torchvision" not in sys.modules and not is_current(entry):
        prepare(cache, name, weights)
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
        if (name is not None and d["name"] != name) or stamp(source) != d["stamp"]:
            logger.info("prepared model %s is stale; loading %s again", entry, d.get("name"))
            return None
    except Exception as exc:  # noqa: BLE001 - unreadable, or its weights file is gone: load again
        logger.info("prepared model %s not usable (%s); loading again", entry, exc)
        return None
    logger.info("loaded %s from the prepared-model cache %s", d["name"], entry)
    if not side_file(entry).is_file():  # lost: the command line would prepare the entry again and again
        atomic_write_text(side_file(entry), json.dumps({"stamp": d["stamp"], "cached": True}))
    return LoadedModel(d["name"], d["module"].eval(), list(d["classes"]), ModelSpec.from_dict(d["spec"]), d["weights"],
                       extra=d["extra"])


def _write(entry: Path, loaded: LoadedModel, weights: str) -> None:
    """Save ``loaded`` as a traced graph in ``entry``, and the side file that
    :mod:`streamrec.runtime.firststart` reads; a model that cannot be cached gets a side file that
    says so (``"cached": false``), so that the command line does not try again."""
    source = _weights_file(loaded, weights)
    if source is None:
        return
    cached = False
    if not loaded.prebuilt:  # an exported file (TorchScript, ONNX) is no graph to trace
        cached = _save_graph(entry, loaded, source)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(side_file(entry), json.dumps({"stamp": stamp(source), "cached": cached}))
    except OSError as exc:
        logger.warning("cannot cache the prepared model in %s: %s", entry.parent, exc)


def _save_graph(entry: Path, loaded: LoadedModel, source: Path) -> bool:
    module = loaded.module
    try:
        with guard.trace():  # no model may run in another thread while fx patches nn.Module
            graph = torch.fx.symbolic_trace(module)  # shares the module's tensors: no copy
        same = _same_outputs(graph, module, loaded.spec)
    except Exception as exc:  # noqa: BLE001 - not fx-traceable: loads as usual every time
        logger.info("%s is not cached as a graph (%s)", loaded.name, str(exc).splitlines()[0] if str(exc) else exc)
        return False
    if not same:
        logger.warning("%s: the traced graph differs from the module; not cached", loaded.name)
        return False
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a concurrent start reads the old entry or the new one, never half of one
        atomic_torch_save({"name": loaded.name, "weights": loaded.weights, "classes": loaded.classes,
                           "spec": loaded.spec.to_dict(), "extra": loaded.extra, "stamp": stamp(source),
                           "module": graph}, entry)
    except OSError as exc:
        logger.warning("cannot cache the prepared model in %s: %s", entry.parent, exc)
        return False
    return True


def _same_outputs(graph: torch.nn.Module, module: torch.nn.Module, spec: ModelSpec) -> bool:
    """The traced graph gives bit-identical logits to the module. Shapes stay symbolic while
    ``torch.fx`` traces, so most graphs run at any input size and a small input checks the same
    computation at a sixteenth of the memory; a graph that holds
    fixed sizes (MViT's token grid, S3D's 7x7 pooling) fails there and is checked at full size.
    ``graph.forward`` is called directly: ``GraphModule.__call__`` prints a traceback for an
    exception, and the small size's is expected."""
    gen = torch.Generator().manual_seed(0)
    small = tuple(max(1, c // 4) for c in spec.crop)
    for size in (small, tuple(spec.crop)):
        x = torch.randn(1, 3, spec.frames, *size, generator=gen)
        try:
            with torch.no_grad():
                return torch.equal(graph.forward(x), module(x))
        except Exception:  # noqa: BLE001 - this model needs its full input size
            if size == tuple(spec.crop):
                raise
    return False


def main(argv: list[str] | None = None) -> int:
    """``python -m streamrec.runtime.prepared --weights W [--model NAME] [--cache DIR]``: fill the cache
    entry for a CPU start (the child process of :func:`streamrec.runtime.firststart.prepare`). Exit 0
    when done; 2 on a user error (offline weights, a bad checkpoint), written as one line on
    stdout (:func:`~streamrec.runtime.firststart.child_error_line`) for the parent to raise:
    the parent reports it and does not load (or download) a second time."""
    from streamrec.errors import StreamrecError
    from streamrec.redact import one_line_logs

    p = argparse.ArgumentParser(prog="python -m streamrec.runtime.prepared")
    p.add_argument("--model", default=None)
    p.add_argument("--weights", required=True)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    before = list(logging.getLogger().handlers)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    one_line_logs(before)
    try:
        load(args.model, args.weights, device="cpu", cache=args.cache)
    except StreamrecError as exc:  # the parent reports it: one line on its stdout, for the parent alone
        logger.debug("not prepared: %s", exc)
        sys.stdout.write(child_error_line(exc) + "\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent kills this child (no traceback here)
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the C-level teardown: torch's libraries page in much of their code to run their
    # destructors, which would be this process's peak (it holds nothing that needs closing)
    os._exit(rc)
