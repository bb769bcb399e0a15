"""A model's first CPU start, prepared in a short-lived child process (no torch imported here).

The first CPU load of a model and weights file imports torchvision to build the module, and
saves the loaded module to the prepared-model cache (:mod:`streamrec.runtime.prepared`); later starts
read that cache without torchvision. In the process that did the first load, torchvision
stays imported: its memory is held under everything that follows (the Python objects of its
modules and its libraries cannot be unloaded). So the command line (``classify``, with
its 1 GB budget for a 10-minute 1080p file, and ``serve``, which runs for days) has a first
load done by a child process, started before the command imports torch itself
(:func:`prepare`), and then reads the cache like any later start. The two processes together
hold less at the peak than the one did (docs/performance.md, "Classifying a file"): the
parent holds little while the child runs.

This module needs only the standard library, so that the command line can decide before it
imports torch. It computes the cache entry's key the way :mod:`streamrec.runtime.prepared` does (the
same function: :func:`entry_path`) and reads the entry's side file (a small JSON that
:mod:`streamrec.runtime.prepared` writes next to it) to tell whether the entry is there and current.

Example:
    >>> from pathlib import Path
    >>> entry_path(Path("/cache"), None, "DEFAULT").name.startswith("r2plus1d_18-")
    True
    >>> needs_preparing(Path("/nonexistent"), "r2plus1d_18", "none", device="cpu")
    False
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Iterable

from streamrec.catalog import DEFAULT_MODEL

logger = logging.getLogger(__name__)

FORMAT = "streamrec-prepared-2"
# device files of GPUs that torch.cuda can use (NVIDIA; AMD ROCm; WSL): where one exists,
# ``--device auto`` may mean CUDA, whose path does not use the prepared cache
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
CHILD_TIMEOUT_S = 600.0
ERROR_PREFIX = "streamrec-prepared-error: "  # the child's one stdout line for a user error


def torch_version() -> str:
    """The installed torch's version, read from its package metadata (no import)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub`` (torch.hub's own rule)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def is_weights_file(weights: str) -> bool:
    """``weights`` names a file (not ``DEFAULT`` or ``none``)."""
    return weights.upper() not in ("DEFAULT", "NONE") and os.path.isfile(weights)  # False for a name too long


def entry_path(cache: Path, name: str | None, weights: str) -> Path:
    """Where the prepared model for ``name`` and ``weights`` lives, keyed by model, weights
    argument, torch hub folder and torch version. ``DEFAULT`` weights without a name mean
    the default model; a weights file without a name means the model its checkpoint names."""
    if weights.upper() == "DEFAULT":
        name = name or DEFAULT_MODEL
    resolved = Path(weights).resolve() if is_weights_file(weights) else ""
    key = f"{FORMAT}|{name}|{weights}|{resolved}|{hub_dir()}|{torch_version()}"
    return cache / "prepared" / f"{name or 'checkpoint'}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}.pt"


def side_file(entry: Path) -> Path:
    """The JSON beside ``entry``: ``{"stamp": {...}, "cached": bool}``."""
    return entry.with_suffix(".json")


