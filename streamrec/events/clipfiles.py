"""The folder of event clips and thumbnails (``<folder>/<camera>/<event id>.mp4`` and ``.jpg``)
and its retention: events that ended longer than the retention ago are deleted with their
files (with a clip or not), then those with the oldest clips while the folder is over its size;
files named as an event's (``<start second>-<8 hex>.mp4``, ``.mp4.part``, ``.jpg`` and their
temporary files) that no event points to are deleted once older than the retention. Other files
in the folder are never deleted.

Example:
    >>> import tempfile
    >>> from streamrec.events.store import Event, EventStore
    >>> folder = ClipFolder(Path(tempfile.mkdtemp()))
    >>> store = EventStore(":memory:")
    >>> for i, eid in enumerate(("old", "new")):
    ...     store.opened(Event(eid, "rule", "cam", "label", 1000.0 * i, 0.9, 0.8))
    ...     store.closed(Event(eid, "rule", "cam", "label", 1000.0 * i, 0.9, 0.8, end_ts=1000.0 * i + 5))
    ...     (folder.root / "cam").mkdir(exist_ok=True)
    ...     _ = (folder.root / "cam" / f"{eid}.mp4").write_bytes(bytes(100))
    ...     store.set_files(eid, clip=f"cam/{eid}.mp4", clip_bytes=100)
    >>> folder.prune(store, cutoff=0.0, max_bytes=150, active=set()), folder.total_bytes()
    (1, 100)
    >>> [e["id"] for e in store.query()]
    ['new']
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from streamrec.errors import StreamrecError
from streamrec.events.store import EventStore
from streamrec.redact import shown
from streamrec.supervision import describe

logger = logging.getLogger(__name__)

PART = ".part"  # a clip being written: ``<event id>.mp4.part``, renamed to ``<event id>.mp4`` when finished
# the files of an event id (``events.engine.event_id``): its clip, the clip being written, its
# thumbnail, and a temporary file a crash left while one was written (``fsutil.atomic_write``)
EVENT_FILE = re.compile(r"\.?(?P<id>[0-9]+-[0-9a-f]{8})\.(?:mp4|jpg)(?:\.part)?(?:\.[A-Za-z0-9_]+\.tmp)?", re.ASCII)


def path_part(name: str) -> str:
    """``name`` as one safe path component: letters, digits, ``-``, ``_`` and ``.`` (other
    characters become ``_``), never ``.`` or ``..``.

    >>> path_part("rack-1"), path_part("../x"), path_part("..")
    ('rack-1', '.._x', '_..')
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
    return "_" + safe if set(safe) == {"."} else safe


def relative(camera: str, event_id: str, suffix: str) -> str:
    """An event's file in the folder: ``<camera>/<event id><suffix>``, each a safe name.

    >>> relative("rack 1", "e7", ".mp4")
    'rack_1/e7.mp4'
    """
    return f"{path_part(camera)}/{path_part(event_id)}{suffix}"


def folder_problem(folder: Path) -> str:
    """Why ``folder`` cannot be the clips' folder before trying it ("" when none is seen):
    a blank name, a NUL, a ``~user`` with no such user, a file, a link to nothing."""
    text = str(folder)
    if not text.strip():
        return "an empty name; expected a folder's path"
    if "\0" in text:
        return "a NUL character in the name"
    if text.startswith("~"):
        return f"no such user: {text.split('/')[0]}"
    try:
        if folder.is_symlink() and not folder.exists():
            return f"a link to {os.readlink(folder)!r}, which does not exist"
        if folder.exists() and not folder.is_dir():
            return "a file, not a folder"
    except OSError as exc:  # a name too long, a link that loops
        return f"a name the file system refuses: {exc.strerror}"
    return ""


