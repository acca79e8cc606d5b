"""The model store: published VW models of each loop, ``<data_dir>/models/<loop>/<version>.vw``.

A pointer file ``CURRENT`` beside them names the version serving workers should use. Both are written
atomically (temporary file in the same folder, fsync, rename, fsync of the folder), the model before the
pointer, so a reader that follows the pointer always finds a complete model, even after a crash.
Versions are zero-padded integers that only grow (the next one follows the largest ever written), so
text order is publication order. Publications of one loop are serialised by a lock file.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from pathlib import Path

POINTER = "CURRENT"
_VERSION = re.compile(r"^\d{10}$")


def loop_dir(data_dir: str | os.PathLike, loop: str) -> Path:
    return Path(data_dir) / "models" / loop


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader, or a crash, sees the old or the new content."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions(data_dir: str | os.PathLike, loop: str) -> list[str]:
    """Every stored version of the loop's model, oldest first."""
    try:
        names = os.listdir(loop_dir(data_dir, loop))
    except FileNotFoundError:
        return []
    return sorted(name[:-3] for name in names if name.endswith(".vw") and _VERSION.match(name[:-3]))


def publish(data_dir: str | os.PathLike, loop: str, model_bytes: bytes) -> str:
    """Store a model as the loop's next version, point ``CURRENT`` at it, and return the version."""
    folder = loop_dir(data_dir, loop)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        latest = max([int(v) for v in versions(data_dir, loop)] + [_pointed(folder)])
        version = f"{latest + 1:010d}"
        write_atomic(folder / f"{version}.vw", model_bytes)
        write_atomic(folder / POINTER, version.encode() + b"\n")
        return version


def _pointed(folder: Path) -> int:
    try:
        text = (folder / POINTER).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if _VERSION.match(text) else 0


def current(data_dir: str | os.PathLike, loop: str) -> tuple[str, Path] | None:
    """The version ``CURRENT`` names and its model file, or None before the first publication.

    One read of a small file; serving workers can call it between requests.
    """
    folder = loop_dir(data_dir, loop)
    try:
        version = (folder / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    if not _VERSION.match(version):
        return None
    return version, folder / f"{version}.vw"


def stamp(data_dir: str | os.PathLike, loop: str) -> tuple[int, int] | None:
    """What changes whenever ``CURRENT`` is replaced (its inode and mtime): one stat, for a cheaper poll."""
    try:
        st = os.stat(loop_dir(data_dir, loop) / POINTER)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def prune(data_dir: str | os.PathLike, loop: str, keep: int = 5, also_keep: set[str] = frozenset()) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the current one, nor those in ``also_keep``); return
    the deleted versions.

    A worker that still has a pruned model open keeps using it: the file only disappears from the folder.
    """
    if keep < 1:
        raise ValueError("keep at least one version")
    folder = loop_dir(data_dir, loop)
    if not folder.exists():
        return []
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = versions(data_dir, loop)
        pointed = current(data_dir, loop)
        kept = set(stored[-keep:]) | set(also_keep)
        if pointed is not None:
            kept.add(pointed[0])
        deleted = [v for v in stored if v not in kept]
        for version in deleted:
            try:
                os.unlink(folder / f"{version}.vw")
            except FileNotFoundError:
                pass
        # Leftovers of a publication interrupted before its rename.
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(folder / name)
                except FileNotFoundError:
                    pass
        if deleted:
            _fsync_dir(folder)
        return deleted