def stamp(path: Path) -> dict:
    """What identifies a weights file's contents cheaply: its path, size and modification time."""
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_current(entry: Path) -> bool:
    """The entry was made (or found not cacheable) from the weights file as it is now."""
    try:
        side = json.loads(side_file(entry).read_text())
        current = stamp(Path(side["stamp"]["file"])) == side["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return current and (entry.is_file() or side.get("cached") is False)


def gpu_present() -> bool:
    """A GPU device file exists, so ``--device auto`` may resolve to CUDA."""
    return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def needs_preparing(cache: Path, name: str | None, weights: str, *, device: str) -> bool:
    """A CPU run with these weights would do a first load: no current entry in ``cache``.

    False for random weights (never cached), for CUDA, and for ``auto`` where a GPU may be
    present: those load in the job's own process, as before. False also for a weights file
    that is not there: the job's own load reports that at once, with no child started."""
    if weights.lower() == "none" or device not in ("cpu", "auto") or (device == "auto" and gpu_present()):
        return False
    if weights.upper() != "DEFAULT" and not Path(weights).is_file():
        return False
    return not is_current(entry_path(cache, name, weights))


@contextlib.contextmanager
def _sigterm_exits():
    """While the child runs, SIGTERM raises ``SystemExit(143)`` in this process instead of
    ending it at once (the default), so that the child is killed and waited for too."""
    if threading.current_thread() is not threading.main_thread() or callable(signal.getsignal(signal.SIGTERM)):
        yield  # a handler of the caller's own (serve's while it prepares) raises instead
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def backend_measured(cache: Path, name: str | None) -> bool:
    """``--backend auto`` has a cached choice for model ``name`` (on some machine or thread count),
    read without torch: the start then builds the winner at once instead of timing every backend.

    Example:
        >>> backend_measured(Path("/nonexistent"), "r2plus1d_18")
        False
    """
    try:
        cached = json.loads((cache / "backends.json").read_text())
    except (OSError, ValueError):
        return False
    return name is not None and isinstance(cached, dict) and any(str(k).split("|", 1)[0] == name for k in cached)


def first_start_work(cache: Path, models: Iterable[tuple[str | None, str]], *, device: str,
                     backend: str) -> tuple[int, int]:
    """What a start of ``models`` (``(name, weights)`` pairs) has to do before it serves: how many
    first CPU loads (:func:`needs_preparing`) and how many ``--backend auto`` timings."""
    unique = list(dict.fromkeys(models))
    loads = sum(needs_preparing(cache, name, weights, device=device) for name, weights in unique)
    names = {name or (DEFAULT_MODEL if weights.upper() in ("DEFAULT", "NONE") else None) for name, weights in unique}
    timings = sum(not backend_measured(cache, name) for name in names) if backend == "auto" else 0
    return loads, timings


def prepare_first_starts(cache: Path, models: Iterable[tuple[str | None, str]], *, device: str) -> None:
    """:func:`prepare` each ``(name, weights)`` that :func:`needs_preparing` (each once)."""
    for name, weights in dict.fromkeys(models):
        if needs_preparing(cache, name, weights, device=device):
            prepare(cache, name, weights)


def child_error_line(exc: Exception) -> str:
    """The line a child process writes on its stdout for a user error ``exc``, which
    :func:`child_error` in the parent turns back into the same exception."""
    return ERROR_PREFIX + json.dumps({"type": type(exc).__name__, "message": str(exc)})


def child_error(stdout: str) -> Exception | None:
    """The user error a child reported with :func:`child_error_line`, else None.

    Example:
        >>> from streamrec.errors import WeightsError
        >>> repr(child_error(child_error_line(WeightsError("--weights: no such file"))))
        "WeightsError('--weights: no such file')"
        >>> child_error("") is None
        True
    """
    from streamrec import errors

    for line in reversed(stdout.splitlines()):
        if line.startswith(ERROR_PREFIX):
            try:
                d = json.loads(line[len(ERROR_PREFIX):])
                kind = getattr(errors, str(d["type"]), errors.StreamrecError)
                kind = kind if isinstance(kind, type) and issubclass(kind, errors.StreamrecError) else errors.StreamrecError
                return kind(str(d["message"]))
            except (ValueError, KeyError, TypeError):
                return None
    return None


def prepare(cache: Path, name: str | None, weights: str, *, timeout_s: float = CHILD_TIMEOUT_S) -> bool:
    """Run the first load in a child process (``python -m streamrec.runtime.prepared``); True if the
    child filled the cache. The child logs to this process's stderr as it goes (a download of
    the weights shows up while it runs). A user error there (offline weights, a bad checkpoint)
    is raised here as the same :class:`~streamrec.errors.StreamrecError`, so that the job reports
    it once and does not load (or download) again. Any other failure of the child (a crash, a
    timeout) returns False: the job then loads in its own process, as without this step."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    cmd = [sys.executable, "-m", "streamrec.runtime.prepared", "--weights", weights, "--cache", str(cache), "--log-level", level]
    if name:
        cmd += ["--model", name]
    logger.info("first CPU start of %s with weights %s: preparing it in a child process",
                name or (DEFAULT_MODEL if weights.upper() == "DEFAULT" else "the checkpoint's model"), weights)
    try:
        with _sigterm_exits():  # subprocess.run then kills the child on the way out: no orphan
            # the child's stdout comes here, not to the job's own (which may be carrying its result)
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.info("preparing in a child process failed (%s); loading in this process", exc)
        return False
    error = child_error(proc.stdout or "") if proc.returncode == 2 else None
    if error is not None:
        raise error
    if proc.returncode != 0:
        logger.info("preparing in a child process failed (exit %d); loading in this process", proc.returncode)
        return False
    return True