def check_writable(folder: Path) -> None:
    """``folder`` (``[recording] dir``) exists or can be made, and a file can be written there
    (a probe, deleted at once); else a :class:`StreamrecError` naming it and why. A folder on a
    full disk is one warning: the labels go on, and clips are written again once there is room."""
    why = folder_problem(folder)
    if why:
        raise StreamrecError(f"[recording] dir: expected a folder streamrec can write clips into, got {str(folder)!r} "
                             f"({why})")
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".streamrec-probe-", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"probe")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.warning("[recording] dir %s: %s; clips are written once there is room", shown(str(folder)),
                           exc.strerror)
            return
        raise StreamrecError(f"[recording] dir: expected a folder streamrec can write clips into, got {str(folder)!r} "
                             f"({exc.strerror or exc})") from None
    finally:
        if probe is not None:
            try:
                os.unlink(probe)
            except OSError:
                pass


MIN_FREE_BYTES = 2**30  # retention keeps this much of the disk free, whatever max_gb allows


def free_bytes(folder: Path) -> float:
    """Bytes free on the disk of ``folder`` (infinite when it cannot be read)."""
    try:
        return float(shutil.disk_usage(folder).free)
    except OSError:
        return float("inf")


class ClipFolder:
    """The files under ``root``, one folder per camera; ``free`` reads the bytes free on its disk."""

    def __init__(self, root: Path, *, free: Callable[[Path], float] = free_bytes) -> None:
        self.root = root
        self.free = free

    def prune(self, store: EventStore, *, cutoff: float, max_bytes: float, active: set[str]) -> int:
        """Delete the closed events that ended before ``cutoff`` (with a clip or not); then, while
        the folder holds more than ``max_bytes`` or the disk has less than :data:`MIN_FREE_BYTES`
        free, the event files no event points to (oldest first), then the events with the oldest
        clips, with their files (one whose clip is missing from the disk only loses its link); not
        those in ``active`` (their clips are being written). How many events were deleted."""
        owned = store.file_paths()
        total = self.total_bytes(owned)
        removed = 0
        for row in store.ended_before(cutoff):
            if row["id"] not in active:
                total -= self.delete_files(row)
                store.delete(row["id"])
                removed += 1
        max_bytes = min(max_bytes, total + self.free(self.root) - MIN_FREE_BYTES)
        if total > max_bytes:
            total -= self.drop_unowned(owned, active, total - max_bytes)
        for row in store.oldest_with_clips():
            if total <= max_bytes:
                break
            if row["id"] in active:
                continue
            clip = self.inside(row["clip"])
            if clip is None or not clip.is_file():  # its clip is gone from the disk: it takes no room, it stays
                store.no_clip(row["id"])
                continue
            total -= self.delete_files(row)
            store.delete(row["id"])
            removed += 1
        self.sweep(cutoff, active, kept=store.file_paths())
        if removed:
            logger.info("retention: deleted %d event(s) and their clips", removed)
        return removed

    def drop_unowned(self, owned: set[str], active: set[str], excess: float) -> int:
        """Delete event files that no event points to (another database's, a crash's), oldest
        first, until ``excess`` bytes are freed: they count against the size, and deleting events
        instead would leave them and empty the folder of everything the page shows. Bytes freed."""
        writing = {path_part(e) for e in active}
        owners = {named["id"] for rel in owned if (named := EVENT_FILE.fullmatch(rel.rpartition("/")[2]))}
        freed = 0
        for path, _, _ in sorted(self.files(), key=lambda f: f[2]):
            if freed >= excess:
                break
            named = EVENT_FILE.fullmatch(path.name)
            if named and named["id"] not in writing and named["id"] not in owners:
                freed += self.remove(path)
        return freed

    def total_bytes(self, owned: set[str] | None = None) -> int:
        """Bytes of the files in the cameras' folders; with ``owned`` (the paths events point to),
        only the events' files: those and the files named as an event's (other files in a shared
        folder count for nothing against ``max_gb``)."""
        return sum(size for path, size, _ in self.files() if owned is None or self.owned(path, owned))

    def owned(self, path: Path, owned: set[str]) -> bool:
        """Whether ``path`` is an event's file: named as one, or one of ``owned`` (or its ``.part``)."""
        rel = f"{path.parent.name}/{path.name.removesuffix(PART)}"
        return EVENT_FILE.fullmatch(path.name) is not None or rel in owned

    def files(self) -> list[tuple[Path, int, float]]:
        """``(path, bytes, mtime)`` of each file in the cameras' folders."""
        out = []
        try:
            cams = [e for e in os.scandir(self.root) if e.is_dir()]  # a camera's folder may be a link
        except OSError:
            return []
        for cam in cams:
            try:
                for e in os.scandir(cam.path):
                    if e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        out.append((Path(e.path), st.st_size, st.st_mtime))
            except OSError:
                continue
        return out

    def delete_files(self, row: dict[str, Any]) -> int:
        """Remove an event's clip and thumbnail (and the thumbnail beside its clip); bytes freed."""
        paths = {self.inside(rel) for rel in (row.get("clip"), row.get("thumbnail")) if rel}
        paths |= {p.with_suffix(".jpg") for p in list(paths) if p is not None and p.suffix == ".mp4"}
        paths |= {p.with_name(p.name + PART) for p in list(paths) if p is not None and p.suffix == ".mp4"}
        return sum(self.remove(p) for p in paths if p is not None)

    def inside(self, rel: str) -> Path | None:
        """The file ``rel`` (``<camera>/<file>``, or a file of the folder itself) of the folder, or
        ``None`` when it would lead out of its camera's folder (``..``, a file that is a link
        elsewhere). A camera's folder may be a link (to another disk): its files are counted,
        served and deleted like the others.

        >>> folder = ClipFolder(Path("/srv/events"))
        >>> str(folder.inside("cam/1-0badf00d.mp4")), folder.inside("../etc/passwd"), folder.inside("cam/../x")
        ('/srv/events/cam/1-0badf00d.mp4', None, None)
        """
        parts = rel.split("/")
        if not 1 <= len(parts) <= 2 or any(part in ("", ".", "..") for part in parts):
            return None
        path = self.root.joinpath(*parts)
        try:
            return path if path.resolve().parent == path.parent.resolve() else None
        except (OSError, RuntimeError):  # a link that loops
            return None

    def remove(self, path: Path) -> int:
        """Delete ``path``; the bytes freed (0 when it was not there or cannot be deleted: logged)."""
        try:
            size = path.stat().st_size
            path.unlink()
            return size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            logger.warning("retention: cannot delete %s: %s", path, describe(exc))
            return 0

    def sweep(self, cutoff: float, active: set[str], kept: set[str] = frozenset()) -> None:
        """An event's files (:data:`EVENT_FILE`) modified before ``cutoff`` that no event points to
        any more (a crash before the clip was noted): deleted too; not those of ``active`` events,
        nor any file of an event that points to one of ``kept`` (the files events point to: an
        event that lasts longer than its clip keeps it), and no file of another name (a folder
        shared with other files keeps them).

        >>> import tempfile, time
        >>> folder = ClipFolder(Path(tempfile.mkdtemp()))
        >>> (folder.root / "cam").mkdir()
        >>> for name in ("1700000000-0badf00d.mp4", "1700000000-0badf00d.jpg", "holiday.mp4", "notes.txt"):
        ...     _ = (folder.root / "cam" / name).write_bytes(b"x")
        >>> folder.sweep(time.time() + 60, active=set())
        >>> sorted(p.name for p in (folder.root / "cam").iterdir())
        ['holiday.mp4', 'notes.txt']
        """
        writing = {path_part(e) for e in active}
        owners = {named["id"] for rel in kept if (named := EVENT_FILE.fullmatch(rel.rpartition("/")[2]))}
        for path, _, mtime in self.files():
            named = EVENT_FILE.fullmatch(path.name)
            if named and mtime < cutoff and named["id"] not in writing and named["id"] not in owners:
                self.remove(path)

    def recover_parts(self, camera: str | None) -> int:
        """Clips of ``camera`` (``None``: of every camera) a killed process left as ``.mp4.part``
        become ``.mp4`` (a fragmented MP4 plays up to its last complete fragment); empty ones are
        deleted. How many were recovered."""
        n = 0
        for path, size, _ in self.files():
            if camera is not None and path.parent.name != path_part(camera) or not path.name.endswith(".mp4" + PART):
                continue
            if not size:
                self.remove(path)
                continue
            try:
                os.replace(path, path.with_name(path.name.removesuffix(PART)))
                n += 1
            except OSError as exc:
                logger.warning("clips: cannot recover %s: %s", path, describe(exc))
        return n
