"""Files: streamrec's cache folder, the process's limit on open files, and writes that a
killed process cannot leave half done (write a temporary file beside the target, flush it to disk, then rename it over the
target: atomic on POSIX).

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.csv"
    >>> atomic_write_text(p, "a,b\\n")
    >>> p.read_text()
    'a,b\\n'
    >>> check_output("--out", p.parent / "no-such-folder" / "out.csv")
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: --out .../no-such-folder/out.csv: the folder .../no-such-folder does not exist
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from streamrec.errors import StreamrecError, require

# streamrec's own cache: prepared models, OpenVINO IR, the backend choice of ``auto``
CACHE = Path(os.environ.get("STREAMREC_CACHE", Path.home() / ".cache" / "streamrec"))

# the clip shipped with the repository (demo/clips/, with its origin and licence): the
# default of ``bench --clip``, the README's first command, the configs and the notebook
DEMO_CLIP = Path(__file__).resolve().parents[1] / "demo" / "clips" / "arm_wrestling.mp4"


# the image formats the PNG-writing options accept (matplotlib writes each from the suffix)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf")


def check_apart(outputs: dict[str, str | os.PathLike | None]) -> None:
    """A :class:`StreamrecError` when two of a command's outputs (option: path, ``None`` when not
    given) name one file: the second written would replace the first.

    >>> check_apart({"--out": "t.csv", "--plot": "./t.csv"})
    Traceback (most recent call last):
    ...
    streamrec.errors.StreamrecError: --plot ./t.csv: the same file as --out t.csv; each output needs its own name
    """
    seen: dict[Path, tuple[str, str | os.PathLike]] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        try:
            where = Path(os.path.abspath(path)).resolve()
        except (OSError, RuntimeError, ValueError):  # a loop of links: check_output names it
            continue
        if where in seen:
            first, given = seen[where]
            raise StreamrecError(f"{option} {path}: the same file as {first} {given}; each output needs its own name")
        seen[where] = (option, path)


def check_output(option: str, path: str | os.PathLike, *, image: bool = False,
                 inputs: tuple[str | os.PathLike, ...] = (), data: str | os.PathLike | None = None,
                 data_is: tuple[str, str] = ("the dataset folder", "the dataset")) -> Path:
    """``path`` as a :class:`Path` when a command can write it, else a :class:`StreamrecError`
    naming ``option``: called before the command's work, so a typo in an output path costs
    no training or decoding (and never ends in a traceback after it). A path that is one of
    the command's ``inputs``, or inside its ``data`` folder (a dataset, the events' clips: the file
    would replace a clip or become one; ``data_is``: what the folder is, and what would change),
    is refused: writing it would destroy or change the input."""
    p = Path(path)
    folder = p.parent
    if str(path).endswith(("/", os.sep)) and not p.is_dir():  # Path() drops the slash: "new/" would be a file
        raise StreamrecError(f"{option} {path}: the folder {path} does not exist (a file name is expected)")
    for given in inputs:
        if p.exists() and Path(given).exists() and os.path.samefile(p, given):
            raise StreamrecError(f"{option} {p}: that is the input file {given}; writing there would replace it")
    if data is not None and Path(data).is_dir() and Path(os.path.abspath(p)).resolve().is_relative_to(Path(data).resolve()):
        raise StreamrecError(f"{option} {p}: inside {data_is[0]} {data}; writing there would change "
                             f"{data_is[1]} (write it beside the folder)")
    if p.is_dir():
        raise StreamrecError(f"{option}: expected a file name, got the folder {p}")
    kind = special_file(p)
    if kind is not None:  # written as a new file renamed over it, a device would be replaced, not written to
        raise StreamrecError(f"{option} {p}: expected a regular file (or a new name), got {kind}")
    if p.is_symlink():  # written through: the file it names is replaced, the link stays
        try:
            p = p.resolve()
        except (RuntimeError, OSError):  # a loop of links (RuntimeError before Python 3.13)
            raise StreamrecError(f"{option} {p}: cannot write: too many levels of symbolic links") from None
        folder = p.parent
    if not folder.is_dir():
        raise StreamrecError(f"{option} {p}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StreamrecError(f"{option} {p}: the folder {folder} is not writable")
    if read_only(p):
        raise StreamrecError(f"{option} {p}: the file is read-only (it is not replaced)")
    if image and p.suffix.lower() not in IMAGE_SUFFIXES:
        raise StreamrecError(f"{option} {p}: expected a file name ending in {', '.join(IMAGE_SUFFIXES)}, "
                             f"got {p.suffix or 'no suffix'!r}")
    if image:
        require("matplotlib", "plot", option)  # figures are drawn with it: an optional dependency
    return p


def read_only(path: Path) -> bool:
    """Whether ``path`` is a file this process may not write, or one without any write bit
    (``chmod 444``: read-only for root too, who may write anything), which is then not replaced."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # missing: a new file
        return False
    return not os.access(path, os.W_OK) or not mode & 0o222


def special_file(path: Path) -> str | None:
    """What ``path`` (or the file a link names) is when it exists and is no regular file or
    folder: ``"a character device"``, ``"a FIFO"``, ...; ``None`` otherwise.

    >>> special_file(Path("/dev/null")), special_file(Path(__file__))
    ('a character device', None)
    """
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # missing, a dangling link, a NUL in the name: no such file
        return None
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


UMASK = read_umask()  # read once: reading it means setting it, which is not thread-safe


def keep_owner(fd: int, uid: int, gid: int) -> None:
    """The replacement file gets the owner and group of the file it replaces, as far as this
    process may give them (root: both; another user: a group it is in)."""
    for owner in ((uid, gid), (-1, gid)):
        try:
            os.fchown(fd, *owner)
            return
        except PermissionError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, mode: str = "wb") -> None:
    """Call ``write(fh)`` on a temporary file, then atomically move it to ``path``.

    The file gets the permissions, owner and group of the one it replaces (as far as this process
    may set them: :func:`keep_owner`), or those of any new file (0666 less the umask), not the 0600
    of a temporary file. A read-only file is not replaced (:class:`PermissionError`). A write that fails (disk full) leaves
    ``path`` as it was and raises :class:`OSError` naming ``path``. A link is written through (the
    file it names is replaced); a device, FIFO or socket is refused (:class:`OSError`), never replaced."""
    path = Path(path)
    if special_file(path) is not None:
        raise OSError(errno.EINVAL, f"expected a regular file, got {special_file(path)}", str(path))
    if path.is_dir():  # os.replace would fail on the temporary file's name, not this one
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if path.is_symlink():
        try:
            path = path.resolve()
        except (RuntimeError, OSError):  # a loop of links (RuntimeError before Python 3.13)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
    if read_only(path):  # the folder's permission would let it be replaced
        raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} (the file is read-only)", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            st = path.stat()
            perms = st.st_mode & 0o7777
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                keep_owner(fd, st.st_uid, st.st_gid)
        except FileNotFoundError:
            perms = 0o666 & ~UMASK
        os.fchmod(fd, perms)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:  # text: UTF-8, whatever the locale
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8 (the encoding streamrec reads back), whatever the locale."""
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int) -> None:
    """Write a matplotlib figure atomically, in the format its suffix names (PNG without one)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` via :func:`atomic_write`. Serialized in memory first: torch's
    zip writer turns a full disk into a ``RuntimeError`` ("unexpected pos"), the file's own
    write says ``OSError`` (no space left, file too large), which the commands report in one line."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda fh: fh.write(buf.getbuffer()))


def raise_fd_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one (where the platform has them);
    the soft limit now in force (a large number where there is none)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep the soft limit
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
