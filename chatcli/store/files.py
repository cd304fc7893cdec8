"""Private files: directories 0700, files 0600 from their first byte, atomic replacement.

A file is never written in place: the new content goes to a temporary file in the same
directory (created 0600, so no moment exists where another user could read it), is flushed to
disk, then renamed over the old one. A reader sees the old file or the new one, never half.

A file that cannot be parsed is moved aside (``NAME.corrupt-TIMESTAMP``) with a warning and
chatcli carries on without it: nothing is deleted, and the user can look at what was there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from chatcli.errors import StorageError

log = logging.getLogger("chatcli.store")

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created if missing)."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            os.chmod(path, DIR_MODE)  # mkdir's mode is cut by the umask; parents too loose
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
    return path


def write_private(path: Path, data: bytes, *, own_directory: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; the file is 0600 from the start.

    ``own_directory``: the parent is chatcli's own, created (and kept) 0700. A user's choice
    of place (an export) must exist already, and its mode is left alone.
    """
    if own_directory:
        private_dir(path.parent)
    elif not path.parent.is_dir():
        raise StorageError(f"cannot write {path}: {path.parent} is not a directory")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # O_CREAT's mode is cut by the umask, never widened
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_json(path: Path, data: Any) -> None:
    write_private(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())


def read_json(path: Path, *, what: str) -> Any:
    """The JSON in ``path``; ``None`` if it does not exist or was corrupt (then moved aside)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(raw)
    except ValueError:
        aside = quarantine(path)
        log.warning("%s %s was unreadable; moved it to %s and carried on", what, path, aside)
        return None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock tied to ``path`` (on ``path.lock``) for a read-change-write.

    Other chatcli processes wait at the same lock, so two of them changing one file at once
    cannot lose each other's changes.
    """
    private_dir(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def quarantine(path: Path) -> Path:
    """Move a damaged file out of the way, keeping it, and return where it went."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise StorageError(f"{path} is damaged and cannot be moved aside: {exc}") from exc
    return aside
