"""Files: streamrec's cache folder, and writes that a killed process cannot leave half
done (write a temporary file beside the target, flush it to disk, then rename it over the
target: atomic on POSIX).

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.csv"
    >>> atomic_write_text(p, "a,b\\n")
    >>> p.read_text()
    'a,b\\n'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

# streamrec's own cache: prepared models, OpenVINO IR, the backend choice of ``auto``
CACHE = Path(os.environ.get("STREAMREC_CACHE", Path.home() / ".cache" / "streamrec"))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, mode: str = "wb") -> None:
    """Call ``write(fh)`` on a temporary file, then atomically move it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))
