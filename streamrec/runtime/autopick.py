"""``--backend auto``: time each candidate backend once per machine and model, cache the winner."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from streamrec.errors import StreamrecError
from streamrec.fsutil import CACHE, atomic_write_text
from streamrec.models.spec import LoadedModel
from streamrec.runtime.onnx import example_input

logger = logging.getLogger(__name__)


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


def cache_key(loaded: LoadedModel, threads: int | None, device: str | None = None) -> str:
    where = device or f"{platform.processor() or platform.machine()}|{os.cpu_count()}|{threads}"
    return f"{loaded.name}|{tuple(loaded.spec.crop)}|{where}|{torch.__version__}"


def measured(name: str, cache_file: Path | None = None) -> bool:
    """A backend choice for model ``name`` is cached (on some machine, thread count or device):
    ``--backend auto`` then most likely builds the winner at once, without timing."""
    try:
        cached = json.loads((cache_file or CACHE / "backends.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cached, dict) and any(str(k).split("|", 1)[0] == name for k in cached)


def pick_auto(loaded: LoadedModel, factories: dict[str, Callable[[], Callable]], *, threads: int | None,
              cache_file: Path | None = None, device: str | None = None, example: torch.Tensor | None = None,
              repeats: int = 2, sync: bool = False, times: dict[str, float] | None = None) -> tuple[str, Callable]:
    """The fastest backend of ``factories`` (name -> builder) on this machine, built.

    The choice is cached per model, CPU (or ``device``: a GPU's description), thread count and
    torch version, so later starts build only the winner. Each candidate is timed on
    ``example`` (default: one float32 window), best of ``repeats``, synchronizing a GPU with
    ``sync``; ``times`` (when given) receives the seconds measured, empty for a cached choice."""
    cache_file = cache_file or CACHE / "backends.json"
    key = cache_key(loaded, threads, device)
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get(key) in factories:
        try:
            return cached[key], factories[cached[key]]()
        except Exception as exc:  # noqa: BLE001 - re-measure below
            logger.warning("cached backend %s failed to build (%s); measuring again", cached[key], exc)
    logger.info("--backend auto: timing %s for %s (once per machine and model; the choice is kept in %s)",
                ", ".join(factories), loaded.name, cache_file)
    x = example_input(loaded) if example is None else example
    times = {} if times is None else times
    best, winner = None, None  # only the fastest so far stays built: the others' memory goes back
    for k, (name, factory) in enumerate(factories.items(), 1):
        candidate = None
        logger.info("timing backend %d/%d: %s", k, len(factories), name)
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
        atomic_write_text(cache_file, json.dumps(cached, indent=1))  # never a half-written cache
    except OSError as exc:
        logger.warning("cannot cache the backend choice in %s: %s", cache_file, exc)
    return best, winner
